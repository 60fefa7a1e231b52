"""OOD view generators: common corruptions, adversarial attacks, diffusion style transfer,
augmentations and unlabeled image pools.

Every generator is built from a `schemas.config.GeneratorConfig` with
`build_generator(cfg.name, cfg.params)` and turns a uint8 image into a view with
`generate(image, seed)`. docs/ood.md lists the parameters of each one. Importing this package
loads only the corruption code; the torch-based generators are imported on first use.
"""

from pipeline.ood.base import (
    GENERATORS,
    Generator,
    InvalidImageError,
    build_generator,
    generator_class,
)
from pipeline.ood.corruptions import (
    BENCHMARK_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    CorruptionGenerator,
    apply_corruption,
    corruption_family,
)

__all__ = [
    "BENCHMARK_CORRUPTIONS",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "GENERATORS",
    "SEVERITIES",
    "CorruptionGenerator",
    "Generator",
    "InvalidImageError",
    "apply_corruption",
    "build_generator",
    "corruption_family",
    "generator_class",
]
