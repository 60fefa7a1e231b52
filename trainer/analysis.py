"""Representation analysis: per-layer CKA with the teacher, t-SNE features, inference latency."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from backbones import Backbone
from schemas.manifest import Manifest
from shardstore.targets import OutputTaps, reduce_activation
from trainer.data import ShardStream

__all__ = ["inference_latency_ms", "layer_features", "linear_cka"]


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between (n, d1) and (n, d2) feature matrices (Kornblith et al., 2019).

    CKA = ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F · ‖Yᵀ Y‖_F) on column-centred features; 1 means the two
    representations agree up to rotation and isotropic scaling.
    """
    x = x.astype(np.float64) - x.mean(axis=0)
    y = y.astype(np.float64) - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


@torch.no_grad()
def layer_features(
    model: nn.Module,
    backbone: Backbone,
    folder,
    manifest: Manifest,
    split: str,
    layers: list[str],
    limit: int,
    batch_size: int = 128,
) -> tuple[dict, dict, np.ndarray]:
    """Return (student features, stored teacher features, labels) per layer for `limit` samples."""
    stream = ShardStream(folder, manifest, split, batch_size, layers)
    specs = {spec.name: spec for spec in manifest.layout.layers}
    student: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    teacher: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    labels, seen = [], 0
    for batch in stream.epoch(0):
        with OutputTaps(backbone.encoder, layers) as recorded:
            model(backbone.preprocess(batch.images))
        for name in layers:
            reduced = reduce_activation(recorded.outputs[name], specs[name])
            student[name].append(reduced.float().reshape(len(batch), -1).numpy())
            teacher[name].append(batch.activations[name].reshape(len(batch), -1).numpy())
        labels.append(batch.labels.numpy())
        seen += len(batch)
        if seen >= limit:
            break
    join = {n: np.concatenate(v)[:limit] for n, v in student.items()}
    stored = {n: np.concatenate(v)[:limit] for n, v in teacher.items()}
    return join, stored, np.concatenate(labels)[:limit]


@torch.no_grad()
def inference_latency_ms(
    model: nn.Module, backbone: Backbone, image_size: int, batch_size: int = 64, repeats: int = 5
) -> float:
    """Median milliseconds per image of a forward pass over a batch of `batch_size` images."""
    images = np.zeros((batch_size, image_size, image_size, 3), dtype=np.uint8)
    x = backbone.preprocess(images)
    model(x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times)) / batch_size
