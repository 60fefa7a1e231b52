"""The `Backbone` interface shared by the pipeline (teacher) and the trainer (student).

A backbone is an `nn.Module` with an `encoder` (the pretrained weights that the teacher
fingerprint covers), a `forward_features` that returns pooled features, a linear `head`, and a
`preprocess` that turns uint8 images into the normalised tensors this backbone expects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Backbone", "freeze_batchnorm_stats", "to_uint8_tensor"]


def to_uint8_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Return a uint8 tensor of shape (B, H, W, 3) from an array or tensor of that shape."""
    tensor = torch.as_tensor(
        np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images
    )
    if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 images of shape (B, H, W, 3), got {tensor.dtype} {tuple(tensor.shape)}"
        )
    return tensor


class Backbone(nn.Module):
    """A pretrained encoder plus a linear head, with its own input normalisation."""

    arch: str = "backbone"
    default_lora_targets: Sequence[str] = ()
    """Module-name patterns that LoRA adapts when the config names none."""

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        input_size: int | None,
        mean: Sequence[float],
        std: Sequence[float],
    ):
        super().__init__()
        self.encoder = encoder
        self.feature_dim = feature_dim
        self.input_size = input_size
        self.register_buffer(
            "pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.head: nn.Linear | None = None

    def set_head(self, head: nn.Linear) -> None:
        if head.in_features != self.feature_dim:
            raise ValueError(
                f"head takes {head.in_features} features but {self.arch} "
                f"produces {self.feature_dim}"
            )
        self.head = head

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Convert uint8 (B, H, W, 3) images in [0, 255] to normalised float (B, 3, H', W')."""
        x = to_uint8_tensor(images).to(self.pixel_mean.device)
        return self.normalize(x.permute(0, 3, 1, 2).float() / 255.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise float (B, 3, H, W) images in [0, 1]; resizes to `input_size` if set.

        Attacks call this path so that they can work on [0, 1] inputs.
        """
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return (x - self.pixel_mean) / self.pixel_std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError(f"{self.arch} has no head yet; call set_head() first")
        return self.head(self.forward_features(x))


def freeze_batchnorm_stats(module: nn.Module) -> int:
    """Put every BatchNorm layer in eval mode so its running statistics stop updating.

    Call after `module.train()`. Returns the number of BatchNorm layers frozen.
    """
    count = 0
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()
            count += 1
    return count
