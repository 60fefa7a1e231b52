"""Benchmark readers on tiny fixtures in their official layouts: splits, counts, keys, labels."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
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

from pipeline.datasets import READERS, get_reader, load_image
from schemas.sample import KEY_PATTERN

BUILDERS = {
    "rxrx1": build_rxrx1,
    "camelyon17": build_camelyon17,
    "pacs": lambda p: build_domainbed(p, "pacs", "sketch"),
    "vlcs": lambda p: build_domainbed(p, "vlcs", "Caltech101"),
    "office-home": lambda p: build_domainbed(p, "office-home", "Real World", per_class=1),
    "terra-incognita": lambda p: build_domainbed(p, "terra-incognita", "location_100"),
    "cifar10-c": build_cifar_c,
    "cifar100-c": lambda p: build_cifar_c(p, hundred=True),
    "imagenet-c": build_imagenet_c,
    "tiny-imagenet-c": build_tiny_imagenet_c,
    "fashion-mnist-subpop": build_fashion_mnist_subpop,
    "imagefolder": build_imagefolder,
    "csv": build_csv_manifest,
}


def split_counts(reader) -> dict[str, Counter]:
    return {split: Counter(r.domain for r in reader.records(split)) for split in reader.splits()}


def test_every_reader_has_a_fixture():
    assert set(BUILDERS) == set(READERS) - {"fashion-mnist"}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_reader_counts_match_fixture(name, tmp_path):
    fixture = BUILDERS[name](tmp_path)
    reader = get_reader(name, str(fixture.root), fixture.options)

    counts = split_counts(reader)

    assert reader.name == name
    assert reader.metric == "accuracy"
    assert {s: c for s, c in counts.items() if c} == fixture.expected


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_reader_keys_labels_and_images(name, tmp_path):
    fixture = BUILDERS[name](tmp_path)
    reader = get_reader(name, str(fixture.root), fixture.options)
    records = [r for split in reader.splits() for r in reader.records(split)]

    keys = [r.key for r in records]
    assert len(set(keys)) == len(keys)
    assert all(KEY_PATTERN.match(k) for k in keys), [k for k in keys if not KEY_PATTERN.match(k)]
    assert all(0 <= r.label < len(reader.classes) for r in records)
    unreadable = 0
    for record in records:
        try:
            image = load_image(record)
        except OSError:
            unreadable += 1
            continue
        assert image.dtype == np.uint8
        assert image.ndim in (2, 3)
    assert unreadable == fixture.unreadable


def test_reader_logs_counts_per_domain(tmp_path, caplog):
    fixture = build_rxrx1(tmp_path)
    reader = get_reader("rxrx1", str(fixture.root))

    with caplog.at_level(logging.INFO, logger="pipeline.datasets.base"):
        reader.records("test")

    assert "rxrx1/test: 12 samples; per domain: {'U2OS-04': 12}" in caplog.text


def test_fingerprint_changes_with_file_list(tmp_path):
    fixture = build_domainbed(tmp_path, "pacs", "sketch")
    before = get_reader("pacs", str(fixture.root), fixture.options).fingerprint()
    again = get_reader("pacs", str(fixture.root), fixture.options).fingerprint()
    (fixture.root / "photo" / "dog" / "pic_000.jpg").unlink()
    after = get_reader("pacs", str(fixture.root), fixture.options).fingerprint()

    assert before == again
    assert before != after


def test_rxrx1_classes_and_labels(tmp_path):
    fixture = build_rxrx1(tmp_path)
    reader = get_reader("rxrx1", str(tmp_path))  # the parent of rxrx1_v1.0, as WILDS takes it

    assert len(reader.classes) == 1139
    assert reader.classes[17] == "s20894"
    assert reader.classes[1] == "sirna_id_1"
    labels = Counter(r.label for r in reader.records("train"))
    assert labels == {0: 4, 17: 4, 1138: 4}
    record = reader.records("id_test")[0]
    assert record.path.endswith("images/HEPG2-01/Plate1/B02_s2.png")
    assert record.key == "HEPG2-01_1_B02_2"
    assert fixture.root.name == "rxrx1_v1.0"


def test_camelyon17_paths_use_zero_padded_patients(tmp_path):
    build_camelyon17(tmp_path)
    reader = get_reader("camelyon17", str(tmp_path / "camelyon17_v1.0"))

    record = reader.records("train")[0]

    assert reader.classes == ["normal", "tumor"]
    assert record.path.endswith(
        "patches/patient_004_node_4/patch_patient_004_node_4_x_3328_y_21792.png"
    )
    assert record.label == 1
    assert record.domain == "center_0"


def test_camelyon17_accepts_unpadded_patients(tmp_path):
    fixture = build_camelyon17(tmp_path)
    metadata = fixture.root / "metadata.csv"
    metadata.write_text(metadata.read_text().replace(",004,", ",4,"))

    reader = get_reader("camelyon17", str(fixture.root))

    assert split_counts(reader)["train"] == fixture.expected["train"]


def test_domainbed_ignores_hidden_entries(tmp_path):
    fixture = build_domainbed(tmp_path, "pacs", "sketch")
    reader = get_reader("pacs", str(fixture.root), fixture.options)

    records = [r for split in reader.splits() for r in reader.records(split)]

    assert reader.classes == ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
    assert not any("/." in r.path for r in records)
    assert {r.domain for r in reader.records("test")} == {"sketch"}


def test_domainbed_holdout_is_seeded(tmp_path):
    fixture = build_domainbed(tmp_path, "vlcs", "SUN09", per_class=3)
    first = get_reader("vlcs", str(fixture.root), fixture.options).records("id_val")
    again = get_reader("vlcs", str(fixture.root), fixture.options).records("id_val")
    other = get_reader("vlcs", str(fixture.root), {**fixture.options, "split_seed": 1}).records(
        "id_val"
    )

    assert [r.key for r in first] == [r.key for r in again]
    assert [r.key for r in first] != [r.key for r in other]


def test_office_home_keys_slug_the_space(tmp_path):
    fixture = build_domainbed(tmp_path, "office-home", "Art", per_class=1)
    reader = get_reader("office-home", str(fixture.root), fixture.options)

    domains = {r.domain: r.key for r in reader.records("train")}

    assert domains["Real World"].startswith("Real_World-")


def test_cifar10c_images_match_npy_blocks(tmp_path):
    fixture = build_cifar_c(tmp_path)
    reader = get_reader("cifar10-c", str(fixture.root), fixture.options)
    fog = np.load(fixture.root / "fog.npy")

    records = {r.key: r for r in reader.records("corrupted")}

    assert reader.classes[0] == "airplane"
    assert len(reader.classes) == 10
    np.testing.assert_array_equal(records["fog-s3-00001"].image, fog[2 * 3 + 1])
    assert records["fog-s3-00001"].domain == "fog/3"
    assert records["fog-s3-00001"].label == 10 % 10


def test_cifar_binary_channel_planes(tmp_path):
    fixture = build_cifar_c(tmp_path)
    raw = np.fromfile(tmp_path / "cifar-10-batches-bin" / "test_batch.bin", dtype=np.uint8)
    reader = get_reader("cifar10-c", str(fixture.root), fixture.options)

    image = reader.records("test")[0].image

    assert reader.records("test")[0].label == raw[0]
    np.testing.assert_array_equal(image[:, :, 0].ravel(), raw[1:1025])
    np.testing.assert_array_equal(image[:, :, 2].ravel(), raw[2049:3073])


def test_cifar100c_uses_fine_labels(tmp_path):
    fixture = build_cifar_c(tmp_path, hundred=True)
    reader = get_reader("cifar100-c", str(fixture.root), fixture.options)

    assert len(reader.classes) == 100
    assert [r.label for r in reader.records("train")] == list(range(6))


def test_corruption_subset_option(tmp_path):
    fixture = build_cifar_c(tmp_path)
    options = {**fixture.options, "corruptions": ["fog", "contrast"], "severities": [5, 1]}
    reader = get_reader("cifar10-c", str(fixture.root), options)

    domains = Counter(r.domain for r in reader.records("corrupted"))

    assert domains == {"fog/1": 3, "fog/5": 3, "contrast/1": 3, "contrast/5": 3}


def test_tiny_imagenet_val_labels_from_annotations(tmp_path):
    fixture = build_tiny_imagenet_c(tmp_path)
    reader = get_reader("tiny-imagenet-c", str(fixture.root), fixture.options)

    val = {r.path.rsplit("/", 1)[1]: reader.classes[r.label] for r in reader.records("val")}

    assert reader.classes == sorted(reader.classes)
    assert val["val_2.JPEG"] == "n01629819"


def test_subpop_labels_are_superclasses(tmp_path):
    fixture = build_fashion_mnist_subpop(tmp_path)
    reader = get_reader("fashion-mnist-subpop", str(fixture.root))

    labels = {r.domain: reader.classes[r.label] for r in reader.records("target_test")}

    assert reader.classes == ["tops", "footwear", "other"]
    assert labels == {"coat": "tops", "shirt": "tops", "ankle_boot": "footwear", "dress": "other"}


def test_subpop_target_option(tmp_path):
    fixture = build_fashion_mnist_subpop(tmp_path)
    reader = get_reader(
        "fashion-mnist-subpop",
        str(fixture.root),
        {"target_subclasses": ["Pullover", "Sneaker", "Bag"]},
    )

    domains = set(Counter(r.domain for r in reader.records("target_train")))

    assert domains == {"pullover", "sneaker", "bag"}


def test_imagefolder_random_split(tmp_path):
    fixture = build_imagefolder(tmp_path)
    train = fixture.root / "train"
    reader = get_reader(
        "imagefolder",
        str(train),
        {"domain_folders": True, "test_fraction": 0.34, "val_fraction": 0.34},
    )

    counts = split_counts(reader)

    # Each (domain, class) group has 3 images: floor(0.34 * 3) = 1 each for val and test.
    assert counts == {
        "train": {"day": 2, "night": 2},
        "val": {"day": 2, "night": 2},
        "test": {"day": 2, "night": 2},
    }


def test_csv_without_split_column(tmp_path):
    fixture = build_csv_manifest(tmp_path)
    manifest = fixture.root / "manifest.csv"
    rows = [line.rsplit(",", 1)[0] for line in manifest.read_text().splitlines()]
    manifest.write_text("\n".join(rows) + "\n")

    reader = get_reader(
        "csv", str(fixture.root), {"test_fraction": 0.5, "ood_domains": ["hospital_c"]}
    )
    counts = split_counts(reader)

    assert reader.classes == ["benign", "malignant"]
    assert counts == {
        "train": {"hospital_a": 4, "hospital_b": 2},
        "test": {"hospital_a": 4, "hospital_b": 2},
        "ood": {"hospital_c": 4},
    }


def test_corruption_names_match_generators():
    from pipeline.datasets.corruptions import BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS
    from pipeline.ood import BENCHMARK_CORRUPTIONS as GENERATOR_BENCHMARK
    from pipeline.ood import EXTRA_CORRUPTIONS as GENERATOR_EXTRA

    assert BENCHMARK_CORRUPTIONS == GENERATOR_BENCHMARK
    assert EXTRA_CORRUPTIONS == GENERATOR_EXTRA
