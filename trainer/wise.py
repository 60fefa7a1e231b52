"""WiSE-FT: interpolate between the pretrained model and a fine-tuned one (Wortsman et al., 2022).

For full fine-tuning and linear probes, every trained weight becomes (1 − α)·θ_pretrained +
α·θ_finetuned. For LoRA the merged update is scaled instead: W = W_0 + α·ΔW, by multiplying each
adapter's scaling by α. The head interpolates the same way, from the teacher's head (so α = 0 is
the teacher exactly, whatever head the student started from) to the fine-tuned head.
BatchNorm statistics need no interpolation: they are frozen during fine-tuning, so both
endpoints share them.
"""

from __future__ import annotations

import torch
from torch import nn

from backbones import Backbone, build_backbone
from backbones.heads import load_head
from schemas.config import ExperimentConfig
from schemas.manifest import Manifest
from shardstore.resolve import resolve_shards_dir
from trainer.evaluate import load_student

__all__ = ["wise_model"]


def _scale_lora(model: nn.Module, alpha: float) -> int:
    from peft.tuners.lora import LoraLayer

    scaled = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.scaling:
                module.scaling[adapter] = module.scaling[adapter] * alpha
            scaled += 1
    return scaled


@torch.no_grad()
def wise_model(
    experiment: ExperimentConfig, method: str, manifest: Manifest, alpha: float
) -> tuple[nn.Module, Backbone]:
    """Return the method's fine-tuned student moved to the WiSE-FT point α ∈ [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"WiSE-FT alpha {alpha} is outside [0, 1]")
    cfg = experiment.method_config(method)
    model, backbone = load_student(experiment, method, manifest)
    teacher_head = load_head(resolve_shards_dir(experiment) / "teacher_head.safetensors")
    for name in ("weight", "bias"):
        tuned = getattr(backbone.head, name)
        tuned.copy_((1.0 - alpha) * getattr(teacher_head, name) + alpha * tuned)

    if cfg.finetune == "lora":
        if _scale_lora(model, alpha) == 0:
            raise ValueError(f"method {method!r} is LoRA but its model has no LoRA layers")
        return model, backbone

    if cfg.finetune == "full":
        # The student passed the teacher-fingerprint check, so a fresh build is the pretrained
        # endpoint.
        fresh = build_backbone(experiment.teacher, experiment.dataset.image_size)
        pretrained = dict(fresh.encoder.named_parameters())
        for name, param in backbone.encoder.named_parameters():
            param.copy_((1.0 - alpha) * pretrained[name] + alpha * param)
    return model, backbone
