"""The OOD generator interface, the generator registry and the shared input checks.

A generator turns one uint8 image into one OOD view. `generate(image, seed)` samples its
parameters from `np.random.default_rng(seed)` and applies them; storing the returned parameters
and the seed is enough to rebuild the view later with `apply(image, params, seed)`.
Generators are looked up by the `name` of a `schemas.config.GeneratorConfig`:

    generator = build_generator(cfg.name, cfg.params)
    view, params = generator.generate(image, seed)
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from schemas.errors import ConfigError, RobustKDError

__all__ = [
    "GENERATORS",
    "Generator",
    "InvalidImageError",
    "build_generator",
    "check_image",
    "check_seed",
    "from_rgb",
    "to_rgb",
]

log = logging.getLogger(__name__)

_LUMA_WEIGHTS = np.array([299, 587, 114], dtype=np.int64)


class InvalidImageError(RobustKDError):
    """An input image with the wrong type, dtype or shape for a generator."""


def check_image(image: Any, *, allow_gray: bool = True) -> np.ndarray:
    """Return `image` if it is a uint8 (H, W, 3) array, or (H, W) / (H, W, 1) when `allow_gray`.

    Raises InvalidImageError naming the received type, dtype or shape and the fix.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(
            f"image must be a numpy array, got {type(image).__name__}; convert it with np.asarray"
        )
    if image.dtype != np.uint8:
        raise InvalidImageError(
            f"image dtype must be uint8 with values 0..255, got {image.dtype}; convert floats "
            "in [0, 1] with (image * 255).round().astype(np.uint8)"
        )
    allowed = "(H, W, 3), (H, W, 1) or (H, W)" if allow_gray else "(H, W, 3)"
    gray = image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
    rgb = image.ndim == 3 and image.shape[2] == 3
    if not (rgb or (allow_gray and gray)) or min(image.shape[:2]) < 1:
        raise InvalidImageError(f"image shape must be {allowed}, got {image.shape}")
    return image


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Return a (H, W, 3) view of a uint8 RGB or grayscale image (grayscale is repeated)."""
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    gray = image if image.ndim == 2 else image[..., 0]
    return np.repeat(gray[..., None], 3, axis=2)


def from_rgb(rgb: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Return `rgb` in the layout of `like`: unchanged for RGB, ITU-R 601 luma for grayscale."""
    if like.ndim == 3 and like.shape[2] == 3:
        return rgb
    luma = (rgb.astype(np.int64) @ _LUMA_WEIGHTS + 500) // 1000
    luma = luma.astype(np.uint8)
    return luma if like.ndim == 2 else luma[..., None]


def check_seed(seed: Any) -> int:
    """Return `seed` as a Python int, or raise if it is not a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise RobustKDError(
            f"seed must be a non-negative integer, got {seed!r} ({type(seed).__name__})"
        )
    return int(seed)


class Generator:
    """Base class of OOD generators.

    Subclasses set `name`, list their parameter names in `param_names`, report parameter
    problems from `check_params`, and implement `sample_params` and `apply`.
    """

    name: ClassVar[str] = "generator"
    needs_teacher: ClassVar[bool] = False
    """True when `apply` needs the teacher model (adversarial attacks); such a generator runs
    inside the teacher actor through its own batch method instead of `generate`."""
    param_names: ClassVar[tuple[str, ...]] = ()
    """Keys accepted in `params`; any other key is reported as a problem."""

    def __init__(self, params: Mapping[str, Any] | None = None):
        params = {} if params is None else params
        if not isinstance(params, Mapping):
            raise ConfigError(
                [f"params must be a mapping, got {type(params).__name__}"],
                source=f"generator {self.name!r}",
            )
        self.params = dict(params)
        problems = [
            f"unknown parameter {key!r}; allowed: {', '.join(self.param_names) or 'none'}"
            for key in self.params
            if key not in self.param_names
        ]
        problems += self.check_params(self.params)
        if problems:
            raise ConfigError(problems, source=f"generator {self.name!r} params")

    def check_params(self, params: dict[str, Any]) -> list[str]:
        """Validate `params`, store what `apply` needs, and return every problem found."""
        return []

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Choose the parameters of one view; the result must be JSON-serialisable."""
        raise NotImplementedError

    def apply(self, image: np.ndarray, params: dict[str, Any], seed: int) -> np.ndarray:
        """Return the view of `image` for `params`; the same inputs give the same bytes."""
        raise NotImplementedError

    def generate(self, image: np.ndarray, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Sample parameters from `default_rng(seed)`, apply them, and return (view, params)."""
        seed = check_seed(seed)
        params = self.sample_params(np.random.default_rng(seed))
        return self.apply(image, params, seed), params

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


GENERATORS: dict[str, str] = {
    "corruption": "pipeline.ood.corruptions:CorruptionGenerator",
    "adversarial": "pipeline.ood.adversarial:AdversarialGenerator",
    "diffusion": "pipeline.ood.diffusion:DiffusionGenerator",
    "augmentation": "pipeline.ood.augment:AugmentationGenerator",
    "pool": "pipeline.ood.pools:PoolGenerator",
}
"""Generator name -> "module:class". Modules are imported on first use, so that a Ray task that
only corrupts images does not import torch, torchattacks or diffusers."""


def generator_class(name: str) -> type[Generator]:
    """Import and return the class registered under `name`."""
    if name not in GENERATORS:
        raise ConfigError(
            [f"name {name!r} is unknown; available: {', '.join(sorted(GENERATORS))}"],
            source="generator",
        )
    module_name, class_name = GENERATORS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_generator(name: str, params: Mapping[str, Any] | None = None) -> Generator:
    """Build the generator registered under `name`; raises ConfigError listing every problem."""
    return generator_class(name)(params)
