"""The `robustkd shards` commands: list, publish, fetch, check and delete shard sets.

    robustkd shards id --config configs/fashion-mnist.yaml      # the id precompute will write
    robustkd shards push shards/fashion-mnist --remote s3://team-bucket/robustkd
    robustkd shards ls [--remote s3://team-bucket/robustkd]
    robustkd shards pull 3f9c0a1b2c3d4e5f --remote s3://team-bucket/robustkd
    robustkd shards verify 3f9c0a1b2c3d4e5f [--recompute 8] [--remote URL]
    robustkd shards rm 3f9c0a1b2c3d4e5f [--remote URL]

Without `--remote`, push and pull use `ROBUSTKD_REMOTE`; ls, verify and rm work on the local
cache (`--cache`, else `ROBUSTKD_CACHE`, else `~/.cache/robustkd/shards`). A SOURCE is a shard-set
folder or the id of a cached set. `register(subparsers)` adds the commands to a parser.
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

from schemas.errors import ShardSetError
from schemas.manifest import SHARD_SET_ID_PATTERN, Manifest
from shardstore.cache import ShardCache
from shardstore.remote import RemoteStore
from shardstore.resolve import REMOTE_ENV, default_remote
from shardstore.transfer import pull, push
from shardstore.verify import recompute_targets, verify_folder

__all__ = ["register"]

log = logging.getLogger(__name__)


def _remote_errors(command):
    """Report a failed remote call (network, permissions) as a `ShardSetError`."""

    @functools.wraps(command)
    def run(args) -> None:
        try:
            command(args)
        except (ShardSetError, FileNotFoundError):
            raise
        except OSError as exc:
            raise ShardSetError(f"shards {args.shards_command} failed: {exc}") from exc

    return run


def _remote(args, required: bool) -> RemoteStore | None:
    url = args.remote or (default_remote() if required else None)
    if url is None and required:
        raise ShardSetError(f"no remote store: pass --remote URL or set {REMOTE_ENV}")
    return RemoteStore(url) if url else None


def _source_folder(source: str, cache: ShardCache) -> Path:
    """Return the folder of a SOURCE argument: a folder path, or the id of a cached set."""
    if SHARD_SET_ID_PATTERN.match(source) and not Path(source).exists():
        cache.manifest(source)  # raises with the pull command when the id is not cached
        return cache.path(source)
    return Path(source)


def _summary(set_id: str, manifest: Manifest) -> str:
    samples = sum(manifest.counts().values())
    size_mb = sum(size for _, size, _ in manifest.files()) / 1e6
    return (
        f"{set_id}  {manifest.dataset.get('name', '?')}  {manifest.teacher.short()}  "
        f"{samples} samples  {size_mb:.1f} MB  {manifest.created_at}"
    )


@_remote_errors
def _ls(args) -> None:
    remote = _remote(args, required=False)
    if remote is None:
        cache = ShardCache(args.cache)
        if not cache.ids() and not cache.partial_ids():
            print(
                f"no shard sets in the cache {cache.root}; sets enter it through "
                "`robustkd shards pull ID --remote URL`"
            )
        for set_id in cache.ids():
            print(_summary(set_id, cache.manifest(set_id)))
        for set_id in cache.partial_ids():
            print(f"{set_id}  incomplete pull; `robustkd shards pull {set_id}` resumes it")
        return
    if not remote.ids():
        print(f"no shard sets in {remote}")
    for set_id, complete in remote.ids().items():
        found = remote.manifest(set_id) if complete else None
        if found is None:
            print(f"{set_id}  incomplete push; `robustkd shards push` from its folder resumes it")
        else:
            print(_summary(set_id, found[0]))


@_remote_errors
def _push(args) -> None:
    remote = _remote(args, required=True)
    folder = _source_folder(args.source, ShardCache(args.cache))
    result = push(folder, remote)
    print(
        f"shard set {result.shard_set_id} in {remote}: {len(result.uploaded)} files uploaded, "
        f"{len(result.skipped)} already there"
    )


@_remote_errors
def _pull(args) -> None:
    remote = _remote(args, required=True)
    print(pull(args.id, remote, ShardCache(args.cache)))


def _check_recomputed(args, folder: Path) -> None:
    teacher = None
    if args.config:
        from schemas.config import load_config

        teacher = load_config(args.config).teacher
    manifest = Manifest.read(folder)
    report = recompute_targets(
        folder, manifest, args.recompute, args.seed, teacher, args.torch_threads
    )
    worst_act = max(report.activation_error.values(), default=0.0)
    print(
        f"recomputed {report.samples} samples: max logit error {report.logit_error:.3g} "
        f"(tolerance {args.logit_tolerance}), max activation error {worst_act:.3g} of the "
        f"sample's max |activation| (tolerance {args.activation_tolerance})"
    )
    for name, error in report.activation_error.items():
        print(f"  {name}: {error:.3g}")
    if report.logit_error > args.logit_tolerance or worst_act > args.activation_tolerance:
        raise ShardSetError(
            f"stored targets differ from the teacher beyond the tolerance: logits "
            f"{report.logit_error:.3g} > {args.logit_tolerance} or activations {worst_act:.3g} "
            f"> {args.activation_tolerance}; the set was made by another teacher or is damaged"
        )


@_remote_errors
def _verify(args) -> None:
    remote = _remote(args, required=False)
    if remote is not None:
        found = remote.manifest(args.source)
        if found is None:
            raise ShardSetError(f"shard set {args.source} has no manifest in {remote}")
        problems = [remote.check_object(args.source, *entry) for entry in found[0].files()]
        problems = [p for p in problems if p]
        if problems:
            raise ShardSetError(f"{remote}/{args.source} failed: " + "; ".join(problems))
        print(f"{args.source} in {remote}: {len(found[0].files())} objects match the manifest")
        return
    folder = _source_folder(args.source, ShardCache(args.cache))
    report = verify_folder(folder)
    print(
        f"{report.shard_set_id} at {folder}: {report.files} files match the manifest; "
        f"samples {report.counts}"
    )
    if args.recompute:
        _check_recomputed(args, folder)


@_remote_errors
def _rm(args) -> None:
    remote = _remote(args, required=False)
    store = remote if remote is not None else ShardCache(args.cache)
    where = remote if remote is not None else store.root
    if not store.remove(args.id):
        raise ShardSetError(f"shard set {args.id} is not in {where}")
    print(f"removed {args.id} from {where}")


def _id(args) -> None:
    from backbones import build_backbone, module_sha256
    from pipeline.datasets import get_reader
    from schemas.config import load_config
    from shardstore.ids import id_inputs, shard_set_id

    cfg = load_config(args.config, args.overrides)
    reader = get_reader(cfg.dataset.name, cfg.dataset.root, cfg.dataset.options)
    weights = module_sha256(build_backbone(cfg.teacher, cfg.dataset.image_size).encoder)
    print(shard_set_id(id_inputs(cfg, weights, reader.fingerprint())))


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `shards` and its subcommands to the `robustkd` subparsers; return its parser."""
    shards = subparsers.add_parser("shards", help="list, push, pull, verify and remove shard sets")
    sub = shards.add_subparsers(dest="shards_command", required=True)

    def add(name: str, func, help_text: str, target: str | None) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text)
        if target == "source":
            parser.add_argument("source", help="shard-set folder, or the id of a cached set")
        elif target == "id":
            parser.add_argument("id", help="shard-set id (16 hex digits)")
        if name != "id":
            parser.add_argument("--remote", help=f"remote store URL or folder (else ${REMOTE_ENV})")
            parser.add_argument("--cache", help="cache folder (else $ROBUSTKD_CACHE)")
        parser.set_defaults(func=func)
        return parser

    add("ls", _ls, "list the cached shard sets, or those in --remote", None)
    add("push", _push, "upload a shard set: shards first, manifest last; resumes", "source")
    add("pull", _pull, "download a shard set into the cache, checking every sha256", "id")
    verify = add("verify", _verify, "check counts and checksums of a shard set", "source")
    verify.add_argument(
        "--recompute", type=int, default=0, metavar="N", help="rerun the teacher on N samples"
    )
    verify.add_argument("--seed", type=int, default=0, help="seed that picks the N samples")
    verify.add_argument(
        "--logit-tolerance", type=float, default=0.05, help="max logit error (logit units)"
    )
    verify.add_argument(
        "--activation-tolerance",
        type=float,
        default=0.02,
        help="max activation error, as a fraction of the sample's max |activation|",
    )
    verify.add_argument("--config", help="experiment YAML whose teacher section to rebuild")
    verify.add_argument("--torch-threads", type=int, default=2, help="torch threads for N > 0")
    add("rm", _rm, "delete a shard set from the cache, or from --remote", "id")
    ident = add("id", _id, "print the shard-set id that a config produces", None)
    ident.add_argument("--config", required=True, help="experiment YAML")
    ident.add_argument("overrides", nargs="*", help="config overrides as dotted.key=value")
    return shards
