"""DomainBed image benchmarks (PACS, VLCS, OfficeHome, TerraIncognita) with leave-one-domain-out.

The layout is the one DomainBed's download script produces: `<root>/<domain>/<class>/<image>`.
One domain, `dataset.options.test_domain`, is held out. As in DomainBed, a seeded
`holdout_fraction` (default 0.2) of every domain is set aside:

| split             | images                                                            |
|-------------------|-------------------------------------------------------------------|
| `train`           | training domains without their holdout                            |
| `id_val`          | holdout of the training domains (DomainBed's training-domain validation) |
| `test`            | test domain without its holdout (where DomainBed reports test accuracy) |
| `test_domain_val` | holdout of the test domain (DomainBed's oracle selection set)     |

    dataset:
      name: pacs
      root: /data/PACS
      options: {test_domain: sketch, holdout_fraction: 0.2, split_seed: 0}

Hidden files and folders (names starting with a dot, such as `.ipynb_checkpoints`) are ignored,
and every domain must contain the same class folders.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.datasets.base import DatasetReader, SourceRecord
from pipeline.datasets.common import (
    FileEntry,
    digest_entries,
    holdout_masks,
    list_images,
    list_subfolders,
    make_keys,
    raise_layout_problems,
)
from schemas.errors import DatasetError

__all__ = ["DomainBedReader", "OfficeHome", "PACS", "TerraIncognita", "VLCS"]

log = logging.getLogger(__name__)

OPTIONS = {"test_domain", "holdout_fraction", "split_seed"}


class DomainBedReader(DatasetReader):
    """Base of the DomainBed readers; subclasses set the domain folders and the class count."""

    metric = "accuracy"
    DOMAINS: ClassVar[tuple[str, ...]] = ()
    NUM_CLASSES: ClassVar[int] = 0
    SOURCE: ClassVar[str] = ""

    def __init__(self, root: str, options=None):
        super().__init__(root, options)
        self.folder = Path(root)
        self.test_domain, self.holdout_fraction, self.split_seed = self._parse_options()
        self._check_layout()

        files: list[tuple[str, str, str, int]] = []
        for domain in self.DOMAINS:
            for class_name in self.classes:
                for file_name, size in list_images(self.folder / domain / class_name):
                    files.append((domain, class_name, file_name, size))
        self._entries: list[FileEntry] = [(f"{d}/{c}/{f}", s) for d, c, f, s in files]
        self._files = files
        self._keys = make_keys([path for path, _ in self._entries])
        self._split = self._assign_splits()

    def _parse_options(self) -> tuple[str, float, int]:
        problems = [
            f"dataset.options.{key}: unknown option; allowed: {', '.join(sorted(OPTIONS))}"
            for key in sorted(set(self.options) - OPTIONS)
        ]
        test_domain = self.options.get("test_domain")
        if test_domain not in self.DOMAINS:
            problems.append(
                f"dataset.options.test_domain: {test_domain!r} is not a domain of "
                f"{self.name}; set one of {', '.join(self.DOMAINS)}"
            )
        fraction = self.options.get("holdout_fraction", 0.2)
        if not isinstance(fraction, int | float) or not 0 <= fraction < 1:
            problems.append(f"dataset.options.holdout_fraction: {fraction!r} must be in [0, 1)")
        seed = self.options.get("split_seed", 0)
        if not isinstance(seed, int):
            problems.append(f"dataset.options.split_seed: {seed!r} must be an integer")
        if problems:
            raise DatasetError(
                f"{self.name}: invalid options:\n" + "\n".join(f"  - {p}" for p in problems)
            )
        return test_domain, float(fraction), seed

    def _check_layout(self) -> None:
        """Check the domain folders and that they all contain the same visible class folders."""
        fix = (
            f"download {self.name} with DomainBed's download script or from {self.SOURCE} "
            "(see docs/datasets.md) and set dataset.root to the folder that contains the "
            "domain folders"
        )
        if not self.folder.is_dir():
            raise_layout_problems(self.name, self.folder, ["the folder does not exist"], fix)
        present = list_subfolders(self.folder)
        problems = [f"missing domain folder {d}/" for d in self.DOMAINS if d not in present]
        raise_layout_problems(self.name, self.folder, problems, fix)
        extra = sorted(set(present) - set(self.DOMAINS))
        if extra:
            log.warning(
                "%s: ignoring folders that are not domains of %s: %s", self.name, self.name, extra
            )

        per_domain = {d: list_subfolders(self.folder / d) for d in self.DOMAINS}
        all_classes = sorted(set().union(*per_domain.values()))
        for domain, classes in per_domain.items():
            for class_name in all_classes:
                if class_name not in classes:
                    problems.append(
                        f"missing class folder {domain}/{class_name}/ "
                        "(other domains have it; every domain needs the same classes)"
                    )
        if not problems and len(all_classes) != self.NUM_CLASSES:
            problems.append(
                f"found {len(all_classes)} class folders per domain "
                f"({', '.join(all_classes)}); {self.name} has {self.NUM_CLASSES}"
            )
        raise_layout_problems(self.name, self.folder, problems, fix)
        self.classes = all_classes

    def _assign_splits(self) -> np.ndarray:
        """Split every domain as DomainBed does, then name the parts by the domain's role.

        DomainBed holds out floor(holdout_fraction * n) images of every domain, the test domain
        included, and reports test accuracy on the rest of the test domain. DomainBed seeds the
        draw from its trial hash, so the exact images differ from its runs.
        """
        domains = [d for d, _, _, _ in self._files]
        (holdout,) = holdout_masks(domains, [self.holdout_fraction], self.split_seed)
        is_test = np.array(domains, dtype=object) == self.test_domain
        split = np.empty(len(domains), dtype=object)
        split[~is_test & ~holdout] = "train"
        split[~is_test & holdout] = "id_val"
        split[is_test & ~holdout] = "test"
        split[is_test & holdout] = "test_domain_val"
        return split

    def splits(self) -> list[str]:
        return ["train", "id_val", "test", "test_domain_val"]

    def records(self, split: str) -> list[SourceRecord]:
        self.check_split(split)
        class_index = {c: i for i, c in enumerate(self.classes)}
        records = []
        for i in np.flatnonzero(self._split == split):
            domain, class_name, _, _ = self._files[i]
            records.append(
                SourceRecord(
                    key=self._keys[i],
                    label=class_index[class_name],
                    domain=domain,
                    path=str(self.folder / self._entries[i][0]),
                )
            )
        self.log_counts(split, records)
        return records

    def fingerprint(self) -> str:
        return digest_entries(self.name, self.options, self._entries)


class PACS(DomainBedReader):
    """PACS: 7 classes in 4 domains (art_painting, cartoon, photo, sketch), 9,991 images."""

    name = "pacs"
    DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
    NUM_CLASSES = 7
    SOURCE = "https://domaingeneralization.github.io/"


class VLCS(DomainBedReader):
    """VLCS: 5 classes in 4 domains (Caltech101, LabelMe, SUN09, VOC2007), 10,729 images."""

    name = "vlcs"
    DOMAINS = ("Caltech101", "LabelMe", "SUN09", "VOC2007")
    NUM_CLASSES = 5
    SOURCE = "the VLCS release used by DomainBed"


class OfficeHome(DomainBedReader):
    """OfficeHome: 65 classes in 4 domains (Art, Clipart, Product, Real World), 15,588 images."""

    name = "office-home"
    DOMAINS = ("Art", "Clipart", "Product", "Real World")
    NUM_CLASSES = 65
    SOURCE = "https://www.hemanthdv.org/officeHomeDataset.html"


class TerraIncognita(DomainBedReader):
    """TerraIncognita as DomainBed builds it: 10 classes at 4 camera-trap locations."""

    name = "terra-incognita"
    DOMAINS = ("location_100", "location_38", "location_43", "location_46")
    NUM_CLASSES = 10
    SOURCE = "the Caltech Camera Traps release (DomainBed's download script selects the subset)"
