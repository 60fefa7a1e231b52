"""The frozen teacher: build it with its head, fingerprint it, and run it inside a Ray actor."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from backbones import Backbone, LayerTaps, build_backbone, module_sha256
from backbones.heads import head_sha256, load_head
from pipeline.views import apply_teacher_generators
from schemas.config import BackboneConfig
from schemas.manifest import TeacherFingerprint

__all__ = ["TeacherPredictor", "build_teacher", "tap_dims", "teacher_fingerprint"]

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
def tap_dims(backbone: Backbone, taps: list[str], image_size: int) -> list[int]:
    """Return the pooled width of each tap, from one forward pass on a blank image."""
    blank = np.zeros((1, image_size, image_size, 3), dtype=np.uint8)
    with LayerTaps(backbone.encoder, taps) as recorded:
        backbone.forward_features(backbone.preprocess(blank))
    return [int(recorded.outputs[name].shape[1]) for name in taps]


class TeacherPredictor:
    """Ray Data actor: teacher logits and pooled tap activations for a batch of images.

    With `features_only`, it returns the pooled features the linear probe is fitted on.
    """

    def __init__(
        self,
        config: BackboneConfig,
        image_size: int,
        head_path: str | None,
        activation_dtype: str,
        torch_threads: int,
        features_only: bool = False,
        generators: list[dict] | None = None,
    ):
        torch.set_num_threads(torch_threads)
        self.generators = [] if features_only else list(generators or [])
        self.teacher = build_teacher(config, image_size, None if features_only else head_path)
        self.taps = list(config.taps)
        self.activation_dtype = np.dtype(activation_dtype)
        self.features_only = features_only
        self.tap_dims = tap_dims(self.teacher, self.taps, image_size)

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
        for i, dim in enumerate(self.tap_dims):
            acts[f"act_{i}"] = np.zeros((n, dim), dtype=self.activation_dtype)
        if x is not None:
            with LayerTaps(self.teacher.encoder, self.taps) as taps:
                logits[ok] = self.teacher(x).numpy()
            for i, name in enumerate(self.taps):
                acts[f"act_{i}"][ok] = (
                    taps.outputs[name].float().numpy().astype(self.activation_dtype)
                )
        out = {k: v for k, v in batch.items()}
        out["logits"] = logits
        out.update(acts)
        return out
