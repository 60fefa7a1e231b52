"""Adversarial views (torchattacks 3.5.1) against the frozen teacher: PGD-Linf, PGD-L2 and FGSM.

Attacks need the teacher's gradients, so they run inside the teacher actor, in batches:

    generator = build_generator("adversarial", {"attack": "pgd_linf", "eps": 8 / 255})
    views, params_list = generator.generate_batch(teacher, images, labels, seeds)
    # or, with stored params: views = generator.apply_batch(teacher, images, labels, params, seeds)

The teacher is any `backbones.base.Backbone`. The attack differentiates
`teacher(teacher.normalize(x))` with respect to x in [0, 1]. The teacher is in eval mode during
the attack (its previous mode is restored), and its BatchNorm buffers are compared before and
after every batch.

The uint8 view is the image plus the perturbation rounded to whole grey levels in a way that keeps
the norm bound (see `_quantize_perturbation`). Every view is checked against its bound.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.ood.base import Generator, check_seed
from schemas.errors import RobustKDError

__all__ = ["ATTACKS", "AdversarialGenerator", "check_norm_bound"]

log = logging.getLogger(__name__)

ATTACKS = ("pgd_linf", "pgd_l2", "fgsm")
TARGETS = ("prediction", "label")
_DEFAULT_EPS = {"pgd_linf": 8 / 255, "pgd_l2": 0.5, "fgsm": 8 / 255}
_RELATIVE_TOLERANCE = 1e-6
_GREY_LEVEL_TOLERANCE = 1e-4
"""float32 attack outputs carry errors near 1e-5 grey levels; bounds allow this much on top."""


class _UnitRangeTeacher(nn.Module):
    """The teacher seen from [0, 1] images: its own normalisation, then its logits."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(self.teacher.normalize(x))


def check_norm_bound(views: np.ndarray, images: np.ndarray, norm: str, eps: float) -> None:
    """Raise RuntimeError unless every uint8 view is within `eps` of its image in [0, 1] units."""
    delta = (views.astype(np.float64) - images.astype(np.float64)) / 255.0
    flat = delta.reshape(len(delta), -1)
    if norm == "linf":
        distances = np.abs(flat).max(axis=1)
    else:
        distances = np.sqrt((flat**2).sum(axis=1))
    worst = int(np.argmax(distances))
    if distances[worst] > eps * (1 + _RELATIVE_TOLERANCE) + _GREY_LEVEL_TOLERANCE / 255.0:
        raise RuntimeError(
            f"adversarial view {worst} has {norm} distance {distances[worst]:.6g} > eps {eps:.6g}"
        )


def _batchnorm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{buffer_name}": buffer.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for buffer_name, buffer in module.named_buffers(recurse=False)
    }


def _torch_seed(seed: int) -> int:
    return int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)[0] >> 1)


