"""Tests of the adversarial generator against tiny teachers built here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from backbones import build_backbone
from pipeline.ood import build_generator
from pipeline.ood.adversarial import check_norm_bound
from schemas.config import BackboneConfig
from schemas.errors import ConfigError, RobustKDError


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run torch on one thread, as in a Ray task with num_cpus=1; busy shared CPUs make two
    threads several times slower on these tiny models."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class TinyTeacher(nn.Module):
    """The `Backbone` interface in miniature: `normalize` on [0, 1] input, then logits."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8, num_classes)
        self.register_buffer("pixel_mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
        # Non-trivial running statistics, so that a forward pass in training mode would move them.
        self.features[1].running_mean.fill_(0.1)
        self.features[1].running_var.fill_(2.0)
        self.eval()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def batch(size: int = 4, side: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, side, side, 3), dtype=np.uint8)


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: buffer.clone()
        for name, buffer in model.named_buffers()
        if "running" in name or "num_batches" in name
    }


ATTACK_CASES = [
    {"attack": "pgd_linf", "eps": [2 / 255, 8 / 255], "steps": 3},
    {"attack": "pgd_linf", "eps": 4 / 255, "steps": 2, "random_start": True},
    {"attack": "pgd_l2", "eps": [0.1, 0.5], "steps": 3},
    {"attack": "pgd_l2", "eps": 0.3, "steps": 2, "random_start": True},
    {"attack": "fgsm", "eps": [1 / 255, 6 / 255]},
]


@pytest.mark.parametrize("params", ATTACK_CASES, ids=lambda p: p["attack"])
def test_views_respect_norm_bound(params):
    teacher = TinyTeacher()
    images = batch(6, side=33)
    views, params_list = build_generator("adversarial", params).generate_batch(
        teacher, images, None, list(range(6))
    )
    assert views.shape == images.shape
    assert views.dtype == np.uint8
    for view, image, view_params in zip(views, images, params_list, strict=True):
        delta = (view.astype(np.float64) - image) / 255.0
        if view_params["attack"] == "pgd_l2":
            assert np.sqrt((delta**2).sum()) <= view_params["eps"] + 1e-6
        else:
            assert np.abs(delta).max() <= view_params["eps"] + 1e-6
        assert not np.array_equal(view, image)


def test_linf_uses_full_budget():
    views, _ = build_generator("adversarial", {"attack": "fgsm", "eps": 8 / 255}).generate_batch(
        TinyTeacher(), batch(), None, [0, 1, 2, 3]
    )
    # FGSM moves every unclipped value by exactly eps; rounding must not lose a grey level.
    assert np.abs(views.astype(int) - batch()).max() == 8


def test_teacher_mode_and_batchnorm_unchanged():
    teacher = TinyTeacher()
    before = batchnorm_state(teacher)
    generator = build_generator(
        "adversarial", {"attack": "pgd_linf", "eps": [2 / 255, 4 / 255], "steps": 2}
    )
    generator.generate_batch(teacher, batch(), None, [0, 1, 2, 3])
    assert not teacher.training
    for name, value in batchnorm_state(teacher).items():
        assert torch.equal(value, before[name]), name

    teacher.train()
    generator.generate_batch(teacher, batch(), None, [0, 1, 2, 3])
    assert teacher.training  # the caller's mode is restored
    for name, value in batchnorm_state(teacher).items():
        assert torch.equal(value, before[name]), name


def test_same_seeds_same_bytes():
    teacher = TinyTeacher()
    for params in ATTACK_CASES:
        generator = build_generator("adversarial", params)
        first, params_list = generator.generate_batch(teacher, batch(), None, [5, 6, 7, 8])
        second = generator.apply_batch(teacher, batch(), None, params_list, [5, 6, 7, 8])
        assert first.tobytes() == second.tobytes(), params


def test_batch_matches_single_images():
    teacher = TinyTeacher()
    images = batch(5)
    for params in ATTACK_CASES:
        generator = build_generator("adversarial", params)
        views, params_list = generator.generate_batch(teacher, images, None, list(range(5)))
        for index in range(5):
            single = generator.apply_batch(
                teacher, images[index : index + 1], None, params_list[index : index + 1], [index]
            )
            assert np.array_equal(single[0], views[index]), (params, index)


