"""CIFAR-10-C and CIFAR-100-C, with clean training data from the CIFAR binary release.

A corruption benchmark folder contains `<corruption>.npy` (uint8, N x 32 x 32 x 3) and `labels.npy`.
Each file is five blocks of the same 10,000 test images, severity 1 first and severity 5 last,
so the reader checks that N is five times the test set, that the five label blocks are equal,
and that they equal the labels of the clean test set.

The clean data comes from the binary (not the pickled Python) CIFAR release, given by
`dataset.options.clean_root`: `cifar-10-batches-bin/` or `cifar-100-binary/`.

Splits: `train` and `test` (clean, domain `clean`) and `corrupted` (every chosen corruption and
severity, domain `<corruption>/<severity>`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.datasets.base import DatasetReader, SourceRecord
from pipeline.datasets.common import FileEntry, digest_entries, raise_layout_problems
from pipeline.datasets.corruptions import corruption_domain, parse_corruption_options
from schemas.errors import DatasetError

__all__ = ["CIFAR10C", "CIFAR100C", "read_cifar_binary"]

log = logging.getLogger(__name__)

IMAGE_BYTES = 32 * 32 * 3


def read_cifar_binary(
    path: Path, label_bytes: int, label_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR binary file into (N x 32 x 32 x 3 uint8 images, N labels).

    Each record is `label_bytes` label bytes (CIFAR-100: coarse then fine) followed by 3,072
    pixel bytes: the red, green and blue planes of a 32x32 image, row by row.
    """
    data = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + IMAGE_BYTES
    if data.size % record:
        raise DatasetError(
            f"{path}: {data.size} bytes is not a whole number of {record}-byte "
            "CIFAR records; download the binary version again"
        )
    rows = data.reshape(-1, record)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), rows[:, label_index].astype(np.int64)


