"""Fashion-MNIST subpopulation shift in the style of BREEDS: superclasses with held-out subclasses.

The ten Fashion-MNIST classes are grouped into three superclasses, and each superclass's
subclasses are divided between a source and a target side. A model learns the superclasses from
source subclasses only and is tested on the unseen target subclasses, as BREEDS does with
ImageNet subtrees.

| superclass | source subclasses       | target subclasses |
|------------|-------------------------|-------------------|
| tops       | T-shirt/top, Pullover   | Coat, Shirt       |
| footwear   | Sandal, Sneaker         | Ankle boot        |
| other      | Trouser, Bag            | Dress             |

Splits: `source_train` and `source_test` (source subclasses from the training and test files)
and `target_train` and `target_test` (target subclasses from the same files). The domain is the
subclass name, so evaluation reports accuracy per subclass. `dataset.options.target_subclasses`
replaces the target column of the table.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from pipeline.datasets.base import DatasetReader, SourceRecord
from pipeline.datasets.fashion_mnist import CLASSES, FashionMNIST
from schemas.errors import DatasetError

__all__ = ["FashionMNISTSubpop", "SUPERCLASSES"]

SUPERCLASSES = {
    "tops": ("T-shirt/top", "Pullover", "Coat", "Shirt"),
    "footwear": ("Sandal", "Sneaker", "Ankle boot"),
    "other": ("Trouser", "Bag", "Dress"),
}
DEFAULT_TARGETS = ("Coat", "Shirt", "Ankle boot", "Dress")
OPTIONS = {"target_subclasses"}

# Domain names: the subclass names with '/' and spaces replaced, as evaluation reads them.
DOMAINS = {
    name: name.lower().replace("/", "_").replace(" ", "_").replace("-", "") for name in CLASSES
}


class FashionMNISTSubpop(DatasetReader):
    """Fashion-MNIST superclasses (tops, footwear, other) with held-out target subclasses."""

    name = "fashion-mnist-subpop"
    metric = "accuracy"

    def __init__(self, root: str, options=None):
        super().__init__(root, options)
        targets = self._parse_options()
        self._base = FashionMNIST(root)
        self.classes = list(SUPERCLASSES)
        self.targets = targets
        superclass_of = {sub: i for i, subs in enumerate(SUPERCLASSES.values()) for sub in subs}
        # Indexed by the Fashion-MNIST label.
        self._superclass = np.array([superclass_of[c] for c in CLASSES])
        self._is_target = np.array([c in targets for c in CLASSES])

    def _parse_options(self) -> list[str]:
        problems = [
            f"dataset.options.{key}: unknown option; allowed: {', '.join(sorted(OPTIONS))}"
            for key in sorted(set(self.options) - OPTIONS)
        ]
        targets = self.options.get("target_subclasses", list(DEFAULT_TARGETS))
        if not isinstance(targets, list):
            targets = []
            problems.append("dataset.options.target_subclasses: expected a list of class names")
        for name in targets:
            if name not in CLASSES:
                problems.append(
                    f"dataset.options.target_subclasses: {name!r} is not a "
                    f"Fashion-MNIST class; allowed: {', '.join(CLASSES)}"
                )
        for superclass, subclasses in SUPERCLASSES.items():
            source = [s for s in subclasses if s not in targets]
            target = [s for s in subclasses if s in targets]
            if not source or not target:
                problems.append(
                    f"dataset.options.target_subclasses: superclass {superclass!r} "
                    f"needs at least one source and one target subclass of "
                    f"{list(subclasses)}"
                )
        if problems:
            raise DatasetError(
                f"{self.name}: invalid options:\n" + "\n".join(f"  - {p}" for p in problems)
            )
        return list(targets)

    def splits(self) -> list[str]:
        return ["source_train", "source_test", "target_train", "target_test"]

    def records(self, split: str) -> list[SourceRecord]:
        self.check_split(split)
        side, file_split = split.split("_")
        images, labels = self._base._arrays(file_split)
        keep = self._is_target[labels] == (side == "target")
        records = [
            SourceRecord(
                key=f"{file_split}-{i:06d}",
                label=int(self._superclass[labels[i]]),
                domain=DOMAINS[CLASSES[labels[i]]],
                image=images[i],
            )
            for i in np.flatnonzero(keep)
        ]
        self.log_counts(split, records)
        return records

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.name.encode())
        digest.update(self._base.fingerprint().encode())
        digest.update(json.dumps(sorted(self.targets)).encode())
        return digest.hexdigest()
