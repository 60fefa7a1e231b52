"""The shard-set id: a hash of everything that decides the stored samples and targets.

    inputs = id_inputs(cfg, weights_sha256, dataset_fingerprint)
    shard_set_id(inputs)   # '3f9c0a…' (16 hex digits)

The inputs are the schema version, the teacher (architecture, sha256 of the backbone weights,
head kind and the settings that fit it, taps, image size), the data set (reader name, content
fingerprint, subset settings), the OOD generator config, the storage options and the shard size.
Machine-specific values are left out: the data set root, the weights path, Ray and thread
settings. The same inputs therefore give the same id on any machine, and the id can be computed
before precompute runs (`robustkd shards id --config ...`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from schemas import SCHEMA_VERSION
from schemas.config import ExperimentConfig, config_to_dict

__all__ = ["ID_LENGTH", "id_inputs", "shard_set_id"]

ID_LENGTH = 16
"""Hex digits of the sha256 kept in an id (64 bits)."""


def id_inputs(
    cfg: ExperimentConfig, weights_sha256: str, dataset_fingerprint: str
) -> dict[str, Any]:
    """Return the plain-data inputs of the shard-set id of `cfg`.

    `weights_sha256` is `backbones.module_sha256` of the teacher's encoder, and
    `dataset_fingerprint` is the reader's `fingerprint()`.
    """
    teacher = cfg.teacher
    head: dict[str, Any] = {"kind": teacher.head}
    if teacher.head == "linear_probe":
        head.update(probe_c=cfg.precompute.probe_c, probe_max_iter=cfg.precompute.probe_max_iter)
    elif teacher.head == "zero_shot":
        head["prompt_template"] = teacher.prompt_template
    # Options that an active option ignores stay out, so setting them changes no id.
    storage = config_to_dict(cfg.precompute.storage)
    if storage["logits"] != "topk":
        storage.pop("top_k")
    if storage["projection_dim"] is None:
        storage.pop("projection_seed")
    dataset = config_to_dict(cfg.dataset)
    # NOTE: reader options that hold paths still enter the id; only `root` is dropped here.
    dataset.pop("root")
    return {
        "schema_version": SCHEMA_VERSION,
        "teacher": {
            "arch": teacher.arch,
            "weights_sha256": weights_sha256,
            "model_options": teacher.model_options,
            "taps": list(teacher.taps),
            "head": head,
        },
        "dataset": {"fingerprint": dataset_fingerprint, "config": dataset},
        "generators": config_to_dict(cfg.ood),
        "storage": storage,
        "shard_size": cfg.precompute.shard_size,
    }


def shard_set_id(inputs: dict[str, Any]) -> str:
    """Return the id of a shard set: the sha256 of its canonical JSON inputs, shortened."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:ID_LENGTH]