class AdversarialGenerator(Generator):
    """Untargeted attacks that push the teacher away from its prediction or the true label.

    params:
    - `attack`: pgd_linf, pgd_l2 or fgsm.
    - `eps`: a number, or a list sampled per view, in [0, 1] pixel units. Default 8/255 for Linf
      and 0.5 for L2.
    - `alpha`: PGD step size, default 2.5 * eps / steps.
    - `steps`: PGD steps, default 10.
    - `random_start`: PGD random start, default false.
    - `target`: "prediction" (default) or "label".
    """

    name = "adversarial"
    needs_teacher = True
    param_names = ("attack", "eps", "alpha", "steps", "random_start", "target")

    def check_params(self, params: dict[str, Any]) -> list[str]:
        problems = []
        self.attack = params.get("attack")
        if self.attack not in ATTACKS:
            problems.append(f"attack {self.attack!r} is invalid; use one of {', '.join(ATTACKS)}")
        eps = params.get("eps", _DEFAULT_EPS.get(self.attack, 8 / 255))
        self.eps_choices = list(eps) if isinstance(eps, list | tuple) else [eps]
        if not self.eps_choices or not all(_is_positive(e) for e in self.eps_choices):
            problems.append(f"eps {eps!r} is invalid; use a positive number or a list of them")
        self.alpha = params.get("alpha")
        if self.alpha is not None and not _is_positive(self.alpha):
            problems.append(f"alpha {self.alpha!r} is invalid; use a positive number or null")
        self.steps = params.get("steps", 10)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps {self.steps!r} is invalid; use an integer >= 1")
        self.random_start = params.get("random_start", False)
        if not isinstance(self.random_start, bool):
            problems.append(f"random_start {self.random_start!r} is invalid; use true or false")
        self.target = params.get("target", "prediction")
        if self.target not in TARGETS:
            problems.append(f"target {self.target!r} is invalid; use one of {', '.join(TARGETS)}")
        return problems

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        eps = float(self.eps_choices[int(rng.integers(len(self.eps_choices)))])
        params: dict[str, Any] = {"attack": self.attack, "eps": eps, "target": self.target}
        if self.attack != "fgsm":
            alpha = self.alpha if self.alpha is not None else 2.5 * eps / self.steps
            params.update(alpha=float(alpha), steps=self.steps, random_start=self.random_start)
        return params

    def apply(self, image: np.ndarray, params: dict[str, Any], seed: int) -> np.ndarray:
        raise RobustKDError(
            "the adversarial generator needs the teacher's gradients; call "
            "apply_batch(teacher, images, labels, params_list, seeds) inside the teacher actor"
        )

    def generate_batch(
        self, model: nn.Module, images: np.ndarray, labels: np.ndarray | None, seeds: list[int]
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Sample params from `default_rng(seed)` per image and attack; returns (views, params)."""
        params_list = [self.sample_params(np.random.default_rng(check_seed(s))) for s in seeds]
        return self.apply_batch(model, images, labels, params_list, seeds), params_list

    def apply_batch(
        self,
        model: nn.Module,
        images: np.ndarray,
        labels: np.ndarray | None,
        params_list: list[dict[str, Any]],
        seeds: list[int],
    ) -> np.ndarray:
        """Attack uint8 (B, H, W, 3) `images`; returns uint8 views of the same shape.

        `labels` (B,) are needed only for target "label". Images that share params are attacked
        as one batch, except with random_start, where each image gets its own call so that its
        start point depends only on its own seed.
        """
        images = _check_batch(images)
        if not len(params_list) == len(seeds) == len(images):
            raise RobustKDError(
                f"got {len(images)} images, {len(params_list)} params and {len(seeds)} seeds; "
                "pass one params dict and one seed per image"
            )
        was_training = model.training
        bn_before = _batchnorm_buffers(model)
        # torchattacks restores the mode the wrapper had before each call, and a new nn.Module
        # starts in training mode. Without eval() the teacher would switch to training mode.
        wrapper = _UnitRangeTeacher(model).eval()
        try:
            views = self._attack_groups(wrapper, images, labels, params_list, seeds)
        finally:
            model.train(was_training)

        bn_after = _batchnorm_buffers(model)
        changed = [name for name in bn_before if not torch.equal(bn_before[name], bn_after[name])]
        if changed:
            raise RuntimeError(f"the attack changed teacher BatchNorm buffers: {changed[:5]}")
        return views

    def _attack_groups(self, wrapper, images, labels, params_list, seeds) -> np.ndarray:
        # NOTE: a batch equals its images attacked one by one on CPU (tested). On GPU, kernels
        # may round differently per batch size, so regeneration there is untested.
        views = np.empty_like(images)
        groups: dict[str, list[int]] = {}
        for index, params in enumerate(params_list):
            key = json.dumps(params, sort_keys=True)
            if params.get("random_start"):
                key += f"#{index}"
            groups.setdefault(key, []).append(index)

        for indices in groups.values():
            params = _checked_view_params(params_list[indices[0]])
            group_labels = None
            if params["target"] == "label":
                group_labels = _checked_labels(labels, indices)
            seed = _torch_seed(check_seed(seeds[indices[0]]))
            views[indices] = _run_attack(wrapper, images[indices], group_labels, params, seed)
        return views


def _is_positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _check_batch(images: Any) -> np.ndarray:
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
    ):
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise RobustKDError(f"images must be uint8 of shape (B, H, W, 3), got {dtype} {shape}")
    return images


def _checked_labels(labels: np.ndarray | None, indices: list[int]) -> np.ndarray:
    if labels is None:
        raise RobustKDError("target 'label' needs labels; pass them or set target: prediction")
    selected = np.asarray(labels)[indices]
    if (selected < 0).any():
        raise RobustKDError(
            "target 'label' got unlabeled images (label -1); set target: prediction for them"
        )
    return selected


def _checked_view_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate stored per-view params by building a generator from them."""
    config = {key: params[key] for key in AdversarialGenerator.param_names if key in params}
    AdversarialGenerator(config)
    return params


def _build_attack(wrapper: nn.Module, params: dict[str, Any]):
    import torchattacks

    if params["attack"] == "fgsm":
        return torchattacks.FGSM(wrapper, eps=params["eps"])
    attack_class = torchattacks.PGD if params["attack"] == "pgd_linf" else torchattacks.PGDL2
    extra = {}
    if params["attack"] == "pgd_l2":
        # torchattacks averages the loss over the batch, so per-image gradients shrink with the
        # batch size. Its default 1e-10 added to the gradient norm then makes the step depend on
        # the batch size; 1e-30 keeps the step a per-image unit vector.
        extra["eps_for_division"] = 1e-30
    return attack_class(
        wrapper,
        eps=params["eps"],
        alpha=params["alpha"],
        steps=params["steps"],
        random_start=params["random_start"],
        **extra,
    )


def _run_attack(
    wrapper: nn.Module,
    images: np.ndarray,
    labels: np.ndarray | None,
    params: dict[str, Any],
    seed: int,
) -> np.ndarray:
    device = next(wrapper.parameters()).device
    clean = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().contiguous() / 255.0
    with torch.no_grad():
        if labels is None:
            targets = wrapper(clean).argmax(dim=1)
        else:
            targets = torch.as_tensor(labels, dtype=torch.long, device=device)

    attack = _build_attack(wrapper, params)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        adversarial = attack(clean, targets)

    delta = adversarial.detach().double().permute(0, 2, 3, 1).cpu().numpy() * 255.0 - images.astype(
        np.float64
    )
    norm = "l2" if params["attack"] == "pgd_l2" else "linf"
    steps = _quantize_perturbation(delta, norm, params["eps"] * 255.0)
    views = np.clip(images.astype(np.int16) + steps, 0, 255).astype(np.uint8)
    check_norm_bound(views, images, norm, params["eps"])
    return views


def _quantize_perturbation(delta: np.ndarray, norm: str, bound: float) -> np.ndarray:
    """Round a perturbation in grey levels to integers that stay within `bound`.

    Linf: round to nearest, then clip to the largest integer inside the bound. L2: round to
    nearest, and round toward zero instead for images where that leaves the ball, because
    rounding each value toward zero cannot increase the norm.
    """
    rounded = np.rint(delta)
    if norm == "linf":
        limit = np.floor(bound + _GREY_LEVEL_TOLERANCE)
        return np.clip(rounded, -limit, limit).astype(np.int16)
    norms = np.sqrt((rounded.reshape(len(delta), -1) ** 2).sum(axis=1))
    outside = norms > bound
    rounded[outside] = np.trunc(delta[outside])
    return rounded.astype(np.int16)
