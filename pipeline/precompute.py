"""The precompute job: data set -> OOD views -> frozen teacher -> WebDataset and Parquet shards.

    robustkd precompute --config configs/fashion-mnist.yaml

The job builds the work plan and skips shards that are already finished. It then fits or
builds the teacher head and runs the Ray Data pipeline `read -> make_views -> TeacherPredictor
actor pool`. Each shard is written as soon as it fills, and the manifest is written last. A
rerun with the same config recomputes nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from backbones import module_sha256
from backbones.heads import fit_linear_probe, own_head, save_head, zero_shot_head
from pipeline.datasets import DatasetReader, get_reader
from pipeline.plan import Plan, ShardPlan, build_plan
from pipeline.teacher import TeacherPredictor, build_layout, build_teacher, teacher_fingerprint
from pipeline.views import make_views
from pipeline.writer import STORAGE_FILE, ShardWriter, check_storage_record, read_done_record
from schemas import SCHEMA_VERSION
from schemas.config import ExperimentConfig, config_to_dict, cpu_shortfall
from schemas.errors import ConfigError, ShardSetError
from schemas.manifest import MANIFEST_NAME, FileDigest, Manifest, ShardInfo, sha256_file
from schemas.sample import StoredSample, TargetLayout
from shardstore.ids import id_inputs, shard_set_id

__all__ = ["run_precompute", "ray_session"]

log = logging.getLogger(__name__)

HEAD_FILE = "teacher_head.safetensors"
PLAN_FILE = "plan.json"


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None):
    """Start a local Ray cluster unless one is running; shut it down only if started here."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(
            num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, configure_logging=False
        )
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _package_version() -> str:
    try:
        return importlib.metadata.version("robustkd-fm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_plan_file(folder: Path, plan: Plan) -> None:
    """Record the plan fingerprint, or reject a folder written with another plan."""
    path = folder / PLAN_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())["fingerprint"]
        if recorded != plan.fingerprint and not any(folder.glob("*.done.json")):
            # An earlier run stopped before finishing any shard: nothing is lost by starting over.
            log.info("%s: no finished shards from the earlier plan; starting over", folder)
            for name in (PLAN_FILE, STORAGE_FILE, HEAD_FILE):
                (folder / name).unlink(missing_ok=True)
        elif recorded != plan.fingerprint:
            raise ShardSetError(
                f"{folder} holds shards from a different config or data set (plan "
                f"{recorded[:12]}, now {plan.fingerprint[:12]}); set precompute.output to a new "
                "folder, or delete this one to recompute it"
            )
        else:
            return
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": plan.fingerprint}))


def _dataset(
    ray,
    items: list[dict[str, Any]],
    cfg: ExperimentConfig,
    head_path: str | None,
    features_only: bool = False,
):
    """Build the Ray Data pipeline over `items`; output order follows the input order."""
    pre = cfg.precompute
    # About one teacher batch per block, and at least two blocks per actor: an actor works on
    # one block at a time, so fewer blocks than actors would leave actors idle.
    blocks = max(2 * pre.num_teacher_actors, len(items) // pre.batch_size)
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), blocks, 256)))
    ds = ds.map_batches(
        make_views,
        fn_kwargs={
            "image_size": cfg.dataset.image_size,
            "generators": [config_to_dict(g) for g in cfg.ood.train],
        },
        batch_size=64,
        batch_format="numpy",
        num_cpus=pre.view_num_cpus,
    )
    return ds.map_batches(
        TeacherPredictor,
        fn_constructor_kwargs={
            "config": cfg.teacher,
            "image_size": cfg.dataset.image_size,
            "head_path": head_path,
            "storage": config_to_dict(pre.storage),
            "torch_threads": pre.torch_threads,
            "features_only": features_only,
            "generators": [config_to_dict(g) for g in cfg.ood.train],
        },
        compute=ray.data.ActorPoolStrategy(size=pre.num_teacher_actors),
        batch_size=pre.batch_size,
        batch_format="numpy",
        num_cpus=pre.teacher_num_cpus,
    )


