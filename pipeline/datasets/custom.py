"""Custom data sets: an ImageFolder tree (`imagefolder`) or a CSV manifest (`csv`).

`imagefolder` reads `<root>/[<split>/][<domain>/]<class>/<image>`; the two optional levels are
switched on with `split_folders` and `domain_folders`. `csv` reads a manifest with the columns
`path,label,domain` and an optional `split` column; paths are relative to `dataset.root`.

When the data carries no splits (no split folders, no `split` column), each (domain, class)
group is divided at random into `train`, `val` (`val_fraction`) and `test` (`test_fraction`).
Domains listed in `ood_domains` are taken out of every split and form the split `ood`, to be used
as natural-shift validation or test data.

    dataset:
      name: csv
      root: /data/my-images
      options: {manifest: labels.csv, ood_domains: [scanner_b], test_fraction: 0.2}
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.base import DatasetReader, SourceRecord
from pipeline.datasets.common import (
    check_listed_files,
    digest_entries,
    holdout_masks,
    list_images,
    list_subfolders,
    make_keys,
    raise_layout_problems,
    read_metadata_csv,
)
from schemas.errors import DatasetError

__all__ = ["CSVManifest", "ImageFolder"]

log = logging.getLogger(__name__)

SPLIT_OPTIONS = {"val_fraction", "test_fraction", "split_seed", "ood_domains", "classes"}
DEFAULT_DOMAIN = "default"


class CustomReader(DatasetReader):
    """Shared option parsing and split assignment of the custom readers."""

    metric = "accuracy"
    OPTIONS: set[str] = set()

    def _parse_options(self) -> list[str]:
        """Check the shared options, store them, and return the problems found."""
        opts = self.options
        problems = [
            f"dataset.options.{key}: unknown option; allowed: "
            f"{', '.join(sorted(self.OPTIONS | SPLIT_OPTIONS))}"
            for key in sorted(set(opts) - self.OPTIONS - SPLIT_OPTIONS)
        ]
        self.val_fraction = opts.get("val_fraction", 0.0)
        self.test_fraction = opts.get("test_fraction", 0.2)
        for key in ("val_fraction", "test_fraction"):
            value = opts.get(key, getattr(self, key))
            if not isinstance(value, int | float) or not 0 <= value < 1:
                problems.append(f"dataset.options.{key}: {value!r} must be in [0, 1)")
        if not problems and self.val_fraction + self.test_fraction >= 1:
            problems.append("dataset.options.val_fraction + test_fraction must be below 1")
        self.split_seed = opts.get("split_seed", 0)
        if not isinstance(self.split_seed, int):
            problems.append(f"dataset.options.split_seed: {self.split_seed!r} must be an integer")
        self.ood_domains = opts.get("ood_domains", [])
        if not isinstance(self.ood_domains, list):
            problems.append("dataset.options.ood_domains: expected a list of domain names")
        self.class_order = opts.get("classes")
        if self.class_order is not None and not isinstance(self.class_order, list):
            problems.append("dataset.options.classes: expected a list of class names")
        return problems

    def _raise_option_problems(self, problems: list[str]) -> None:
        if problems:
            raise DatasetError(
                f"{self.name}: invalid options:\n" + "\n".join(f"  - {p}" for p in problems)
            )

    def _set_classes(self, found: list[str]) -> list[str]:
        """Use `options.classes` as the class order if given, else the sorted names found."""
        if self.class_order is None:
            return sorted(found)
        unknown = sorted(set(found) - set(map(str, self.class_order)))
        if unknown:
            raise DatasetError(
                f"{self.name}: labels {unknown[:10]} are not in "
                "dataset.options.classes; add them or remove those samples"
            )
        return [str(c) for c in self.class_order]

    def _assign_splits(
        self, labels: list[str], domains: list[str], listed_splits: list[str] | None
    ) -> np.ndarray:
        """Return each sample's split: the listed one or a seeded draw, then `ood` by domain."""
        unknown = sorted(set(self.ood_domains) - set(domains))
        if unknown:
            raise DatasetError(
                f"{self.name}: dataset.options.ood_domains lists {unknown}, which "
                f"no sample has; domains found: {sorted(set(domains))}"
            )
        if listed_splits is not None:
            split = np.array(listed_splits, dtype=object)
        else:
            groups = [f"{d}/{c}" for d, c in zip(domains, labels, strict=True)]
            val, test = holdout_masks(
                groups, [self.val_fraction, self.test_fraction], self.split_seed
            )
            split = np.full(len(labels), "train", dtype=object)
            split[val] = "val"
            split[test] = "test"
            for key, fraction, mask in (
                ("val_fraction", self.val_fraction, val),
                ("test_fraction", self.test_fraction, test),
            ):
                if fraction > 0 and not mask.any():
                    raise DatasetError(
                        f"{self.name}: dataset.options.{key}={fraction} selects no image, because "
                        f"each (domain, class) group gives floor({fraction} * n) images and the "
                        f"largest group has n={max(Counter(groups).values())}; raise the "
                        "fraction or add images"
                    )
        is_ood = np.isin(np.array(domains, dtype=object), self.ood_domains)
        split[is_ood] = "ood"
        return split

    def _finish(
        self,
        paths: list[str],
        labels: list[str],
        domains: list[str],
        sizes: list[int],
        listed_splits: list[str] | None,
    ) -> None:
        self.classes = self._set_classes(sorted(set(labels)))
        class_index = {c: i for i, c in enumerate(self.classes)}
        self._paths = paths
        self._labels = [class_index[label] for label in labels]
        self._domains = domains
        self._sizes = sizes
        self._keys = make_keys(paths)
        self._split = self._assign_splits(labels, domains, listed_splits)
        order = ["train", "val", "test", "ood"]
        present = set(self._split.tolist())
        self._splits = [s for s in order if s in present] + sorted(present - set(order))

    def splits(self) -> list[str]:
        return list(self._splits)

    def records(self, split: str) -> list[SourceRecord]:
        self.check_split(split)
        records = [
            SourceRecord(
                key=self._keys[i],
                label=self._labels[i],
                domain=self._domains[i],
                path=str(Path(self.root) / self._paths[i]),
            )
            for i in np.flatnonzero(self._split == split)
        ]
        self.log_counts(split, records)
        return records

    def fingerprint(self) -> str:
        extra = "\n".join(
            f"{p}|{self.classes[y]}|{d}|{s}"
            for p, y, d, s in zip(
                self._paths, self._labels, self._domains, self._split, strict=True
            )
        )
        return digest_entries(
            self.name,
            self.options,
            zip(self._paths, self._sizes, strict=True),
            extra=extra.encode(),
        )


