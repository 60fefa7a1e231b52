"""The frozen teacher: build it with its head, fingerprint it, and run it inside a Ray actor.

The actor pools and projects each tapped output as the storage options request
(`shardstore.targets`). The shard writer then encodes the values in the stored dtype
(`schemas.sample`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backbones import Backbone, build_backbone, module_sha256
from backbones.heads import head_sha256, load_head
from pipeline.views import apply_teacher_generators
from schemas.config import BackboneConfig, StorageConfig, config_from_dict
from schemas.manifest import TeacherFingerprint
from schemas.sample import LayerSpec, TargetLayout, decoded_dtype
from shardstore.targets import OutputTaps, layer_spec, reduce_activation

__all__ = [
    "TeacherPredictor",
    "build_layout",
    "build_teacher",
    "tap_shapes",
    "teacher_fingerprint",
]

log = logging.getLogger(__name__)


def build_teacher(
    config: BackboneConfig, image_size: int, head_path: str | Path | None
) -> Backbone:
    """Build the backbone, attach the stored head if given, and freeze everything."""
    teacher = build_backbone(config, image_size)
    if head_path is not None:
        teacher.set_head(load_head(head_path))
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def teacher_fingerprint(teacher: Backbone, config: BackboneConfig) -> TeacherFingerprint:
    return TeacherFingerprint(
        arch=teacher.arch,
        weights_sha256=module_sha256(teacher.encoder),
        head=config.head,
        head_sha256=head_sha256(teacher.head) if teacher.head is not None else "",
        taps=list(config.taps),
    )


@torch.no_grad()
def tap_shapes(backbone: Backbone, taps: list[str], image_size: int) -> list[tuple[int, ...]]:
    """Return each tap's raw output shape without the batch axis, from one blank image."""
    blank = np.zeros((1, image_size, image_size, 3), dtype=np.uint8)
    with OutputTaps(backbone.encoder, taps) as recorded:
        backbone.forward_features(backbone.preprocess(blank))
    return [tuple(recorded.outputs[name].shape[1:]) for name in taps]


def _storage(storage: StorageConfig | dict[str, Any] | str) -> StorageConfig:
    """Accept storage options as a config, as plain data, or as an activation dtype alone."""
    if isinstance(storage, StorageConfig):
        return storage
    if isinstance(storage, str):
        storage = {"activation_dtype": storage}
    return config_from_dict(StorageConfig, storage, path="precompute.storage")


def build_layout(
    teacher: Backbone,
    taps: list[str],
    image_size: int,
    num_classes: int,
    storage: StorageConfig | dict[str, Any] | str,
) -> TargetLayout:
    """Return the layout of the targets that `teacher` produces under these storage options."""
    storage = _storage(storage)
    shapes = tap_shapes(teacher, taps, image_size)
    return TargetLayout(
        image_size=image_size,
        num_classes=num_classes,
        layers=[layer_spec(name, shape, storage) for name, shape in zip(taps, shapes, strict=True)],
        logits=storage.logits,
        top_k=storage.top_k if storage.logits == "topk" else None,
    )


class TeacherPredictor:
    """Ray Data actor: teacher logits and stored tap activations for a batch of images.

    `storage` contains the storage options (`StorageConfig` or its plain data); a dtype name alone
    stores mean-pooled activations in that dtype. Activations come back in their decoded dtype
    (`schemas.sample.decoded_dtype`): the shard writer rounds them to bfloat16 or int8.
    With `features_only`, it returns the pooled features the linear probe is fitted on.
    """

    # NOTE: the actor runs the teacher on CPU. It requests no GPU from Ray and moves nothing
    # to an accelerator, so a GPU node adds nothing to precompute yet.
    def __init__(
        self,
        config: BackboneConfig,
        image_size: int,
        head_path: str | None,
        storage: StorageConfig | dict[str, Any] | str,
        torch_threads: int,
        features_only: bool = False,
        generators: list[dict] | None = None,
    ):
        torch.set_num_threads(torch_threads)
        self.generators = [] if features_only else list(generators or [])
        self.teacher = build_teacher(config, image_size, None if features_only else head_path)
        self.taps = list(config.taps)
        self.features_only = features_only
        layout = build_layout(self.teacher, self.taps, image_size, 0, storage)
        self.specs: list[LayerSpec] = layout.layers

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.generators:
            # Attacks need input gradients, so they run before the no-grad forward pass.
            batch = {
                **batch,
                "image": apply_teacher_generators(batch, self.teacher, self.generators),
            }
        with torch.no_grad():
            return self._predict(batch)

    def _predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        n = len(ok)
        x = self.teacher.preprocess(batch["image"][ok]) if ok.any() else None
        if self.features_only:
            features = np.zeros((n, self.teacher.feature_dim), dtype=np.float32)
            if x is not None:
                features[ok] = self.teacher.forward_features(x).numpy()
            return {"label": batch["label"], "features": features, "error": batch["error"]}

        num_classes = self.teacher.head.out_features
        logits = np.zeros((n, num_classes), dtype=np.float32)
        acts: dict[str, np.ndarray] = {}
        for i, spec in enumerate(self.specs):
            acts[f"act_{i}"] = np.zeros((n, *spec.shape), dtype=decoded_dtype(spec.dtype))
        if x is not None:
            with OutputTaps(self.teacher.encoder, self.taps) as taps:
                logits[ok] = self.teacher(x).numpy()
            for i, spec in enumerate(self.specs):
                reduced = reduce_activation(taps.outputs[spec.name], spec)
                acts[f"act_{i}"][ok] = reduced.float().numpy().astype(decoded_dtype(spec.dtype))
        out = {k: v for k, v in batch.items()}
        out["logits"] = logits
        out.update(acts)
        return out