def _check_cluster_cpus(ray, cfg: ExperimentConfig) -> None:
    """Reject a job whose teacher actors leave no CPU for a view task: it would hang."""
    pre = cfg.precompute
    cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
    if pre.num_teacher_actors * pre.teacher_num_cpus + pre.view_num_cpus > cluster_cpus:
        raise ConfigError([cpu_shortfall(pre, cluster_cpus)])


def _fit_head(cfg: ExperimentConfig, reader: DatasetReader, plan: Plan, teacher, ray, path: Path):
    """Create the teacher head that the config names and save it to `path`."""
    num_classes = len(reader.classes)
    kind = cfg.teacher.head
    if kind == "zero_shot":
        head = zero_shot_head(teacher, reader.classes, cfg.teacher.prompt_template)
    elif kind == "own":
        head = own_head(teacher, num_classes)
    else:
        items = [it for shard in plan.shards if shard.split == "id_train" for it in shard.items]
        log.info("fitting the linear probe on %d ID training samples", len(items))
        features, labels = [], []
        for batch in _dataset(ray, items, cfg, None, features_only=True).iter_batches(
            batch_size=1024, batch_format="numpy"
        ):
            ok = np.array([not e for e in batch["error"]], dtype=bool)
            features.append(batch["features"][ok])
            labels.append(batch["label"][ok])
        head = fit_linear_probe(
            np.concatenate(features),
            np.concatenate(labels),
            num_classes,
            c=cfg.precompute.probe_c,
            max_iter=cfg.precompute.probe_max_iter,
        )
    save_head(head, path, kind)


def _to_sample(row: dict[str, Any], layout: TargetLayout) -> StoredSample:
    return StoredSample(
        key=str(row["key"]),
        split=str(row["split"]),
        source_key=str(row["source_key"]),
        generator=str(row["generator"]),
        generator_params=json.loads(row["params"]),
        generator_seed=int(row["seed"]),
        label=int(row["label"]),
        domain=str(row["domain"]),
        image=row["image"],
        logits=row["logits"],
        activations={spec.name: row[f"act_{i}"] for i, spec in enumerate(layout.layers)},
    )


def _write_shards(
    ray,
    cfg: ExperimentConfig,
    pending: list[ShardPlan],
    head_path: Path,
    layout: TargetLayout,
    folder: Path,
) -> None:
    """Run the pipeline over the pending shards and write each one as soon as it is full."""
    items = [it for shard in pending for it in shard.items]
    shard_of = {it["key"]: shard for shard in pending for it in shard.items}
    remaining = {shard.name: len(shard.items) for shard in pending}
    writers: dict[str, ShardWriter] = {}
    ds = _dataset(ray, items, cfg, str(head_path))
    try:
        with tqdm(total=len(items), unit="sample", desc="precompute") as bar:
            for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
                for i in range(len(batch["key"])):
                    row = {k: v[i] for k, v in batch.items()}
                    shard = shard_of[str(row["key"])]
                    if shard.name not in writers:
                        writers[shard.name] = ShardWriter(folder, shard.name, shard.split, layout)
                        writers[shard.name].__enter__()
                    if row["error"]:
                        writers[shard.name].skip(str(row["error"]))
                    else:
                        writers[shard.name].write(_to_sample(row, layout))
                    remaining[shard.name] -= 1
                    if remaining[shard.name] == 0:
                        writers.pop(shard.name).__exit__(None, None, None)
                bar.update(len(batch["key"]))
    except BaseException as exc:
        # Open shards are discarded; finished ones keep their done records for the rerun.
        for writer in writers.values():
            writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    unfinished = [name for name, n in remaining.items() if n]
    if unfinished:
        raise ShardSetError(f"pipeline ended with unfinished shards {unfinished}; rerun to resume")


