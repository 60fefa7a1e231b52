"""KD and activation losses against hand-computed values."""

import math

import pytest
import torch

from trainer.losses import activation_loss, kd_loss, robustkd_loss


def test_kd_loss_matches_hand_computation():
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    t = 2.0

    def softmax(row):
        exps = [math.exp(v / t) for v in row]
        return [e / sum(exps) for e in exps]

    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p_s, p_t = softmax(s_row), softmax(t_row)
        expected += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    expected = expected / 2 * t * t  # batch mean, then T² scaling

    assert kd_loss(student, teacher, t).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_zero_when_student_equals_teacher():
    logits = torch.randn(8, 10)
    assert kd_loss(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_scales_with_temperature_squared():
    student = torch.randn(4, 5, dtype=torch.float64)
    teacher = torch.randn(4, 5, dtype=torch.float64)
    # At high T the KL shrinks like 1/T², so T² · KL approaches a constant.
    high = kd_loss(student, teacher.double(), 100.0).item()
    higher = kd_loss(student, teacher.double(), 200.0).item()
    assert higher == pytest.approx(high, rel=2e-2)
    assert kd_loss(student, teacher, 1.0).item() != pytest.approx(high, rel=2e-2)


def test_activation_loss_per_layer_mse():
    student = {"a": torch.zeros(2, 3), "b": torch.ones(2, 4)}
    teacher = {"a": torch.full((2, 3), 2.0), "b": torch.ones(2, 4)}
    losses = activation_loss(student, teacher)
    assert losses["a"].item() == pytest.approx(4.0)
    assert losses["b"].item() == pytest.approx(0.0)


def test_robustkd_loss_returns_named_parts():
    id_logits = torch.randn(4, 3, requires_grad=True)
    ood_logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    acts = {"x": torch.randn(4, 6)}
    out = robustkd_loss(
        id_logits,
        labels,
        ood_logits,
        torch.randn(4, 3),
        acts,
        {"x": torch.randn(4, 6)},
        lambda_kd=0.5,
        lambda_act=2.0,
        temperature=2.0,
    )
    assert set(out) == {"loss", "task", "kd", "act", "act/x"}
    expected = out["task"] + 0.5 * out["kd"] + 2.0 * out["act"]
    assert out["loss"].item() == pytest.approx(expected.item())


def test_robustkd_loss_without_kd_or_act_is_cross_entropy():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    out = robustkd_loss(logits, labels, None, None, None, None, 0.0, 0.0, 2.0)
    assert set(out) == {"loss", "task"}
    assert out["loss"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item()
    )
