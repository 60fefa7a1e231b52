"""Push a shard set to a remote store and pull one into the local cache.

    push("shards/fashion-mnist", "s3://team-bucket/robustkd")
    pull("3f9c0a…", "s3://team-bucket/robustkd", ShardCache())

`push` checks the local files against the manifest, uploads every file that the remote does not
hold yet, and uploads `manifest.json` last: a set without a manifest is incomplete, and running
push again resumes it. `pull` downloads into the cache's partial folder and checks the size and
sha256 of every file as it arrives. It writes the manifest and renames the folder only when
every file matched, so a damaged object or a failed write leaves no set that looks complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ShardSetError
from schemas.manifest import MANIFEST_NAME, Manifest, sha256_file
from shardstore.cache import ShardCache, check_id
from shardstore.ids import shard_set_id
from shardstore.remote import LocalWriteError, RemoteStore

__all__ = ["PushResult", "check_manifest_id", "pull", "push"]

log = logging.getLogger(__name__)


@dataclass
class PushResult:
    """The outcome of a push."""

    shard_set_id: str
    uploaded: list[str]
    """Files uploaded by this push, the manifest last."""
    skipped: list[str]
    """Files the remote already held with the right size (an earlier, interrupted push)."""


def check_manifest_id(manifest: Manifest, where: str) -> str:
    """Return the manifest's id after checking that it is the hash of its `id_inputs`."""
    if not manifest.shard_set_id:
        raise ShardSetError(
            f"{where}: the manifest has no shard_set_id; it was written by an older version, "
            "so run `robustkd precompute` again with this one"
        )
    expected = shard_set_id(manifest.id_inputs)
    if expected != manifest.shard_set_id:
        raise ShardSetError(
            f"{where}: shard_set_id {manifest.shard_set_id} is not the hash of the manifest's "
            f"id_inputs ({expected}); the manifest was edited or damaged"
        )
    return manifest.shard_set_id


def push(folder: str | Path, remote: RemoteStore) -> PushResult:
    """Upload the shard set in `folder`: every missing file first, the manifest last."""
    folder = Path(folder)
    manifest = Manifest.read(folder)
    set_id = check_manifest_id(manifest, str(folder))
    manifest.verify(folder)

    published = remote.manifest(set_id)
    if published is not None:
        if published[0].files() != manifest.files():
            raise ShardSetError(
                f"{remote} already contains shard set {set_id} with other file checksums; it was "
                "made from the same inputs on another machine. Pull and use that copy, or "
                f"remove it with `robustkd shards rm {set_id} --remote ...` first"
            )
        log.info("shard set %s is already complete in %s; nothing to upload", set_id, remote)
        return PushResult(set_id, uploaded=[], skipped=[n for n, _, _ in manifest.files()])

    uploaded, skipped = [], []
    for name, size, _ in manifest.files():
        # Objects appear only when complete (see `RemoteStore.upload`), so one with the
        # manifest's size was finished by an earlier push.
        if remote.size(set_id, name) == size:
            skipped.append(name)
            continue
        log.info("uploading %s/%s (%d bytes) to %s", set_id, name, size, remote)
        remote.upload(folder / name, set_id, name)
        uploaded.append(name)
    remote.upload(folder / MANIFEST_NAME, set_id, MANIFEST_NAME)
    uploaded.append(MANIFEST_NAME)
    log.info(
        "pushed shard set %s to %s: %d files uploaded, %d already there",
        set_id,
        remote,
        len(uploaded),
        len(skipped),
    )
    return PushResult(set_id, uploaded, skipped)


def _fetch_files(manifest: Manifest, set_id: str, remote: RemoteStore, partial: Path) -> None:
    """Download every file that `partial` lacks; raise `ShardSetError` listing bad objects."""
    damaged = []
    for name, size, sha256 in manifest.files():
        dest = partial / name
        if dest.is_file() and dest.stat().st_size == size and sha256_file(dest) == sha256:
            continue  # verified by an earlier, interrupted pull
        log.info("downloading %s/%s (%d bytes) from %s", set_id, name, size, remote)
        try:
            remote.download(set_id, name, dest, size, sha256)
        except LocalWriteError:
            raise  # a full disk fails every later file too
        except ShardSetError as exc:
            damaged.append(str(exc))
        except FileNotFoundError:
            damaged.append(f"{name}: listed in the manifest but missing from {remote}")
    if damaged:
        raise ShardSetError(
            f"pull of shard set {set_id} from {remote} failed verification: " + "; ".join(damaged)
        )


def pull(set_id: str, remote: RemoteStore, cache: ShardCache) -> Path:
    """Download shard set `set_id` into the cache, checking every file; return its folder."""
    check_id(set_id)
    if cache.has(set_id):
        log.info("shard set %s is already in the cache %s", set_id, cache.root)
        return cache.path(set_id)
    found = remote.manifest(set_id)
    if found is None:
        state = "incomplete (its push did not finish)" if set_id in remote.ids() else "missing"
        raise ShardSetError(
            f"shard set {set_id} is {state} in {remote}; run `robustkd shards push` for it "
            "from the machine that made it, or check the remote URL"
        )
    manifest, raw = found
    if manifest.shard_set_id != set_id:
        raise ShardSetError(
            f"{remote}/{set_id}/{MANIFEST_NAME} names shard set {manifest.shard_set_id}; "
            "the remote folder was renamed or overwritten"
        )
    check_manifest_id(manifest, f"{remote}/{set_id}")

    # NOTE: two pulls of the same id into one cache at once share this folder uncoordinated.
    partial = cache.partial_path(set_id)
    partial.mkdir(parents=True, exist_ok=True)
    _fetch_files(manifest, set_id, remote, partial)
    tmp = partial / f".{MANIFEST_NAME}.tmp"
    try:
        tmp.write_bytes(raw)
        os.replace(tmp, partial / MANIFEST_NAME)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ShardSetError(f"writing the manifest into {partial} failed: {exc}") from exc
    final = cache.path(set_id)
    if final.exists():
        # A folder without a manifest is left by a removal that stopped halfway, and the
        # verified partial folder contains every file it could still have.
        log.warning("replacing the incomplete folder %s", final)
        shutil.rmtree(final)
    os.replace(partial, final)
    log.info("pulled shard set %s from %s into %s", set_id, remote, cache.path(set_id))
    return cache.path(set_id)
