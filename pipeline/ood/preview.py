"""Labelled contact sheets of OOD views, for a person to check what each generator produces.

`build_preview` returns one PNG-ready image: a header row with the clean images, then one row per
corruption with a block of images per severity, then one row per other generator with a view
per image. `robustkd ood preview` (see `pipeline.ood.cli`) writes it to a file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.ood.base import build_generator
from pipeline.ood.corruptions import CORRUPTIONS, apply_corruption

__all__ = ["PreviewRow", "build_preview", "contact_sheet", "load_preview_images", "sample_images"]

log = logging.getLogger(__name__)

SAMPLE_IMAGE_NAMES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
"""Photos bundled with scikit-image (no download needed), used when no images are given."""
_LABEL_WIDTH = 150
_GAP = 4
_HEADER_HEIGHT = 14


@dataclass
class PreviewRow:
    """One labelled row: blocks of images, each block with an optional caption."""

    label: str
    blocks: list[tuple[str, list[np.ndarray]]]


def _square(image: Image.Image, size: int) -> np.ndarray:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.convert("RGB").crop((left, top, left + side, top + side))
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))


def sample_images(count: int, size: int) -> list[np.ndarray]:
    """Return up to `count` scikit-image sample photos, centre-cropped to size x size RGB."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    images = []
    for name in SAMPLE_IMAGE_NAMES[:count]:
        with Image.open(folder / name) as image:
            images.append(_square(image, size))
    return images


def load_preview_images(folder: str | Path, count: int, size: int) -> list[np.ndarray]:
    """Return the first `count` images of `folder` (sorted by name), as size x size RGB."""
    files = sorted(
        p
        for p in Path(folder).iterdir()
        if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp")
    )[:count]
    if not files:
        raise FileNotFoundError(f"no .png/.jpg/.jpeg/.bmp/.webp images in {folder}")
    images = []
    for file in files:
        with Image.open(file) as image:
            images.append(_square(image, size))
    return images


def _corruption_rows(
    images: list[np.ndarray], corruptions: Sequence[str], severities: Sequence[int], seed: int
) -> list[PreviewRow]:
    rows = []
    for name in corruptions:
        blocks = [
            (
                f"s{severity}",
                [
                    apply_corruption(image, name, severity, seed + index)
                    for index, image in enumerate(images)
                ],
            )
            for severity in severities
        ]
        rows.append(PreviewRow(f"{name} ({CORRUPTIONS[name]})", blocks))
    return rows


def _generator_rows(
    images: list[np.ndarray], generators: Sequence[dict[str, Any]], seed: int
) -> list[PreviewRow]:
    rows = []
    for spec in generators:
        generator = build_generator(spec["name"], spec.get("params", {}))
        if generator.needs_teacher:
            log.info("preview skips generator %r because it needs the teacher", spec["name"])
            continue
        views = [generator.generate(image, seed + index)[0] for index, image in enumerate(images)]
        detail = spec.get("params", {}).get("policy") or spec.get("params", {}).get("source") or ""
        rows.append(PreviewRow(f"{spec['name']} {detail}".strip(), [("", views)]))
    return rows


def build_preview(
    images: list[np.ndarray],
    corruptions: Sequence[str] = tuple(CORRUPTIONS),
    severities: Sequence[int] = (1, 3, 5),
    generators: Sequence[dict[str, Any]] = (),
    seed: int = 0,
) -> np.ndarray:
    """Return the contact sheet (uint8 RGB) of every corruption x severity and each generator.

    `generators` are `{"name": ..., "params": {...}}` mappings; those that need the teacher are
    skipped with a log line.
    """
    rows = [PreviewRow("clean", [("", list(images))])]
    rows += _corruption_rows(images, corruptions, severities, seed)
    rows += _generator_rows(images, generators, seed)
    return contact_sheet(rows)


def contact_sheet(rows: list[PreviewRow]) -> np.ndarray:
    """Lay out `rows` on a white canvas with the label left of each row and block captions above."""
    font = ImageFont.load_default()
    tile = max(img.shape[0] for row in rows for _, block in row.blocks for img in block)
    row_width = max(
        sum(len(block) * (tile + _GAP) + 2 * _GAP for _, block in row.blocks) for row in rows
    )
    row_height = _HEADER_HEIGHT + tile + _GAP
    canvas = Image.new("RGB", (_LABEL_WIDTH + row_width, row_height * len(rows) + _GAP), "white")
    draw = ImageDraw.Draw(canvas)

    for row_index, row in enumerate(rows):
        top = _GAP + row_index * row_height
        draw.text((4, top + _HEADER_HEIGHT + tile // 2 - 6), row.label, fill="black", font=font)
        left = _LABEL_WIDTH
        for caption, block in row.blocks:
            draw.text((left, top), caption, fill="black", font=font)
            for image in block:
                rgb = (
                    image
                    if image.ndim == 3 and image.shape[2] == 3
                    else np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
                )
                canvas.paste(Image.fromarray(rgb), (left, top + _HEADER_HEIGHT))
                left += tile + _GAP
            left += 2 * _GAP
    return np.asarray(canvas)
