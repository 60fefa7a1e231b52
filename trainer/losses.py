"""RobustKD-FM losses. Each function returns a dict with `loss` and every named part."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["activation_loss", "kd_loss", "robustkd_loss"]


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² · KL(p_T ‖ p_S) with p = softmax(logits / T), averaged over the batch.

    The T² factor keeps gradient magnitudes comparable across temperatures (Hinton et al., 2015).
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.to(student_logits.dtype) / t, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (t * t)


def activation_loss(
    student_acts: dict[str, torch.Tensor], teacher_acts: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per-layer mean squared error between pooled student and stored teacher activations.

    Returns `{layer: mse}`; each MSE averages over the batch and the channels, so layers of
    different widths weigh alike.
    """
    return {
        name: F.mse_loss(student_acts[name].float(), teacher_acts[name].float())
        for name in teacher_acts
    }


def robustkd_loss(
    id_logits: torch.Tensor,
    labels: torch.Tensor,
    ood_logits: torch.Tensor | None,
    ood_teacher_logits: torch.Tensor | None,
    div_student_acts: dict[str, torch.Tensor] | None,
    div_teacher_acts: dict[str, torch.Tensor] | None,
    lambda_kd: float,
    lambda_act: float,
    temperature: float,
) -> dict[str, torch.Tensor]:
    """L = CE(s(x_id), y) + λ_kd · T² · KL(p_T(x_ood) ‖ p_S(x_ood)) + λ_act · Σ_l MSE_l(x_div).

    Terms whose weight is zero are neither computed nor returned.
    """
    parts: dict[str, torch.Tensor] = {"task": F.cross_entropy(id_logits, labels)}
    total = parts["task"]
    if lambda_kd > 0:
        parts["kd"] = kd_loss(ood_logits, ood_teacher_logits, temperature)
        total = total + lambda_kd * parts["kd"]
    if lambda_act > 0:
        per_layer = activation_loss(div_student_acts, div_teacher_acts)
        for name, value in per_layer.items():
            parts[f"act/{name}"] = value
        parts["act"] = torch.stack(list(per_layer.values())).sum()
        total = total + lambda_act * parts["act"]
    return {"loss": total, **parts}