def test_random_start_depends_on_seed():
    generator = build_generator(
        "adversarial", {"attack": "pgd_linf", "steps": 1, "random_start": True}
    )
    images = np.repeat(batch(1), 2, axis=0)
    views, _ = generator.generate_batch(TinyTeacher(), images, None, [1, 2])
    assert not np.array_equal(views[0], views[1])


def test_attack_raises_teacher_loss():
    teacher = TinyTeacher()
    images = batch(8, seed=3)
    generator = build_generator("adversarial", {"attack": "pgd_linf", "eps": 16 / 255, "steps": 5})
    views, _ = generator.generate_batch(teacher, images, None, list(range(8)))

    def loss_per_image(uint8_images: np.ndarray, targets: torch.Tensor) -> torch.Tensor:
        x = torch.from_numpy(uint8_images).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            logits = teacher(teacher.normalize(x))
        return nn.functional.cross_entropy(logits, targets, reduction="none")

    clean_logits = teacher(teacher.normalize(torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0))
    predictions = clean_logits.argmax(dim=1)
    assert (loss_per_image(views, predictions) > loss_per_image(images, predictions)).all()


def test_true_label_target():
    teacher = TinyTeacher()
    generator = build_generator("adversarial", {"attack": "fgsm", "target": "label"})
    views, params_list = generator.generate_batch(
        teacher, batch(), np.array([0, 1, 2, 3]), [0, 1, 2, 3]
    )
    assert params_list[0]["target"] == "label"
    assert views.dtype == np.uint8
    with pytest.raises(RobustKDError, match="target 'label' needs labels"):
        generator.generate_batch(teacher, batch(), None, [0, 1, 2, 3])
    with pytest.raises(RobustKDError, match="unlabeled images"):
        generator.generate_batch(teacher, batch(), np.array([0, -1, 2, 3]), [0, 1, 2, 3])


def test_efficientnet_backbone_teacher():
    teacher = build_backbone(BackboneConfig(arch="efficientnet_lite0", pretrained=False), 32)
    teacher.set_head(nn.Linear(1280, 10))
    teacher.eval()
    before = batchnorm_state(teacher)
    generator = build_generator("adversarial", {"attack": "pgd_l2", "eps": 0.25, "steps": 1})
    views, _ = generator.generate_batch(teacher, batch(2), None, [0, 1])
    assert views.shape == (2, 32, 32, 3)
    assert not teacher.training
    for name, value in batchnorm_state(teacher).items():
        assert torch.equal(value, before[name]), name


def test_invalid_params_listed():
    params = {
        "attack": "cw",
        "eps": -1,
        "steps": 0,
        "random_start": "yes",
        "target": "gt",
        "alpha": 0,
        "norm": "l2",
    }
    with pytest.raises(ConfigError, match="7 problem") as error:
        build_generator("adversarial", params)
    message = str(error.value)
    for fragment in (
        "unknown parameter 'norm'",
        "attack 'cw' is invalid",
        "eps -1 is invalid",
        "alpha 0 is invalid",
        "steps 0 is invalid",
        "random_start 'yes' is invalid",
        "target 'gt' is invalid",
    ):
        assert fragment in message


def test_single_image_apply_needs_teacher():
    generator = build_generator("adversarial", {"attack": "fgsm"})
    assert generator.needs_teacher
    with pytest.raises(RobustKDError, match="apply_batch"):
        generator.apply(batch(1)[0], {"attack": "fgsm", "eps": 0.1}, 0)
    with pytest.raises(RobustKDError, match=r"shape \(B, H, W, 3\)"):
        generator.generate_batch(TinyTeacher(), batch(1)[0], None, [0])


def test_norm_bound_check_raises():
    images = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    views = images.copy()
    views[0, 0, 0, 0] = 3
    check_norm_bound(views, images, "linf", 3 / 255)
    with pytest.raises(RuntimeError, match="linf distance"):
        check_norm_bound(views, images, "linf", 2 / 255)
    views[0, 1, 1, 1] = 4  # L2 distance 5 grey levels
    check_norm_bound(views, images, "l2", 5 / 255)
    with pytest.raises(RuntimeError, match="l2 distance"):
        check_norm_bound(views, images, "l2", 4.9 / 255)
