"""ImageNet-C and Tiny-ImageNet-C, with clean training data from ImageNet or Tiny-ImageNet.

A corruption benchmark folder contains `<corruption>/<severity>/<wnid>/<image>`, severities 1 to 5.
The clean data set, `dataset.options.clean_root`, provides the `train` and `val` splits:

- ImageNet: `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` (the validation images sorted into
  class folders, the layout torchvision's ImageFolder reads).
- Tiny-ImageNet: `tiny-imagenet-200/` as released: `wnids.txt`, `train/<wnid>/images/*.JPEG`,
  `val/images/*.JPEG` and `val/val_annotations.txt`.

Splits: `train` and `val` (clean, domain `clean`) and `corrupted` (domain
`<corruption>/<severity>`). The classes are the sorted WordNet ids. Every severity folder must hold
the same class folders as the clean training set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

from pipeline.datasets.base import DatasetReader, SourceRecord
from pipeline.datasets.common import (
    FileEntry,
    digest_entries,
    list_images,
    list_subfolders,
    make_keys,
    raise_layout_problems,
)
from pipeline.datasets.corruptions import corruption_domain, parse_corruption_options

__all__ = ["ImageNetC", "TinyImageNetC"]

log = logging.getLogger(__name__)

# (relative path under its root, label index, domain) of one image.
_Item = tuple[str, int, str]


class CorruptedImageFolders(DatasetReader):
    """Base of the ImageNet-C readers; subclasses list the clean images."""

    metric = "accuracy"
    NUM_CLASSES: ClassVar[int] = 0
    FIX: ClassVar[str] = ""

    def __init__(self, root: str, options=None):
        super().__init__(root, options)
        self.folder = Path(root)
        clean_root, self.corruptions, self.severities = parse_corruption_options(
            self.name, self.options
        )
        self.clean_folder = Path(clean_root)
        problems = []
        if not self.folder.is_dir():
            problems.append(f"missing folder {self.folder}/")
        if not self.clean_folder.is_dir():
            problems.append(f"missing folder {self.clean_folder}/ (dataset.options.clean_root)")
        raise_layout_problems(self.name, self.folder, problems, self.FIX)

        self.classes = self._clean_classes()
        if len(self.classes) != self.NUM_CLASSES:
            # NOTE: a warning, not an error, so that a class subset of the release still runs.
            log.warning(
                "%s: %d classes found in %s; the full data set has %d",
                self.name,
                len(self.classes),
                self.clean_folder,
                self.NUM_CLASSES,
            )
        self._items: dict[str, list[_Item]] = {}
        self._sizes: dict[str, list[int]] = {}
        self._list_clean()
        self._list_corrupted()
        self._keys = self._make_keys()

    def _clean_classes(self) -> list[str]:
        raise NotImplementedError

    def _list_clean(self) -> None:
        """Fill `_items` and `_sizes` for the `train` and `val` splits."""
        raise NotImplementedError

    def _list_corrupted(self) -> None:
        class_set = set(self.classes)
        problems = []
        items: list[_Item] = []
        sizes: list[int] = []
        for corruption in self.corruptions:
            for severity in self.severities:
                folder = self.folder / corruption / str(severity)
                if not folder.is_dir():
                    problems.append(f"missing folder {corruption}/{severity}/")
                    continue
                present = list_subfolders(folder)
                for wnid in sorted(class_set - set(present)):
                    problems.append(f"missing class folder {corruption}/{severity}/{wnid}/")
                for wnid in sorted(set(present) - class_set):
                    problems.append(
                        f"unknown class folder {corruption}/{severity}/{wnid}/ "
                        "(not in the clean training set)"
                    )
                domain = corruption_domain(corruption, severity)
                for label, wnid in enumerate(self.classes):
                    if wnid not in present:
                        continue
                    for name, size in list_images(folder / wnid):
                        items.append((f"{corruption}/{severity}/{wnid}/{name}", label, domain))
                        sizes.append(size)
        raise_layout_problems(self.name, self.folder, problems, self.FIX)
        self._items["corrupted"] = items
        self._sizes["corrupted"] = sizes

    def _make_keys(self) -> dict[str, list[str]]:
        """Key every image by its path; clean paths get a `clean/` prefix."""
        paths, owners = [], []
        for split in self.splits():
            prefix = "" if split == "corrupted" else "clean/"
            paths += [prefix + path for path, _, _ in self._items[split]]
            owners += [split] * len(self._items[split])
        keys: dict[str, list[str]] = {split: [] for split in self.splits()}
        for split, key in zip(owners, make_keys(paths), strict=True):
            keys[split].append(key)
        return keys

    def splits(self) -> list[str]:
        return ["train", "val", "corrupted"]

    def records(self, split: str) -> list[SourceRecord]:
        self.check_split(split)
        base = self.folder if split == "corrupted" else self.clean_folder
        records = [
            SourceRecord(key=key, label=label, domain=domain, path=str(base / path))
            for key, (path, label, domain) in zip(
                self._keys[split], self._items[split], strict=True
            )
        ]
        self.log_counts(split, records)
        return records

    def fingerprint(self) -> str:
        entries: list[FileEntry] = []
        for split in self.splits():
            entries += [
                (f"{split}/{path}", size)
                for (path, _, _), size in zip(self._items[split], self._sizes[split], strict=True)
            ]
        return digest_entries(self.name, self.options, entries)


class ImageNetC(CorruptedImageFolders):
    """ImageNet-C: 1,000 classes, 50,000 validation images per corruption and severity."""

    name = "imagenet-c"
    NUM_CLASSES = 1000
    FIX = (
        "download ImageNet-C and ImageNet (ILSVRC2012, validation images sorted into class "
        "folders), set dataset.root to the ImageNet-C folder and dataset.options.clean_root "
        "to the ImageNet folder that contains train/ and val/"
    )

    def _clean_classes(self) -> list[str]:
        problems = [
            f"missing folder {self.clean_folder / s}/"
            for s in ("train", "val")
            if not (self.clean_folder / s).is_dir()
        ]
        raise_layout_problems(self.name, self.clean_folder, problems, self.FIX)
        return list_subfolders(self.clean_folder / "train")

    def _list_clean(self) -> None:
        val_classes = list_subfolders(self.clean_folder / "val")
        problems = [
            f"missing class folder val/{wnid}/ (train/{wnid}/ exists)"
            for wnid in self.classes
            if wnid not in val_classes
        ]
        problems += [
            f"unknown class folder val/{wnid}/ (no train/{wnid}/)"
            for wnid in val_classes
            if wnid not in self.classes
        ]
        raise_layout_problems(self.name, self.clean_folder, problems, self.FIX)
        for split in ("train", "val"):
            items, sizes = [], []
            for label, wnid in enumerate(self.classes):
                for name, size in list_images(self.clean_folder / split / wnid):
                    items.append((f"{split}/{wnid}/{name}", label, "clean"))
                    sizes.append(size)
            self._items[split], self._sizes[split] = items, sizes


class TinyImageNetC(CorruptedImageFolders):
    """Tiny-ImageNet-C: 200 classes at 64x64, from the 10,000 Tiny-ImageNet validation images."""

    name = "tiny-imagenet-c"
    NUM_CLASSES = 200
    FIX = (
        "download Tiny-ImageNet-C and tiny-imagenet-200, set dataset.root to the "
        "Tiny-ImageNet-C folder and dataset.options.clean_root to tiny-imagenet-200/"
    )

    def _clean_classes(self) -> list[str]:
        required = ["wnids.txt", "train", "val/images", "val/val_annotations.txt"]
        problems = [
            f"missing {self.clean_folder / r}"
            for r in required
            if not (self.clean_folder / r).exists()
        ]
        raise_layout_problems(self.name, self.clean_folder, problems, self.FIX)
        wnids = (self.clean_folder / "wnids.txt").read_text().split()
        return sorted(wnids)

    def _list_clean(self) -> None:
        problems = []
        items, sizes = [], []
        for label, wnid in enumerate(self.classes):
            folder = self.clean_folder / "train" / wnid / "images"
            if not folder.is_dir():
                problems.append(f"missing folder train/{wnid}/images/ (listed in wnids.txt)")
                continue
            for name, size in list_images(folder):
                items.append((f"train/{wnid}/images/{name}", label, "clean"))
                sizes.append(size)
        self._items["train"], self._sizes["train"] = items, sizes

        class_index = {wnid: i for i, wnid in enumerate(self.classes)}
        on_disk = dict(list_images(self.clean_folder / "val" / "images"))
        items, sizes = [], []
        annotations = (self.clean_folder / "val" / "val_annotations.txt").read_text()
        for line_number, line in enumerate(annotations.splitlines(), start=1):
            fields = line.split("\t")
            if not line.strip():
                continue
            if len(fields) < 2 or fields[1] not in class_index:
                problems.append(
                    f"val/val_annotations.txt line {line_number}: expected "
                    f"'<file>\\t<wnid>...' with a wnid from wnids.txt, got {line!r}"
                )
                continue
            # A listed file that is missing stays in the list, so the pipeline counts it as an
            # unreadable image.
            items.append((f"val/images/{fields[0]}", class_index[fields[1]], "clean"))
            sizes.append(on_disk.get(fields[0], -1))
        raise_layout_problems(self.name, self.clean_folder, problems, self.FIX)
        self._items["val"], self._sizes["val"] = items, sizes
