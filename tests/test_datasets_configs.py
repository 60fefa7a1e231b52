"""The benchmark configs under configs/: each loads, and its reader accepts it on a fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_datasets import (
    build_camelyon17,
    build_cifar_c,
    build_csv_manifest,
    build_domainbed,
    build_fashion_mnist_subpop,
    build_imagefolder,
    build_imagenet_c,
    build_rxrx1,
    build_tiny_imagenet_c,
)

from pipeline.datasets import READERS, get_reader
from schemas.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# Config name -> (fixture builder, folder under the fixture root that dataset.root points to).
FIXTURES = {
    "rxrx1": (build_rxrx1, "."),
    "camelyon17": (build_camelyon17, "."),
    "pacs": (lambda p: build_domainbed(p, "pacs", "sketch"), "."),
    "vlcs": (lambda p: build_domainbed(p, "vlcs", "Caltech101"), "."),
    "office-home": (lambda p: build_domainbed(p, "office-home", "Art", per_class=1), "."),
    "terra-incognita": (lambda p: build_domainbed(p, "terra-incognita", "location_100"), "."),
    "cifar10-c": (build_cifar_c, "."),
    "cifar100-c": (lambda p: build_cifar_c(p, hundred=True), "."),
    "imagenet-c": (build_imagenet_c, "."),
    "tiny-imagenet-c": (build_tiny_imagenet_c, "."),
    "fashion-mnist-subpop": (build_fashion_mnist_subpop, "."),
    # The config reads <domain>/<class>/<image>, one level below the fixture's split folders.
    "imagefolder": (lambda p: build_imagefolder(p, train_per_class=5), "train"),
    "csv": (build_csv_manifest, "."),
}


def test_every_new_reader_has_a_config():
    assert set(FIXTURES) == set(READERS) - {"fashion-mnist"}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_config_splits_exist_in_reader(name, tmp_path):
    path = CONFIGS / f"{name}.yaml"
    cfg = load_config(path)
    build, subfolder = FIXTURES[name]
    fixture = build(tmp_path)
    # Only the clean data folder moves to the fixture; every other option is the config's own.
    options = dict(cfg.dataset.options)
    if "clean_root" in options:
        options["clean_root"] = fixture.options["clean_root"]

    reader = get_reader(cfg.dataset.name, str(fixture.root / subfolder), options)

    assert cfg.name == name
    assert cfg.dataset.name == name
    assert path.read_text().startswith(f"# make precompute DATASET={name}")
    ds = cfg.dataset
    roles = [ds.id_train_split, ds.id_test_split, *ds.ood_val_splits, *ds.ood_test_splits]
    if ds.id_val_split:
        roles.append(ds.id_val_split)
    # One reader split in two roles would give two stored samples the same key.
    assert len(set(roles)) == len(roles)
    for split in roles:
        assert split in reader.splits()
        assert reader.records(split), f"{name}: split {split} is empty on the fixture"
    assert cfg.ood.test.corruptions == []