def _check_shard_set_id(cfg: ExperimentConfig, computed: str) -> None:
    """Reject a config whose `shard_set` names another id than the one it produces."""
    if cfg.shard_set is not None and cfg.shard_set != computed:
        raise ConfigError(
            [
                f"shard_set: {cfg.shard_set!r}, but this config produces shard set {computed!r} "
                "(teacher, data set, generators or storage options differ); set shard_set to "
                f"{computed!r}, or to null"
            ]
        )


def run_precompute(cfg: ExperimentConfig) -> Path:
    """Produce the shard set of `cfg` (resuming a partial one) and return its folder."""
    folder = cfg.shards_dir()
    reader = get_reader(cfg.dataset.name, cfg.dataset.root, cfg.dataset.options)
    plan = build_plan(cfg, reader)
    _check_plan_file(folder, plan)
    check_storage_record(folder, config_to_dict(cfg.precompute.storage))
    done = {shard.name: read_done_record(folder, shard.name) for shard in plan.shards}
    pending = [shard for shard in plan.shards if done[shard.name] is None]
    if not pending and (folder / MANIFEST_NAME).is_file():
        _check_shard_set_id(cfg, Manifest.read(folder).shard_set_id)
        log.info("%s: all %d shards are finished; nothing to recompute", folder, len(plan.shards))
        return folder
    log.info("%s: %d of %d shards to write", folder, len(pending), len(plan.shards))

    head_path = folder / HEAD_FILE
    with ray_session(cfg.precompute.num_cpus) as ray:
        _check_cluster_cpus(ray, cfg)
        # The id needs only the backbone weights and the data set, so a mismatch with
        # `shard_set` stops the run before the head is fitted.
        teacher = build_teacher(cfg.teacher, cfg.dataset.image_size, None)
        dataset_fingerprint = reader.fingerprint()
        inputs = id_inputs(cfg, module_sha256(teacher.encoder), dataset_fingerprint)
        _check_shard_set_id(cfg, shard_set_id(inputs))
        log.info("shard set id %s", shard_set_id(inputs))

        if not head_path.is_file():
            _fit_head(cfg, reader, plan, teacher, ray, head_path)
        teacher = build_teacher(cfg.teacher, cfg.dataset.image_size, head_path)
        layout = build_layout(
            teacher,
            cfg.teacher.taps,
            cfg.dataset.image_size,
            len(reader.classes),
            cfg.precompute.storage,
        )
        if pending:
            _write_shards(ray, cfg, pending, head_path, layout, folder)

    shards = [read_done_record(folder, shard.name) for shard in plan.shards]
    shards = [s for s in shards if s is not None]
    _write_manifest(cfg, reader, teacher, layout, shards, folder, inputs, dataset_fingerprint)
    return folder


def _write_manifest(
    cfg: ExperimentConfig,
    reader: DatasetReader,
    teacher,
    layout: TargetLayout,
    shards: list[ShardInfo],
    folder: Path,
    inputs: dict[str, Any],
    dataset_fingerprint: str,
) -> Manifest:
    skipped: dict[str, int] = {}
    for shard in shards:
        for reason, count in shard.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        package_version=_package_version(),
        git_commit=_git_commit(),
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        teacher=teacher_fingerprint(teacher, cfg.teacher),
        dataset={
            "name": reader.name,
            "fingerprint": dataset_fingerprint,
            "metric": reader.metric,
            "config": config_to_dict(cfg.dataset),
        },
        generator_config=config_to_dict(cfg.ood),
        layout=layout,
        classes=list(reader.classes),
        shards=shards,
        skipped=skipped,
        shard_set_id=shard_set_id(inputs),
        id_inputs=inputs,
        teacher_config=config_to_dict(cfg.teacher),
        extra_files={
            HEAD_FILE: FileDigest(
                bytes=(folder / HEAD_FILE).stat().st_size, sha256=sha256_file(folder / HEAD_FILE)
            )
        },
    )
    manifest.write(folder)
    log.info(
        "wrote %s for shard set %s: %s samples, skipped %s",
        folder / MANIFEST_NAME,
        manifest.shard_set_id,
        manifest.counts(),
        skipped,
    )
    return manifest
