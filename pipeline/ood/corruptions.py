"""Common corruptions (imagecorruptions 1.1.2): the 15 benchmark ones and the 4 extra ones.

`apply_corruption(image, name, severity, seed)` is the single entry point. It seeds numpy's
global RNG, which is the only RNG the repaired corruption table in `compat` draws from, so the
same (image, name, severity, seed) gives the same bytes in any process.

Input handling beyond the library's own contract:

- Grayscale (H, W) or (H, W, 1) images are stacked to RGB, corrupted, and converted back. The
  noise family keeps channel 0, so that the noise keeps its per-pixel strength. Every other
  corruption is converted with the ITU-R 601 luma weights (0.299, 0.587, 0.114).
- Images with a side under 32 px (the library's minimum) are upsampled by the smallest integer
  factor f that reaches 32 px (nearest neighbour), corrupted, and averaged back over f x f
  blocks. Averaging divides the standard deviation of per-pixel noise by about f, and blur radii
  and textures are f times smaller in original pixels than at full size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from pipeline.ood.base import Generator, check_image, check_seed, from_rgb, to_rgb
from pipeline.ood.compat import CORRUPTION_FUNCTIONS
from schemas.errors import ConfigError

__all__ = [
    "BENCHMARK_CORRUPTIONS",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "MIN_SIDE",
    "SEVERITIES",
    "CorruptionGenerator",
    "apply_corruption",
    "corruption_family",
]

CORRUPTIONS: dict[str, str] = {
    "gaussian_noise": "noise",
    "shot_noise": "noise",
    "impulse_noise": "noise",
    "defocus_blur": "blur",
    "glass_blur": "blur",
    "motion_blur": "blur",
    "zoom_blur": "blur",
    "snow": "weather",
    "frost": "weather",
    "fog": "weather",
    "brightness": "weather",
    "contrast": "digital",
    "elastic_transform": "digital",
    "pixelate": "digital",
    "jpeg_compression": "digital",
    "speckle_noise": "noise",
    "gaussian_blur": "blur",
    "spatter": "weather",
    "saturate": "digital",
}
"""Corruption name -> family, in imagecorruptions' order: 15 benchmark ones, then 4 extras."""

BENCHMARK_CORRUPTIONS: tuple[str, ...] = tuple(CORRUPTIONS)[:15]
EXTRA_CORRUPTIONS: tuple[str, ...] = tuple(CORRUPTIONS)[15:]
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
MIN_SIDE = 32
"""Smallest side imagecorruptions accepts; smaller images are upsampled first."""


def corruption_family(name: str) -> str:
    """Return the family ("noise", "blur", "weather" or "digital") of corruption `name`."""
    if name not in CORRUPTIONS:
        raise ConfigError(
            [f"corruption {name!r} is unknown; valid names: {', '.join(CORRUPTIONS)}"],
            source="corruption",
        )
    return CORRUPTIONS[name]


def _is_severity(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and 1 <= value <= 5


def _legacy_seed_words(seed: int) -> np.ndarray:
    """Expand `seed` (any size) into the 32-bit words that seed numpy's legacy global RNG."""
    return np.random.SeedSequence(seed).generate_state(4, dtype=np.uint32)


def _restore_layout(rgb: np.ndarray, like: np.ndarray, name: str) -> np.ndarray:
    """Convert a corrupted RGB image back to the layout of the input `like`."""
    if CORRUPTIONS[name] == "noise" and like.ndim == 2:
        return rgb[..., 0].copy()
    if CORRUPTIONS[name] == "noise" and like.shape[2] == 1:
        return rgb[..., :1].copy()
    return from_rgb(rgb, like)


def _upsample_factor(height: int, width: int) -> int:
    return max(1, math.ceil(MIN_SIDE / min(height, width)))


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    height, width = image.shape[0] // factor, image.shape[1] // factor
    blocks = image.reshape(height, factor, width, factor, image.shape[2]).astype(np.float64)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def apply_corruption(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt a uint8 (H, W, 3), (H, W, 1) or (H, W) image; returns uint8 of the same shape.

    Deterministic for the same arguments, also across processes. Raises ConfigError for an
    unknown name or a severity outside 1..5, and InvalidImageError for a wrong dtype or shape.
    """
    check_image(image)
    corruption_family(name)
    if not _is_severity(severity):
        raise ConfigError(
            [f"severity {severity!r} is invalid for {name!r}; use an integer from 1 to 5"],
            source="corruption",
        )
    seed = check_seed(seed)

    rgb = to_rgb(image)
    factor = _upsample_factor(*rgb.shape[:2])
    if factor > 1:
        rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)

    np.random.seed(_legacy_seed_words(seed))
    corrupted = CORRUPTION_FUNCTIONS[name](
        Image.fromarray(np.ascontiguousarray(rgb)), int(severity)
    )
    # imagecorruptions truncates (np.uint8 of floats in [0, 255]); keep that for equal bytes.
    corrupted = np.asarray(corrupted).astype(np.uint8)

    if factor > 1:
        corrupted = _block_mean(corrupted, factor)
    return _restore_layout(corrupted, image, name)


class CorruptionGenerator(Generator):
    """Common corruptions with a uniformly sampled name and severity.

    params: `corruptions` (names, default the 15 benchmark ones) and `severities` (integers
    1..5, default all five).
    """

    name = "corruption"
    param_names = ("corruptions", "severities")

    def check_params(self, params: dict[str, Any]) -> list[str]:
        problems = []
        self.corruptions = list(params.get("corruptions", BENCHMARK_CORRUPTIONS))
        self.severities = list(params.get("severities", SEVERITIES))
        if not self.corruptions:
            problems.append("corruptions is empty; list at least one corruption name")
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown:
            problems.append(
                f"corruptions {unknown} are unknown; valid names: {', '.join(CORRUPTIONS)}"
            )
        if not self.severities:
            problems.append("severities is empty; list integers from 1 to 5")
        invalid = [s for s in self.severities if not _is_severity(s)]
        if invalid:
            problems.append(f"severities {invalid} are invalid; use integers from 1 to 5")
        return problems

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        corruption = self.corruptions[int(rng.integers(len(self.corruptions)))]
        severity = self.severities[int(rng.integers(len(self.severities)))]
        return {"corruption": str(corruption), "severity": int(severity)}

    def apply(self, image: np.ndarray, params: dict[str, Any], seed: int) -> np.ndarray:
        missing = [key for key in ("corruption", "severity") if key not in params]
        if missing:
            raise ConfigError(
                [f"params {params!r} lack {missing}; expected keys 'corruption' and 'severity'"],
                source="corruption view",
            )
        return apply_corruption(image, params["corruption"], params["severity"], seed)
