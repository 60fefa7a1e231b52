"""Augmentation views: RandAugment, TrivialAugment (Wide) and AugMix from torchvision v2.

torchvision samples operations with torch's global RNG and does not report them. Here the
choices are sampled from `np.random.default_rng(seed)` with the same distributions as
torchvision 0.29, recorded in the view params, and replayed with torchvision's own operation
table and implementation, so a stored view can be rebuilt from its params alone.

Recorded params, for example for RandAugment:

    {"policy": "randaugment", "num_magnitude_bins": 31, "interpolation": "nearest",
     "ops": [{"op": "Rotate", "bin": 9, "sign": -1, "magnitude": -9.0},
             {"op": "Equalize", "bin": 9, "sign": 1, "magnitude": 0.0}]}

`magnitude` is derived from `bin`, `sign`, `num_magnitude_bins` and the image size, and is stored
for reading only. AugMix records `chains` (a list of op lists), `chain_weights` and
`original_weight`. `apply` reads only the params, never the generator config, so a changed
config cannot change how a stored view is rebuilt.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from pipeline.ood.base import Generator, check_image, check_seed
from schemas.errors import ConfigError

__all__ = ["POLICIES", "AugmentationGenerator"]

log = logging.getLogger(__name__)

POLICIES = ("randaugment", "trivialaugment", "augmix")
INTERPOLATIONS = ("nearest", "bilinear")
_DEFAULTS = {
    "randaugment": {
        "num_ops": 2,
        "magnitude": 9,
        "num_magnitude_bins": 31,
        "interpolation": "nearest",
    },
    "trivialaugment": {"num_magnitude_bins": 31, "interpolation": "nearest"},
    "augmix": {
        "severity": 3,
        "mixture_width": 3,
        "chain_depth": -1,
        "alpha": 1.0,
        "all_ops": True,
        "interpolation": "bilinear",
    },
}
"""Per-policy options and their defaults, the same as the torchvision v2 constructors."""


@functools.lru_cache(maxsize=16)
def _transform(policy: str, interpolation: str):
    """Return the torchvision transform whose operation table and
    `_apply_image_or_video_transform` replay the recorded ops."""
    from torchvision.transforms import v2

    classes = {
        "randaugment": v2.RandAugment,
        "trivialaugment": v2.TrivialAugmentWide,
        "augmix": v2.AugMix,
    }
    # NOTE: the two members used are private to torchvision and checked against 0.29.1 only.
    return classes[policy](interpolation=interpolation)


def _space(policy: str, all_ops: bool = True) -> dict:
    transform = _transform(policy, _DEFAULTS[policy]["interpolation"])
    if policy == "augmix" and not all_ops:
        return transform._PARTIAL_AUGMENTATION_SPACE
    return transform._AUGMENTATION_SPACE


def _magnitude(op: dict[str, Any], params: dict[str, Any], height: int, width: int) -> float:
    """Return the signed magnitude of a recorded op for an image of this size."""
    space = _space(params["policy"])
    if op["op"] not in space:
        raise ConfigError(
            [f"op {op['op']!r} is not in the {params['policy']} space; valid: {', '.join(space)}"],
            source="augmentation view",
        )
    # AugMix spreads its magnitudes over 10 bins and samples from the first `severity`.
    bins = 10 if params["policy"] == "augmix" else params["num_magnitude_bins"]
    magnitudes = space[op["op"]][0](bins, height, width)
    if magnitudes is None:
        return 0.0
    return float(magnitudes[op["bin"]]) * op["sign"]


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_OPTION_RULES = {
    "num_ops": (lambda v: _is_int(v, 0), "an integer >= 0"),
    "magnitude": (lambda v: _is_int(v, 0), "an integer from 0 to num_magnitude_bins - 1"),
    "num_magnitude_bins": (lambda v: _is_int(v, 2), "an integer >= 2"),
    "severity": (lambda v: _is_int(v, 1) and v <= 10, "an integer from 1 to 10"),
    "mixture_width": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "chain_depth": (lambda v: v == -1 or _is_int(v, 1), "an integer >= 1, or -1 for 1 to 3"),
    "alpha": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "all_ops": (lambda v: isinstance(v, bool), "true or false"),
    "interpolation": (lambda v: v in INTERPOLATIONS, " or ".join(INTERPOLATIONS)),
}
"""Option -> (check, allowed values for the error message)."""


class AugmentationGenerator(Generator):
    """torchvision auto-augment policies with the sampled operations recorded.

    params: `policy` and that policy's torchvision options, with torchvision's defaults:
    - randaugment: `num_ops`, `magnitude`, `num_magnitude_bins`, `interpolation`.
    - trivialaugment: `num_magnitude_bins`, `interpolation`.
    - augmix: `severity`, `mixture_width`, `chain_depth`, `alpha`, `all_ops`, `interpolation`.
    `interpolation` is nearest or bilinear.
    """

    name = "augmentation"
    param_names = (
        "policy",
        "num_ops",
        "magnitude",
        "num_magnitude_bins",
        "severity",
        "mixture_width",
        "chain_depth",
        "alpha",
        "all_ops",
        "interpolation",
    )

    def check_params(self, params: dict[str, Any]) -> list[str]:
        self.policy = params.get("policy")
        if self.policy not in POLICIES:
            return [f"policy {self.policy!r} is invalid; use one of {', '.join(POLICIES)}"]
        defaults = _DEFAULTS[self.policy]
        problems = [
            f"{key} does not apply to policy {self.policy}; its options are {', '.join(defaults)}"
            for key in params
            if key != "policy" and key not in defaults
        ]
        self.options = {**defaults, **{k: v for k, v in params.items() if k in defaults}}
        for key, value in self.options.items():
            check, allowed = _OPTION_RULES[key]
            if not check(value):
                problems.append(f"{key} {value!r} is invalid; use {allowed}")

        bins = self.options.get("num_magnitude_bins")
        magnitude = self.options.get("magnitude")
        if (
            magnitude is not None
            and _is_int(bins, 2)
            and _is_int(magnitude, 0)
            and magnitude >= bins
        ):
            problems.append(
                f"magnitude {magnitude} is invalid for num_magnitude_bins {bins}; "
                f"use an integer from 0 to {bins - 1}"
            )
        return problems

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        options = self.options
        if self.policy == "randaugment":
            ops = [
                self._sample_op(rng, _space("randaugment"), bin_index=options["magnitude"])
                for _ in range(options["num_ops"])
            ]
            return {
                "policy": self.policy,
                "num_magnitude_bins": options["num_magnitude_bins"],
                "interpolation": options["interpolation"],
                "ops": ops,
            }
        if self.policy == "trivialaugment":
            op = self._sample_op(
                rng,
                _space("trivialaugment"),
                bin_index=int(rng.integers(options["num_magnitude_bins"])),
            )
            return {
                "policy": self.policy,
                "num_magnitude_bins": options["num_magnitude_bins"],
                "interpolation": options["interpolation"],
                "ops": [op],
            }

        space = _space("augmix", options["all_ops"])
        original_weight, augmented_weight = rng.dirichlet([options["alpha"]] * 2)
        chain_weights = rng.dirichlet([options["alpha"]] * options["mixture_width"])
        chains = []
        for _ in range(options["mixture_width"]):
            depth = (
                options["chain_depth"] if options["chain_depth"] > 0 else int(rng.integers(1, 4))
            )
            chains.append(
                [
                    self._sample_op(rng, space, int(rng.integers(options["severity"])))
                    for _ in range(depth)
                ]
            )
        return {
            "policy": self.policy,
            "interpolation": options["interpolation"],
            "chains": chains,
            "chain_weights": [float(w * augmented_weight) for w in chain_weights],
            "original_weight": float(original_weight),
        }

    @staticmethod
    def _sample_op(rng: np.random.Generator, space: dict, bin_index: int) -> dict[str, Any]:
        names = list(space)
        name = names[int(rng.integers(len(names)))]
        signed = space[name][1]
        sign = -1 if signed and rng.random() < 0.5 else 1
        return {"op": name, "bin": int(bin_index), "sign": sign}

    def generate(self, image: np.ndarray, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        view, params = super().generate(image, seed)
        height, width = image.shape[:2]
        for op in _all_ops(params):
            op["magnitude"] = _magnitude(op, params, height, width)
        return view, params

    def apply(self, image: np.ndarray, params: dict[str, Any], seed: int) -> np.ndarray:
        import torch

        check_image(image)
        check_seed(seed)
        _check_view_params(params)
        transform = _transform(params["policy"], params["interpolation"])
        height, width = image.shape[:2]
        tensor = torch.from_numpy(image.reshape(height, width, -1).copy())
        tensor = tensor.permute(2, 0, 1).contiguous()

        def run_chain(x, ops):
            for op in ops:
                x = transform._apply_image_or_video_transform(
                    x,
                    op["op"],
                    _magnitude(op, params, height, width),
                    interpolation=transform.interpolation,
                    fill=transform._fill,
                )
            return x

        if params["policy"] != "augmix":
            out = run_chain(tensor, params["ops"])
        else:
            # Same arithmetic as torchvision's AugMix: float32 weighted sum, truncated to uint8.
            mix = torch.tensor(params["original_weight"], dtype=torch.float32) * tensor
            for weight, ops in zip(params["chain_weights"], params["chains"], strict=True):
                mix.add_(torch.tensor(weight, dtype=torch.float32) * run_chain(tensor, ops))
            out = mix.to(dtype=torch.uint8)
        return out.permute(1, 2, 0).numpy().reshape(image.shape).copy()


def _check_view_params(params: dict[str, Any]) -> None:
    policy = params.get("policy")
    required = {
        "randaugment": ("ops", "num_magnitude_bins", "interpolation"),
        "trivialaugment": ("ops", "num_magnitude_bins", "interpolation"),
        "augmix": ("chains", "chain_weights", "original_weight", "interpolation"),
    }
    if policy not in required:
        raise ConfigError(
            [f"view params policy {policy!r} is invalid; expected one of {', '.join(POLICIES)}"],
            source="augmentation view",
        )
    missing = [key for key in required[policy] if key not in params]
    if missing:
        raise ConfigError(
            [f"view params of policy {policy} lack {missing}"], source="augmentation view"
        )


def _all_ops(params: dict[str, Any]) -> list[dict[str, Any]]:
    if "chains" in params:
        return [op for chain in params["chains"] for op in chain]
    return list(params["ops"])
