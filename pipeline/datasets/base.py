"""The dataset reader interface and the image helpers every reader shares.

A reader validates the on-disk layout when it is built, lists its official splits, and returns
`SourceRecord`s: a key, a label, a domain and either an image path or the image itself. Images
are loaded later, inside Ray tasks, by `load_image`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from schemas.errors import DatasetError

__all__ = ["DatasetReader", "SourceRecord", "load_image", "prepare_image"]

log = logging.getLogger(__name__)


@dataclass
class SourceRecord:
    """One data set sample before any processing."""

    key: str
    """Unique key within the data set; letters, digits, '_' and '-' only."""
    label: int
    """Class index into the reader's `classes`; -1 for unlabeled samples."""
    domain: str
    """Domain as the data set defines it."""
    path: str | None = None
    """Image file to load; None when `image` is given."""
    image: np.ndarray | None = None
    """The image itself (uint8, (H, W) or (H, W, C)) for data sets stored as arrays."""


class DatasetReader:
    """Base class of the readers registered in `pipeline.datasets.READERS`."""

    name: ClassVar[str] = ""
    metric: ClassVar[str] = "accuracy"
    """The data set's official metric, reported by `evaluate`."""

    def __init__(self, root: str, options: dict[str, Any] | None = None):
        self.root = root
        self.options = dict(options or {})
        self.classes: list[str] = []

    def splits(self) -> list[str]:
        raise NotImplementedError

    def records(self, split: str) -> list[SourceRecord]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Return a sha256 that changes when the data the reader returns changes."""
        raise NotImplementedError

    def check_split(self, split: str) -> None:
        if split not in self.splits():
            raise DatasetError(
                f"{self.name}: split {split!r} does not exist; "
                f"available: {', '.join(self.splits())}"
            )

    def log_counts(self, split: str, records: list[SourceRecord]) -> None:
        domains = Counter(r.domain for r in records)
        log.info("%s/%s: %d samples; per domain: %s", self.name, split, len(records), dict(domains))


def records_sha256(records: list[SourceRecord]) -> str:
    """Hash keys, labels, domains and inline image bytes or paths of the records."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(f"{r.key}|{r.label}|{r.domain}|{r.path}".encode())
        if r.image is not None:
            digest.update(np.ascontiguousarray(r.image).tobytes())
    return digest.hexdigest()


def load_image(record: SourceRecord) -> np.ndarray:
    """Return the record's image as uint8 at its native size; raises OSError if unreadable."""
    if record.image is not None:
        return np.asarray(record.image, dtype=np.uint8)
    with Image.open(record.path) as img:
        img.load()
        return np.asarray(img.convert("RGB"))


def prepare_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size (bilinear) and expand grayscale to 3 channels; returns uint8."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    pil = Image.fromarray(image)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BILINEAR)
    return np.asarray(pil.convert("RGB"), dtype=np.uint8)
