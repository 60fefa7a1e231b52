"""Dataset readers, looked up by the name in `dataset.name`."""

from __future__ import annotations

from typing import Any

from pipeline.datasets.base import DatasetReader, SourceRecord, load_image, prepare_image
from pipeline.datasets.cifar_c import CIFAR10C, CIFAR100C
from pipeline.datasets.custom import CSVManifest, ImageFolder
from pipeline.datasets.domainbed import PACS, VLCS, OfficeHome, TerraIncognita
from pipeline.datasets.fashion_mnist import FashionMNIST
from pipeline.datasets.fashion_mnist_subpop import FashionMNISTSubpop
from pipeline.datasets.imagenet_c import ImageNetC, TinyImageNetC
from pipeline.datasets.wilds import Camelyon17, RxRx1
from schemas.errors import DatasetError

__all__ = ["READERS", "DatasetReader", "SourceRecord", "get_reader", "load_image", "prepare_image"]

READERS: dict[str, type[DatasetReader]] = {
    reader.name: reader
    for reader in (
        FashionMNIST,
        FashionMNISTSubpop,
        RxRx1,
        Camelyon17,
        PACS,
        VLCS,
        OfficeHome,
        TerraIncognita,
        CIFAR10C,
        CIFAR100C,
        ImageNetC,
        TinyImageNetC,
        ImageFolder,
        CSVManifest,
    )
}


def get_reader(name: str, root: str, options: dict[str, Any] | None = None) -> DatasetReader:
    """Build the reader registered under `name`; it validates the layout under `root`."""
    if name not in READERS:
        raise DatasetError(
            f"dataset.name {name!r} is unknown; available: {', '.join(sorted(READERS))}"
        )
    return READERS[name](root, options)
