"""Fashion-MNIST from its original IDX files (gzip-compressed or not).

Debian's `dataset-fashion-mnist` package installs them in /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

from pipeline.datasets.base import DatasetReader, SourceRecord
from schemas.errors import DatasetError

__all__ = ["FashionMNIST", "read_idx"]

CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (as root) or set dataset.root"
)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (magic 0x0000080N) into an array."""
    with _open(path) as f:
        data = f.read()
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated IDX file ({len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(
            f"{path}: header declares shape {shape} but the file contains {body.size} values"
        )
    return body.reshape(shape)


class FashionMNIST(DatasetReader):
    """Fashion-MNIST: 10 classes, 28x28 grayscale, splits `train` (60k) and `test` (10k)."""

    name = "fashion-mnist"

    def __init__(self, root: str, options=None):
        super().__init__(root, options)
        self.classes = list(CLASSES)
        folder = Path(root)
        if not folder.is_dir():
            raise DatasetError(f"Fashion-MNIST folder {root} does not exist; {INSTALL_HINT}")
        self._paths = {}
        missing = []
        for split, names in _FILES.items():
            for name in names:
                found = [p for p in (folder / f"{name}.gz", folder / name) if p.is_file()]
                if found:
                    self._paths[(split, name)] = found[0]
                else:
                    missing.append(f"{name}[.gz]")
        if missing:
            raise DatasetError(
                f"Fashion-MNIST folder {root} lacks {', '.join(missing)}; {INSTALL_HINT}"
            )

    def splits(self) -> list[str]:
        return list(_FILES)

    def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        images_name, labels_name = _FILES[split]
        images = read_idx(self._paths[(split, images_name)])
        labels = read_idx(self._paths[(split, labels_name)])
        if len(images) != len(labels):
            raise DatasetError(
                f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels"
            )
        return images, labels

    def records(self, split: str) -> list[SourceRecord]:
        self.check_split(split)
        images, labels = self._arrays(split)
        records = [
            SourceRecord(
                key=f"{split}-{i:06d}", label=int(labels[i]), domain="original", image=images[i]
            )
            for i in range(len(images))
        ]
        self.log_counts(split, records)
        return records

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.name.encode())
        for key in sorted(self._paths):
            digest.update(self._paths[key].name.encode())
            digest.update(self._paths[key].read_bytes())
        return digest.hexdigest()
