"""Unlabeled image pools used directly as OOD views (for example the unlabeled splits of WILDS).

A pool is one of:

- `folder`: image files anywhere under a folder (searched recursively);
- `imagefolder`: the torchvision ImageFolder layout, `root/<class>/<image>`, with the class
  folders ignored because the pool is unlabeled;
- `webdataset`: tar shards (a folder of `.tar` files, a glob, or a brace pattern such as
  `pool-{000..009}.tar`) whose samples each hold one image member.

Each view stores the pool image's `key` (its path relative to the folder, or
`<shard file name>/<sample key>` for WebDataset), so that a view is found again by key even if
files are added to the pool. The pool image is scaled and centre-cropped (or stretched) to the
size of the input image, whose pixels are otherwise unused. The pool index is built once per
process and cached.
"""

from __future__ import annotations

import functools
import glob
import io
import logging
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.ood.base import Generator, check_image, check_seed
from schemas.errors import RobustKDError

__all__ = ["PoolGenerator", "index_pool"]

log = logging.getLogger(__name__)

SOURCES = ("folder", "imagefolder", "webdataset")
RESIZE_MODES = ("center_crop", "stretch")
DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _shard_paths(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(glob.glob(os.path.join(path, "*.tar")))
    from braceexpand import braceexpand

    return sorted({match for pattern in braceexpand(path) for match in glob.glob(pattern)})


@functools.lru_cache(maxsize=8)
def index_pool(source: str, path: str, extensions: tuple[str, ...]) -> dict[str, Any]:
    """Return {key: location} for every image in the pool, ordered by key.

    A location is a file path, or (shard path, byte offset, size) for a WebDataset member.
    """
    index: dict[str, Any] = {}
    if source in ("folder", "imagefolder"):
        root = Path(path)
        pattern = "*/*" if source == "imagefolder" else "**/*"
        for file in sorted(root.glob(pattern)):
            if file.is_file() and file.suffix.lower() in extensions:
                index[file.relative_to(root).as_posix()] = str(file)
    else:
        for shard in _shard_paths(path):
            with tarfile.open(shard, "r:") as tar:
                for member in tar:
                    # WebDataset's sample key is the member name up to the first dot of its
                    # file name; the image member is matched on its last suffix.
                    folder, _, file_name = member.name.rpartition("/")
                    stem = (
                        f"{folder}/{file_name.split('.')[0]}" if folder else file_name.split(".")[0]
                    )
                    suffix = os.path.splitext(file_name)[1].lower()
                    if member.isfile() and suffix in extensions:
                        index.setdefault(
                            f"{os.path.basename(shard)}/{stem}",
                            (shard, member.offset_data, member.size),
                        )
    log.info("indexed %d images in %s pool %s", len(index), source, path)
    return dict(sorted(index.items()))


def _read_image(location: Any) -> Image.Image:
    if isinstance(location, str):
        with Image.open(location) as image:
            image.load()
            return image
    shard, offset, size = location
    with open(shard, "rb") as file:
        file.seek(offset)
        data = file.read(size)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image


def _fit(image: Image.Image, height: int, width: int, mode: str) -> Image.Image:
    if mode == "stretch":
        return image.resize((width, height), Image.Resampling.BICUBIC)
    scale = max(height / image.height, width / image.width)
    scaled = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(scaled, Image.Resampling.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


class PoolGenerator(Generator):
    """Views drawn uniformly from an unlabeled image pool.

    params: `source` (folder, imagefolder or webdataset), `path`, `extensions` (default common
    image types), `resize` (center_crop or stretch; default center_crop).
    """

    name = "pool"
    param_names = ("source", "path", "extensions", "resize")

    def check_params(self, params: dict[str, Any]) -> list[str]:
        problems = []
        self.source = params.get("source", "folder")
        self.path = params.get("path")
        self.resize = params.get("resize", "center_crop")
        extensions = params.get("extensions", DEFAULT_EXTENSIONS)
        self.extensions = tuple(
            sorted(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        )
        if self.source not in SOURCES:
            problems.append(f"source {self.source!r} is invalid; use one of {', '.join(SOURCES)}")
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize {self.resize!r} is invalid; use center_crop or stretch")
        if not isinstance(self.path, str) or not self.path:
            problems.append("path is missing; give the pool folder or WebDataset shard pattern")
        elif self.source in ("folder", "imagefolder") and not os.path.isdir(self.path):
            problems.append(f"path {self.path!r} is not an existing folder")
        elif self.source == "webdataset" and not _shard_paths(self.path):
            problems.append(f"path {self.path!r} matches no .tar shards")
        if problems:
            return problems

        self.keys = list(index_pool(self.source, self.path, self.extensions))
        if not self.keys:
            problems.append(
                f"pool {self.path!r} holds no images with extensions {', '.join(self.extensions)}"
            )
        return problems

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"key": self.keys[int(rng.integers(len(self.keys)))]}

    def apply(self, image: np.ndarray, params: dict[str, Any], seed: int) -> np.ndarray:
        check_image(image)
        check_seed(seed)
        index = index_pool(self.source, self.path, self.extensions)
        key = params.get("key")
        if key not in index:
            raise RobustKDError(
                f"pool image {key!r} is not in {self.source} pool {self.path!r}; the pool must "
                "still contain the images a shard set was generated from"
            )
        pool_image = _read_image(index[key])
        pool_image = pool_image.convert("RGB" if image.ndim == 3 and image.shape[2] == 3 else "L")
        fitted = np.asarray(_fit(pool_image, image.shape[0], image.shape[1], self.resize))
        return fitted.reshape(image.shape).copy()
