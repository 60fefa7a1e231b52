"""Corruption names and options shared by the CIFAR-C and ImageNet-C readers.

The Hendrycks and Dietterich corruption benchmarks use 15 corruptions in four families, and their
release adds four extra corruptions meant for validation. Every corruption comes at severities
1 to 5. Corrupted samples get the domain `<corruption>/<severity>`, for example
`gaussian_noise/3`, so that evaluation can group results per corruption and per severity.
"""

from __future__ import annotations

from typing import Any

# The generator suite defines the corruption names once; the benchmark readers reuse them.
from pipeline.ood.corruptions import BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS
from schemas.errors import DatasetError

__all__ = [
    "BENCHMARK_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "SEVERITIES",
    "corruption_domain",
    "parse_corruption_options",
]

SEVERITIES = (1, 2, 3, 4, 5)

OPTIONS = {"clean_root", "corruptions", "severities"}


def corruption_domain(corruption: str, severity: int) -> str:
    return f"{corruption}/{severity}"


def parse_corruption_options(
    reader: str, options: dict[str, Any]
) -> tuple[str, list[str], list[int]]:
    """Check `clean_root`, `corruptions` and `severities` and return them.

    `corruptions` defaults to the 15 benchmark corruptions and `severities` to 1..5.
    """
    problems = [
        f"dataset.options.{key}: unknown option; allowed: {', '.join(sorted(OPTIONS))}"
        for key in sorted(set(options) - OPTIONS)
    ]
    clean_root = options.get("clean_root")
    if not isinstance(clean_root, str) or not clean_root:
        problems.append(
            "dataset.options.clean_root: missing; set it to the folder of the clean "
            "data set that provides the training split (see docs/datasets.md)"
        )
    corruptions = options.get("corruptions", list(BENCHMARK_CORRUPTIONS))
    known = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
    if not isinstance(corruptions, list) or not corruptions:
        problems.append("dataset.options.corruptions: expected a non-empty list of names")
        corruptions = []
    for name in corruptions:
        if name not in known:
            problems.append(
                f"dataset.options.corruptions: {name!r} is not a corruption of the "
                f"benchmark; allowed: {', '.join(known)}"
            )
    severities = options.get("severities", list(SEVERITIES))
    if (
        not isinstance(severities, list)
        or not severities
        or any(s not in SEVERITIES for s in severities)
    ):
        problems.append(
            f"dataset.options.severities: {severities!r} must be a non-empty list of "
            "integers from 1 to 5"
        )
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DatasetError(f"{reader}: invalid options:\n{lines}")
    return clean_root, list(corruptions), sorted(set(severities))