class ImageFolder(CustomReader):
    """An image tree `<root>/[<split>/][<domain>/]<class>/<image>`; hidden entries are ignored."""

    name = "imagefolder"
    OPTIONS = {"split_folders", "domain_folders"}

    def __init__(self, root: str, options: dict[str, Any] | None = None):
        super().__init__(root, options)
        problems = self._parse_options()
        split_folders = self.options.get("split_folders", False)
        domain_folders = self.options.get("domain_folders", False)
        for key, value in (("split_folders", split_folders), ("domain_folders", domain_folders)):
            if not isinstance(value, bool):
                problems.append(f"dataset.options.{key}: {value!r} must be true or false")
        self._raise_option_problems(problems)
        levels = ["split"] * split_folders + ["domain"] * domain_folders + ["class"]
        layout = "/".join(f"<{level}>" for level in levels) + "/<image>"
        fix = f"arrange the images as {layout} under dataset.root, or change the options"
        if not Path(root).is_dir():
            raise_layout_problems(self.name, root, ["the folder does not exist"], fix)

        rows, folders = self._walk(Path(root), levels)
        problems = self._check_class_folders(folders) if domain_folders else []
        if not rows:
            problems.append(f"no image files found in the layout {layout}")
        raise_layout_problems(self.name, root, problems, fix)
        self._finish(
            paths=[path for path, _, _ in rows],
            labels=[parts["class"] for _, parts, _ in rows],
            domains=[parts.get("domain", DEFAULT_DOMAIN) for _, parts, _ in rows],
            sizes=[size for _, _, size in rows],
            listed_splits=[parts["split"] for _, parts, _ in rows] if split_folders else None,
        )

    @staticmethod
    def _walk(root: Path, levels: list[str]):
        """List the class folders as (relative path, {level: name}) and every image in them as
        (relative path, {level: name}, size)."""
        prefixes: list[tuple[str, dict[str, str]]] = [("", {})]
        for level in levels:
            prefixes = [
                (f"{prefix}{name}/", {**parts, level: name})
                for prefix, parts in prefixes
                for name in list_subfolders(root / prefix)
            ]
        rows = [
            (f"{prefix}{name}", parts, size)
            for prefix, parts in prefixes
            for name, size in list_images(root / prefix)
        ]
        return rows, prefixes

    @staticmethod
    def _check_class_folders(folders: list[tuple[str, dict[str, str]]]) -> list[str]:
        """Check that every domain folder contains the same class folders."""
        problems = []
        classes_of: dict[str, set[str]] = {}
        for prefix, parts in folders:
            parent = prefix.rsplit("/", 2)[0]
            classes_of.setdefault(parent, set()).add(parts["class"])
        all_classes = set().union(*classes_of.values()) if classes_of else set()
        for parent, classes in sorted(classes_of.items()):
            for name in sorted(all_classes - classes):
                problems.append(
                    f"missing class folder {parent}/{name}/ (other domains have it; "
                    "every domain needs the same classes)"
                )
        return problems


class CSVManifest(CustomReader):
    """A CSV manifest with `path,label,domain` (and optionally `split`) columns."""

    name = "csv"
    OPTIONS = {"manifest"}

    def __init__(self, root: str, options: dict[str, Any] | None = None):
        super().__init__(root, options)
        problems = self._parse_options()
        manifest = self.options.get("manifest", "manifest.csv")
        if not isinstance(manifest, str):
            problems.append(f"dataset.options.manifest: {manifest!r} must be a file path")
        self._raise_option_problems(problems)
        fix = (
            "write a CSV with the columns path,label,domain[,split], paths relative to "
            "dataset.root, and set dataset.options.manifest to it"
        )
        if not Path(root).is_dir():
            raise_layout_problems(self.name, root, ["the folder does not exist"], fix)
        manifest_path = Path(root) / manifest
        frame = read_metadata_csv(
            manifest_path,
            ("path", "label", "domain"),
            self.name,
            fix,
            dtype={"path": str, "label": str, "domain": str, "split": str},
        )
        paths = [p.replace("\\", "/") for p in frame["path"]]
        problems, sizes = check_listed_files(Path(root), paths, manifest_path.name)
        repeated = sorted(p for p, n in Counter(paths).items() if n > 1)
        problems += [f"{manifest_path.name}: path {p} is listed more than once" for p in repeated]
        if "split" in frame.columns and frame["split"].isna().any():
            problems.append(
                f"{manifest_path.name}: column 'split' has empty cells; fill every "
                "row or drop the column to split at random"
            )
        raise_layout_problems(self.name, root, problems, fix)
        self._manifest_name = manifest_path.name
        self._finish(
            paths=paths,
            labels=frame["label"].tolist(),
            domains=frame["domain"].tolist(),
            sizes=sizes,
            listed_splits=frame["split"].tolist() if "split" in frame.columns else None,
        )
