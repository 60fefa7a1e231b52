"""Backbones shared by the pipeline (frozen teacher) and the trainer (student).

`build_backbone(config, image_size)` returns a `Backbone`: an encoder with pooled features, a
linear head, named layer taps and its own preprocessing.
"""

from __future__ import annotations

from backbones.base import Backbone, freeze_batchnorm_stats
from backbones.fingerprint import module_sha256
from backbones.taps import LayerTaps
from schemas.config import BackboneConfig

__all__ = ["Backbone", "LayerTaps", "build_backbone", "freeze_batchnorm_stats", "module_sha256"]


def build_backbone(config: BackboneConfig, image_size: int) -> Backbone:
    """Build the backbone a config describes, without a head."""
    if config.arch == "efficientnet_lite0":
        from backbones.efficientnet import EfficientNetLite0

        options = dict(config.model_options)
        unknown = set(options) - {"drop_connect_rate"}
        if unknown:
            raise ValueError(
                f"teacher.model_options {sorted(unknown)} are not used by efficientnet_lite0; "
                "it takes only drop_connect_rate"
            )
        return EfficientNetLite0(
            image_size, config.weights, config.pretrained, config.seed, **options
        )
    if config.arch == "hf_vit":
        from backbones.hf import HFViT

        return HFViT(config.weights, config.pretrained, config.model_options, config.seed)
    if config.arch == "hf_clip_vision":
        from backbones.hf import HFCLIPVision

        return HFCLIPVision(config.weights, config.pretrained, config.model_options, config.seed)
    if config.arch == "timm":
        from backbones.timm_backbone import TimmBackbone

        return TimmBackbone(config.weights, config.pretrained, config.model_options, config.seed)
    raise ValueError(
        f"teacher.arch {config.arch!r} is not supported; "
        "use efficientnet_lite0, hf_vit, hf_clip_vision or timm"
    )
