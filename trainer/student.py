"""Build the student: the pretrained backbone, a head, optional LoRA adapters, frozen BatchNorm.

The student's base weights must be the teacher's: `check_teacher_match` compares their sha256
with the manifest before any training step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from backbones import Backbone, build_backbone, module_sha256
from backbones.heads import load_head
from schemas.config import BackboneConfig, TrainConfig
from schemas.errors import ShardSetError
from schemas.manifest import Manifest

__all__ = ["build_student", "check_teacher_match", "trainable_state"]

log = logging.getLogger(__name__)


def check_teacher_match(backbone: Backbone, manifest: Manifest) -> str:
    """Reject a student whose base weights differ from the teacher that made the shards."""
    student_sha = module_sha256(backbone.encoder)
    teacher = manifest.teacher
    if backbone.arch != teacher.arch or student_sha != teacher.weights_sha256:
        raise ShardSetError(
            f"student base weights {backbone.arch}@{student_sha[:12]} do not match the shard "
            f"set's teacher {teacher.arch}@{teacher.weights_sha256[:12]}; the stored KD and "
            "activation targets only make sense for the same pretrained weights. Use the "
            "teacher config the shards were made with, or precompute shards for this backbone"
        )
    log.info("student base weights match the shard set's teacher %s", teacher.short())
    return student_sha


def _apply_lora(model: Backbone, cfg: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules or list(model.default_lora_targets)
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        bias="none",
    )
    peft_model = get_peft_model(model, lora)
    for param in model.head.parameters():
        param.requires_grad_(True)
    return peft_model


def build_student(
    backbone_cfg: BackboneConfig,
    image_size: int,
    manifest: Manifest,
    shards_dir: str | Path,
    cfg: TrainConfig,
) -> tuple[nn.Module, Backbone]:
    """Return (trainable model, inner backbone). The backbone exposes `encoder` for layer taps."""
    backbone = build_backbone(backbone_cfg, image_size)
    check_teacher_match(backbone, manifest)
    head_path = Path(shards_dir) / "teacher_head.safetensors"
    if cfg.head_init == "probe":
        backbone.set_head(load_head(head_path))
    else:
        head = nn.Linear(backbone.feature_dim, manifest.layout.num_classes)
        if cfg.head_init == "zero":
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        backbone.set_head(head)
    if cfg.finetune == "lora":
        model = _apply_lora(backbone, cfg)
    else:
        model = backbone
        if cfg.finetune == "linear_probe":
            for param in backbone.encoder.parameters():
                param.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "student %s (%s): %d of %d parameters trainable",
        backbone.arch,
        cfg.finetune,
        trainable,
        total,
    )
    return model, backbone


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the trainable tensors by name: what a checkpoint needs to rebuild the student."""
    return {
        n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad
    }