class CorruptedCIFAR(DatasetReader):
    """Base of the CIFAR-C readers; subclasses describe their clean binary release."""

    metric = "accuracy"
    CLEAN_FOLDER: ClassVar[str] = ""
    TRAIN_FILES: ClassVar[tuple[str, ...]] = ()
    TEST_FILE: ClassVar[str] = ""
    NAMES_FILE: ClassVar[str] = ""
    LABEL_BYTES: ClassVar[int] = 1
    LABEL_INDEX: ClassVar[int] = 0
    FIX: ClassVar[str] = ""

    def __init__(self, root: str, options=None):
        super().__init__(root, options)
        self.folder = Path(root)
        clean_root, self.corruptions, self.severities = parse_corruption_options(
            self.name, self.options
        )
        self.clean_folder = Path(clean_root)
        self._check_files()

        names = (self.clean_folder / self.NAMES_FILE).read_text().split("\n")
        self.classes = [n.strip() for n in names if n.strip()]
        self._clean: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        test_labels = self._clean_split("test")[1]
        self._labels = self._check_corruption_files(test_labels)

    def _check_files(self) -> None:
        """Check that every file the reader needs exists, listing all that do not."""
        problems = []
        if not self.folder.is_dir():
            problems.append(f"missing folder {self.folder}/")
        else:
            for name in ["labels"] + self.corruptions:
                if not (self.folder / f"{name}.npy").is_file():
                    problems.append(f"missing file {self.folder / name}.npy")
        clean_files = self.TRAIN_FILES + (self.TEST_FILE, self.NAMES_FILE)
        if not self.clean_folder.is_dir():
            problems.append(f"missing folder {self.clean_folder}/ (dataset.options.clean_root)")
        else:
            for name in clean_files:
                if not (self.clean_folder / name).is_file():
                    problems.append(
                        f"missing file {self.clean_folder / name} "
                        f"(dataset.options.clean_root must be {self.CLEAN_FOLDER}/)"
                    )
        raise_layout_problems(self.name, self.folder, problems, self.FIX)

    def _clean_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._clean:
            files = self.TRAIN_FILES if split == "train" else (self.TEST_FILE,)
            parts = [
                read_cifar_binary(self.clean_folder / f, self.LABEL_BYTES, self.LABEL_INDEX)
                for f in files
            ]
            images = np.concatenate([p[0] for p in parts])
            labels = np.concatenate([p[1] for p in parts])
            bad = labels >= len(self.classes)
            if bad.any():
                raise DatasetError(
                    f"{self.name}: {split} labels reach {labels.max()} but "
                    f"{self.NAMES_FILE} names {len(self.classes)} classes"
                )
            self._clean[split] = (images, labels)
        return self._clean[split]

    def _check_corruption_files(self, test_labels: np.ndarray) -> np.ndarray:
        """Check shapes, dtypes and the five severity blocks, and return the first label block."""
        problems = []
        labels = np.load(self.folder / "labels.npy", allow_pickle=False)
        block = len(test_labels)
        if labels.ndim != 1 or labels.shape[0] != 5 * block:
            raise_layout_problems(
                self.name,
                self.folder,
                [
                    f"labels.npy has shape {labels.shape}; expected ({5 * block},): five severity "
                    f"blocks of the {block} clean test images"
                ],
                self.FIX,
            )
        blocks = labels.reshape(5, block)
        for severity in range(2, 6):
            if not np.array_equal(blocks[severity - 1], blocks[0]):
                problems.append(
                    f"labels.npy: severity block {severity} differs from block 1; "
                    "each file must repeat the test set once per severity, in order"
                )
        if not np.array_equal(blocks[0], test_labels):
            problems.append(
                f"labels.npy: the first severity block does not match the labels "
                f"of {self.TEST_FILE}; the corrupted and clean files come from "
                "different releases"
            )
        for corruption in self.corruptions:
            array = np.load(self.folder / f"{corruption}.npy", mmap_mode="r", allow_pickle=False)
            if array.dtype != np.uint8 or array.shape != (5 * block, 32, 32, 3):
                problems.append(
                    f"{corruption}.npy has dtype {array.dtype} and shape "
                    f"{array.shape}; expected uint8 ({5 * block}, 32, 32, 3), five "
                    "severity blocks in order"
                )
        raise_layout_problems(self.name, self.folder, problems, self.FIX)
        return blocks[0].astype(np.int64)

    def splits(self) -> list[str]:
        return ["train", "test", "corrupted"]

    def records(self, split: str) -> list[SourceRecord]:
        self.check_split(split)
        if split == "corrupted":
            records = self._corrupted_records()
        else:
            images, labels = self._clean_split(split)
            records = [
                SourceRecord(
                    key=f"{split}-{i:05d}", label=int(labels[i]), domain="clean", image=images[i]
                )
                for i in range(len(labels))
            ]
        self.log_counts(split, records)
        return records

    def _corrupted_records(self) -> list[SourceRecord]:
        block = len(self._labels)
        records = []
        for corruption in self.corruptions:
            # Memory-mapped: an image is read from disk when the work plan copies it.
            # NOTE: the plan copies every chosen image into driver memory, at least 2.3 GB for
            # all of CIFAR-10-C; restrict `corruptions` or `severities` on small machines.
            array = np.load(self.folder / f"{corruption}.npy", mmap_mode="r", allow_pickle=False)
            for severity in self.severities:
                offset = (severity - 1) * block
                domain = corruption_domain(corruption, severity)
                records += [
                    SourceRecord(
                        key=f"{corruption}-s{severity}-{i:05d}",
                        label=int(self._labels[i]),
                        domain=domain,
                        image=array[offset + i],
                    )
                    for i in range(block)
                ]
        return records

    def fingerprint(self) -> str:
        files: list[FileEntry] = []
        for name in ["labels"] + self.corruptions:
            path = self.folder / f"{name}.npy"
            files.append((path.name, path.stat().st_size))
        for name in self.TRAIN_FILES + (self.TEST_FILE, self.NAMES_FILE):
            files.append((f"clean/{name}", (self.clean_folder / name).stat().st_size))
        return digest_entries(self.name, self.options, files)


class CIFAR10C(CorruptedCIFAR):
    """CIFAR-10-C: 10 classes; clean data from `cifar-10-batches-bin/`."""

    name = "cifar10-c"
    CLEAN_FOLDER = "cifar-10-batches-bin"
    TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
    TEST_FILE = "test_batch.bin"
    NAMES_FILE = "batches.meta.txt"
    FIX = (
        "download CIFAR-10-C (the .npy release) and the CIFAR-10 binary version, set "
        "dataset.root to CIFAR-10-C/ and dataset.options.clean_root to cifar-10-batches-bin/"
    )


class CIFAR100C(CorruptedCIFAR):
    """CIFAR-100-C: 100 fine classes; clean data from `cifar-100-binary/`."""

    name = "cifar100-c"
    CLEAN_FOLDER = "cifar-100-binary"
    TRAIN_FILES = ("train.bin",)
    TEST_FILE = "test.bin"
    NAMES_FILE = "fine_label_names.txt"
    LABEL_BYTES = 2
    LABEL_INDEX = 1
    FIX = (
        "download CIFAR-100-C (the .npy release) and the CIFAR-100 binary version, set "
        "dataset.root to CIFAR-100-C/ and dataset.options.clean_root to cifar-100-binary/"
    )
