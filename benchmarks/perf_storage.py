"""Storage benchmark: bytes per sample of each storage option, from shards actually written.

The teacher of the demo config (EfficientNet-Lite0 at 64 px, three taps, a 10-class probe head)
runs once over the benchmark's images. For every storage option, its outputs are reduced and
rounded the way the teacher actor does it and written by the pipeline's `ShardWriter`, so the
figures include PNG images, metadata, tar headers and Parquet encoding.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.teacher import build_teacher
from pipeline.writer import ShardWriter, read_done_record
from schemas.config import ExperimentConfig, StorageConfig
from schemas.sample import StoredSample, TargetLayout, decoded_dtype, target_fields
from shardstore.targets import OutputTaps, layer_spec, reduce_activation

__all__ = ["OPTIONS", "storage_section", "teacher_outputs", "write_option_shard"]

OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("logits float32, mean float16 (default)", {}),
    ("logits float16, mean float16", {"logits": "float16"}),
    ("logits top-5, mean float16", {"logits": "topk", "top_k": 5}),
    ("logits float32, mean float32", {"activation_dtype": "float32"}),
    ("logits float32, mean bfloat16", {"activation_dtype": "bfloat16"}),
    ("logits float32, mean int8", {"activation_dtype": "int8"}),
    ("logits top-5, mean int8", {"logits": "topk", "top_k": 5, "activation_dtype": "int8"}),
    ("logits float32, full float16", {"activations": "full"}),
    ("logits float32, full int8", {"activations": "full", "activation_dtype": "int8"}),
    ("logits float32, full, projection 64, float16", {"activations": "full", "projection_dim": 64}),
    (
        "logits float32, full, projection 64, int8",
        {"activations": "full", "projection_dim": 64, "activation_dtype": "int8"},
    ),
]


@torch.no_grad()
def teacher_outputs(teacher, images: np.ndarray, taps: list[str], batch_size: int = 16):
    """Return (logits, raw float32 output of each tap) of `teacher` over `images`."""
    logits, raw = [], {name: [] for name in taps}
    for start in range(0, len(images), batch_size):
        x = teacher.preprocess(images[start : start + batch_size])
        with OutputTaps(teacher.encoder, taps) as recorded:
            logits.append(teacher(x))
        for name in taps:
            raw[name].append(recorded.outputs[name].float())
    return torch.cat(logits).numpy(), {name: torch.cat(parts) for name, parts in raw.items()}


def write_option_shard(folder: str, shard: str, layout, images, logits, reduced) -> tuple[int, int]:
    """Write one id_test shard and return its (tar bytes, Parquet bytes)."""
    with ShardWriter(folder, shard, "id_test", layout) as writer:
        for i, image in enumerate(images):
            writer.write(
                StoredSample(
                    key=f"sample-{i:05d}",
                    split="id_test",
                    source_key=f"sample-{i:05d}",
                    generator="identity",
                    generator_params={},
                    generator_seed=0,
                    label=0,
                    domain="original",
                    image=image,
                    logits=logits[i],
                    activations={
                        spec.name: reduced[spec.name][i].astype(decoded_dtype(spec.dtype))
                        for spec in layout.layers
                    },
                )
            )
    info = read_done_record(Path(folder), shard)
    return info.tar_bytes, info.parquet_bytes


def storage_section(cfg: ExperimentConfig, head: Path, images: np.ndarray) -> dict[str, Any]:
    """Return bytes per sample (target payload, tar, Parquet) for every option in `OPTIONS`."""
    size = cfg.dataset.image_size
    teacher = build_teacher(cfg.teacher, size, head)
    taps = list(cfg.teacher.taps)
    logits, raw = teacher_outputs(teacher, images, taps, cfg.precompute.batch_size)
    shapes = {name: tuple(values.shape[1:]) for name, values in raw.items()}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, options) in enumerate(OPTIONS):
            storage = StorageConfig(**options)
            specs = [layer_spec(tap, shapes[tap], storage) for tap in taps]
            layout = TargetLayout(
                size,
                logits.shape[1],
                specs,
                logits=storage.logits,
                top_k=storage.top_k if storage.logits == "topk" else None,
            )
            reduced = {spec.name: reduce_activation(raw[spec.name], spec).numpy() for spec in specs}
            tar_bytes, parquet_bytes = write_option_shard(
                folder, f"id_test-{index:05d}", layout, images, logits, reduced
            )
            payload = sum(
                int(np.prod(shape)) * dtype.itemsize for _, dtype, shape in target_fields(layout)
            )
            rows.append(
                {
                    "option": name,
                    "storage": options,
                    "target_bytes": payload,
                    "tar_bytes_per_sample": tar_bytes / len(images),
                    "parquet_bytes_per_sample": parquet_bytes / len(images),
                }
            )
    return {"samples": len(images), "image_size": size, "taps": taps, "rows": rows}
