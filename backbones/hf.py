"""Hugging Face ViT and CLIP vision backbones, loaded from a local folder or built from a config.

Model hubs are not contacted: `weights` must be a folder written by `save_pretrained`, and
loading uses `local_files_only=True`. Without weights (`pretrained: false`) a randomly
initialised model is built from `model_options`, which tests use for tiny models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.base import Backbone

__all__ = ["HFCLIPVision", "HFViT"]

_IMAGENET_HALF = (0.5, 0.5, 0.5)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _processor_stats(folder: str | None, default_mean, default_std):
    """Read image mean and std from the folder's preprocessor_config.json when present."""
    if folder:
        path = Path(folder) / "preprocessor_config.json"
        if path.is_file():
            data = json.loads(path.read_text())
            return tuple(data.get("image_mean", default_mean)), tuple(
                data.get("image_std", default_std)
            )
    return default_mean, default_std


def _require_folder(weights: str | None, arch: str) -> str:
    if not weights or not Path(weights).is_dir():
        raise FileNotFoundError(
            f"{arch}: weights {weights!r} is not a folder; set teacher.weights to a folder written "
            "by save_pretrained (hubs are not reached offline), or set teacher.pretrained: false"
        )
    return weights


class HFViT(Backbone):
    """`transformers.ViTModel`; features are the final layer-normed CLS token."""

    arch = "hf_vit"
    # transformers 5 names ViT attention projections q_proj, k_proj, v_proj, o_proj.
    default_lora_targets = ("q_proj", "v_proj")

    def __init__(
        self, weights: str | None, pretrained: bool, options: dict[str, Any], seed: int = 0
    ):
        from transformers import ViTConfig, ViTForImageClassification, ViTModel

        own_head = None
        if pretrained:
            folder = _require_folder(weights, self.arch)
            config = ViTConfig.from_pretrained(folder, local_files_only=True)
            if any("ForImageClassification" in a for a in (config.architectures or [])):
                full = ViTForImageClassification.from_pretrained(folder, local_files_only=True)
                encoder, own_head = full.vit, full.classifier
            else:
                encoder = ViTModel.from_pretrained(
                    folder, local_files_only=True, add_pooling_layer=False
                )
        else:
            torch.manual_seed(seed)
            encoder = ViTModel(ViTConfig(**options), add_pooling_layer=False)
        mean, std = _processor_stats(
            weights if pretrained else None, _IMAGENET_HALF, _IMAGENET_HALF
        )
        super().__init__(encoder, encoder.config.hidden_size, encoder.config.image_size, mean, std)
        # Not a registered submodule, so optimizers and checkpoints skip it.
        self.__dict__["own_head"] = own_head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=x).last_hidden_state[:, 0]


class HFCLIPVision(Backbone):
    """CLIP's vision tower with its projection; features are L2-normalised image embeddings.

    When loaded from a full CLIP folder, the text tower is kept aside for zero-shot heads.
    """

    arch = "hf_clip_vision"
    default_lora_targets = ("q_proj", "v_proj")

    def __init__(
        self, weights: str | None, pretrained: bool, options: dict[str, Any], seed: int = 0
    ):
        from transformers import CLIPConfig, CLIPModel

        if pretrained:
            folder = _require_folder(weights, self.arch)
            clip = CLIPModel.from_pretrained(folder, local_files_only=True)
        else:
            torch.manual_seed(seed)
            clip = CLIPModel(CLIPConfig(**options))
        encoder = nn.ModuleDict(
            {"vision_model": clip.vision_model, "visual_projection": clip.visual_projection}
        )
        mean, std = _processor_stats(weights if pretrained else None, _CLIP_MEAN, _CLIP_STD)
        super().__init__(
            encoder, clip.config.projection_dim, clip.config.vision_config.image_size, mean, std
        )
        # Not registered as submodules: the student never needs the text tower.
        self.__dict__["clip_model"] = clip
        self.weights_folder = weights if pretrained else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.encoder["vision_model"](pixel_values=x).pooler_output
        embeds = self.encoder["visual_projection"](pooled)
        return embeds / embeds.norm(dim=-1, keepdim=True)
