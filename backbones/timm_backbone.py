"""timm backbones, built by model name and loaded from a local weights file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from backbones.base import Backbone

__all__ = ["TimmBackbone"]


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"timm weights file {path!r} not found; set teacher.weights to a local .safetensors "
            "or .pth file (hubs are not reached offline)"
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


class TimmBackbone(Backbone):
    """Any timm model; `model_options.model_name` picks it, other options go to `create_model`."""

    arch = "timm"
    # timm ViTs fuse q, k and v into one `qkv` Linear; ConvNets need explicit targets.
    default_lora_targets = ("qkv",)

    def __init__(
        self, weights: str | None, pretrained: bool, options: dict[str, Any], seed: int = 0
    ):
        import timm

        options = dict(options)
        name = options.pop("model_name", None)
        if not name:
            raise ValueError("teacher.model_options.model_name is required for arch 'timm'")
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, **options)
        if pretrained:
            if not weights:
                raise FileNotFoundError("arch 'timm' with pretrained: true needs teacher.weights")
            model.load_state_dict(_load_state_dict(weights), strict=True)
        own_head = None
        if getattr(model, "num_classes", 0):
            own_head = model.get_classifier()
        model.reset_classifier(0)
        data_cfg = timm.data.resolve_data_config({}, model=model)
        # resolve_data_config reports the pretrained resolution even when img_size overrides it.
        input_size = options.get("img_size") or data_cfg["input_size"][-1]
        super().__init__(model, model.num_features, input_size, data_cfg["mean"], data_cfg["std"])
        self.arch = f"timm:{name}"
        # Not a registered submodule, so optimizers and checkpoints skip it.
        self.__dict__["own_head"] = own_head if isinstance(own_head, torch.nn.Linear) else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)
