"""Ingredients of the baseline methods: OOD filters, AugMix, PGD against the student, L2-SP.

Each method is a `train` config; these helpers are what its fields switch on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from backbones import Backbone, freeze_batchnorm_stats
from schemas.sample import StoredSample

__all__ = ["augmix_images", "l2sp_penalty", "ood_filter", "pgd_examples", "snapshot_weights"]


def ood_filter(names: list[str] | None) -> Callable[[StoredSample], bool] | None:
    """Return a predicate keeping views whose generator or corruption name is in `names`."""
    if names is None:
        return None
    wanted = set(names)

    def include(sample: StoredSample) -> bool:
        corruption = sample.generator_params.get("corruption")
        return sample.generator in wanted or corruption in wanted

    return include


def augmix_images(images: torch.Tensor) -> torch.Tensor:
    """Apply torchvision's AugMix to each uint8 (H, W, 3) image of a (B, H, W, 3) batch."""
    from torchvision.transforms import v2

    augmix = v2.AugMix()
    chw = images.permute(0, 3, 1, 2)
    mixed = torch.stack([augmix(image) for image in chw])
    return mixed.permute(0, 2, 3, 1).contiguous()


class _UnitRangeStudent(nn.Module):
    """The student seen from [0, 1] pixels, the input range torchattacks expects."""

    def __init__(self, model: nn.Module, backbone: Backbone):
        super().__init__()
        self.model = model
        self.backbone = backbone

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.model(self.backbone.normalize(x01))


def pgd_examples(
    model: nn.Module,
    backbone: Backbone,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int,
) -> torch.Tensor:
    """Return normalised PGD-L∞ examples against the current student (Madry et al., 2018)."""
    import torchattacks

    wrapper = _UnitRangeStudent(model, backbone)
    attack = torchattacks.PGD(
        wrapper, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True
    )
    x01 = images.permute(0, 3, 1, 2).float() / 255.0
    adversarial = attack(x01, labels)
    # torchattacks puts the model back in train mode after attacking, which would let
    # BatchNorm statistics move again.
    model.train()
    freeze_batchnorm_stats(model)
    return backbone.normalize(adversarial.detach())


def snapshot_weights(backbone: Backbone) -> dict[str, torch.Tensor]:
    """Copy the pretrained encoder weights that L2-SP pulls towards."""
    return {n: p.detach().clone() for n, p in backbone.encoder.named_parameters()}


def l2sp_penalty(backbone: Backbone, reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ ‖θ − θ_pretrained‖² over encoder weights (Li et al., 2018, L2-SP); the head is free."""
    total = torch.zeros(())
    for name, param in backbone.encoder.named_parameters():
        if param.requires_grad:
            total = total + (param - reference[name]).pow(2).sum()
    return total
