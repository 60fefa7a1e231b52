"""Check a local shard set: its id, file checksums, sample counts, and optionally its targets.

    report = verify_folder(cache.path(set_id))              # id, sha256 of every file, counts
    errors = recompute_targets(folder, manifest, count=8)  # reruns the teacher on 8 samples

`recompute_targets` is the only code here that needs the teacher; it imports `pipeline.teacher`
when called, so the trainer can use this package without the pipeline.
"""

from __future__ import annotations

import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from safetensors.numpy import load as safetensors_load

from schemas.config import BackboneConfig, StorageConfig, config_from_dict
from schemas.errors import ShardSetError
from schemas.manifest import Manifest
from schemas.sample import TARGETS_MEMBER, decode_wds
from shardstore.transfer import check_manifest_id

__all__ = ["RecomputeReport", "VerifyReport", "recompute_targets", "verify_folder"]

log = logging.getLogger(__name__)

HEAD_FILE = "teacher_head.safetensors"


@dataclass
class VerifyReport:
    """The result of `verify_folder`."""

    shard_set_id: str
    counts: dict[str, int]
    """Samples per split, as counted in the files."""
    files: int
    """Files whose size and sha256 were checked."""


@dataclass
class RecomputeReport:
    """Largest differences between stored targets and a fresh teacher run."""

    samples: int
    logit_error: float
    """Largest absolute logit difference over the stored logits."""
    activation_error: dict[str, float] = field(default_factory=dict)
    """Per layer: largest absolute difference divided by the sample's largest |activation|."""


def _tar_samples(path: Path) -> int:
    """Count the samples of a WebDataset tar: distinct keys before the first dot."""
    with tarfile.open(path) as tar:
        return len({m.name.split(".", 1)[0] for m in tar.getmembers() if m.isfile()})


def verify_folder(folder: str | Path) -> VerifyReport:
    """Check the id, every file's size and sha256, and each shard's sample count."""
    folder = Path(folder)
    manifest = Manifest.read(folder)
    set_id = check_manifest_id(manifest, str(folder))
    manifest.verify(folder)
    problems = []
    for shard in manifest.shards:
        in_tar = _tar_samples(folder / shard.tar)
        in_parquet = pq.ParquetFile(folder / shard.parquet).metadata.num_rows
        for name, found in ((shard.tar, in_tar), (shard.parquet, in_parquet)):
            if found != shard.samples:
                problems.append(f"{name}: {found} samples, the manifest says {shard.samples}")
    if problems:
        raise ShardSetError(f"shard set {folder} failed verification: " + "; ".join(problems))
    return VerifyReport(set_id, manifest.counts(), files=len(manifest.files()))


def _random_members(folder: Path, manifest: Manifest, count: int, seed: int) -> list[dict]:
    """Return the raw WebDataset members of `count` samples drawn without replacement."""
    import webdataset as wds

    sizes = [shard.samples for shard in manifest.shards]
    total = sum(sizes)
    picks = np.random.default_rng(seed).choice(total, size=min(count, total), replace=False)
    starts = np.cumsum([0, *sizes])
    chosen: list[dict] = []
    for i, shard in enumerate(manifest.shards):
        picked = {int(p - starts[i]) for p in picks if starts[i] <= p < starts[i + 1]}
        if not picked:
            continue
        dataset = wds.WebDataset(str(folder / shard.tar), shardshuffle=False, empty_check=False)
        for index, members in enumerate(dataset):
            if index in picked:
                chosen.append(members)
    return chosen


def _logit_error(members: dict, recomputed: np.ndarray) -> float:
    """Largest difference over the logits that were stored (top-k entries and rest logit)."""
    targets = safetensors_load(members[TARGETS_MEMBER])
    if "topk.index" not in targets:
        stored = targets["logits"]
        return float(np.abs(stored.astype(np.float64) - recomputed).max())
    index = targets["topk.index"][:-1]
    values = targets["topk.logits"]
    others = np.delete(recomputed.astype(np.float64), index)
    peak = others.max()
    rest = peak + np.log(np.mean(np.exp(others - peak)))
    top_error = np.abs(values[:-1] - recomputed[index]).max()
    return float(max(top_error, abs(values[-1] - rest)))


def recompute_targets(
    folder: str | Path,
    manifest: Manifest,
    count: int,
    seed: int = 0,
    teacher: BackboneConfig | None = None,
    torch_threads: int = 2,
) -> RecomputeReport:
    """Rerun the teacher on `count` random stored samples and compare with the stored targets.

    The teacher is rebuilt from `teacher` or else from the manifest's `teacher_config`, with
    the stored head, and must match the manifest's weight fingerprint.
    """
    from backbones import module_sha256
    from pipeline.teacher import TeacherPredictor

    folder = Path(folder)
    config = teacher or config_from_dict(BackboneConfig, manifest.teacher_config, path="teacher")
    storage = config_from_dict(StorageConfig, manifest.id_inputs["storage"], path="storage")
    actor = TeacherPredictor(
        config, manifest.layout.image_size, str(folder / HEAD_FILE), storage, torch_threads
    )
    weights = module_sha256(actor.teacher.encoder)
    if weights != manifest.teacher.weights_sha256:
        raise ShardSetError(
            f"the rebuilt teacher {config.arch}@{weights[:12]} is not the manifest's teacher "
            f"{manifest.teacher.arch}@{manifest.teacher.weights_sha256[:12]}; pass --config "
            "with the teacher section (weights path) the set was made with"
        )
    if actor.specs != manifest.layout.layers:
        raise ShardSetError(
            f"the rebuilt teacher stores layers {actor.specs}, the manifest's layout has "
            f"{manifest.layout.layers}; use the teacher config the set was made with"
        )

    members = _random_members(folder, manifest, count, seed)
    report = RecomputeReport(samples=len(members), logit_error=0.0)
    for start in range(0, len(members), 32):
        chunk = members[start : start + 32]
        samples = [decode_wds(m) for m in chunk]
        out = actor(_teacher_batch(samples))
        for i, (raw, sample) in enumerate(zip(chunk, samples, strict=True)):
            report.logit_error = max(report.logit_error, _logit_error(raw, out["logits"][i]))
            for j, spec in enumerate(actor.specs):
                fresh = out[f"act_{j}"][i].astype(np.float64)
                stored = sample.activations[spec.name].astype(np.float64)
                error = np.abs(stored - fresh).max() / max(np.abs(fresh).max(), 1e-12)
                report.activation_error[spec.name] = max(
                    report.activation_error.get(spec.name, 0.0), float(error)
                )
    return report


def _teacher_batch(samples: list) -> dict[str, Any]:
    """Build the `TeacherPredictor` input columns from stored samples (the stored views)."""
    return {
        "key": np.array([s.key for s in samples], dtype=object),
        "label": np.array([s.label for s in samples]),
        "error": np.array([""] * len(samples), dtype=object),
        "image": np.stack([s.image for s in samples]),
    }
