"""Layout validation of the benchmark readers: every problem is named, with its file or folder."""

from __future__ import annotations

import shutil

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

from pipeline.datasets import get_reader
from schemas.errors import DatasetError


def drop_column(path, column):
    lines = path.read_text().splitlines()
    index = lines[0].split(",").index(column)
    path.write_text(
        "\n".join(
            ",".join(c for i, c in enumerate(line.split(",")) if i != index) for line in lines
        )
        + "\n"
    )


def test_unknown_reader_name():
    with pytest.raises(DatasetError, match=r"dataset.name 'rxrx2' is unknown; available: .*rxrx1"):
        get_reader("rxrx2", "/nonexistent")


def test_rxrx1_lists_missing_file_and_folder(tmp_path):
    (tmp_path / "rxrx1_v1.0").mkdir()

    with pytest.raises(DatasetError) as error:
        get_reader("rxrx1", str(tmp_path / "rxrx1_v1.0"))

    assert "missing folder images/" in str(error.value)
    assert "missing file metadata.csv" in str(error.value)
    assert "Fix: download rxrx1_v1.0" in str(error.value)


def test_rxrx1_lists_every_missing_column(tmp_path):
    fixture = build_rxrx1(tmp_path)
    drop_column(fixture.root / "metadata.csv", "sirna_id")
    drop_column(fixture.root / "metadata.csv", "dataset")

    with pytest.raises(DatasetError) as error:
        get_reader("rxrx1", str(fixture.root))

    assert "metadata.csv: missing column 'dataset'" in str(error.value)
    assert "metadata.csv: missing column 'sirna_id'" in str(error.value)


def test_rxrx1_missing_plate_and_image(tmp_path):
    fixture = build_rxrx1(tmp_path)
    shutil.rmtree(fixture.root / "images" / "RPE-03" / "Plate3")
    (fixture.root / "images" / "U2OS-04" / "Plate1" / "C05_s2.png").unlink()

    with pytest.raises(DatasetError) as error:
        get_reader("rxrx1", str(fixture.root))

    assert "missing folder images/RPE-03/Plate3/ (6 file(s) listed in metadata.csv)" in str(
        error.value
    )
    assert "missing file images/U2OS-04/Plate1/C05_s2.png (listed in metadata.csv)" in str(
        error.value
    )


def test_rxrx1_rejects_unknown_dataset_value(tmp_path):
    fixture = build_rxrx1(tmp_path)
    metadata = fixture.root / "metadata.csv"
    metadata.write_text(metadata.read_text().replace(",test,", ",holdout,"))

    with pytest.raises(DatasetError, match=r"column 'dataset' has values \['holdout'\]"):
        get_reader("rxrx1", str(fixture.root))


def test_camelyon17_names_padded_patch_folder(tmp_path):
    fixture = build_camelyon17(tmp_path)
    shutil.rmtree(fixture.root / "patches" / "patient_004_node_4")

    with pytest.raises(DatasetError, match=r"missing folder patches/patient_004_node_4/ \(4 file"):
        get_reader("camelyon17", str(fixture.root))


def test_camelyon17_rejects_unknown_center(tmp_path):
    fixture = build_camelyon17(tmp_path)
    metadata = fixture.root / "metadata.csv"
    lines = metadata.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 2)[0] + ",5,0"
    metadata.write_text("\n".join(lines) + "\n")

    with pytest.raises(DatasetError, match=r"column 'center' has values \[5\]"):
        get_reader("camelyon17", str(fixture.root))


def test_domainbed_missing_domain(tmp_path):
    fixture = build_domainbed(tmp_path, "pacs", "sketch")
    shutil.rmtree(fixture.root / "cartoon")

    with pytest.raises(DatasetError, match=r"missing domain folder cartoon/"):
        get_reader("pacs", str(fixture.root), fixture.options)


def test_domainbed_class_lists_must_agree(tmp_path):
    fixture = build_domainbed(tmp_path, "pacs", "sketch")
    shutil.rmtree(fixture.root / "photo" / "horse")
    shutil.rmtree(fixture.root / "sketch" / "dog")

    with pytest.raises(DatasetError) as error:
        get_reader("pacs", str(fixture.root), fixture.options)

    assert "missing class folder photo/horse/" in str(error.value)
    assert "missing class folder sketch/dog/" in str(error.value)


def test_domainbed_class_count(tmp_path):
    fixture = build_domainbed(tmp_path, "vlcs", "VOC2007")
    for domain in ("Caltech101", "LabelMe", "SUN09", "VOC2007"):
        shutil.rmtree(fixture.root / domain / "car")

    with pytest.raises(DatasetError, match=r"found 4 class folders per domain .*vlcs has 5"):
        get_reader("vlcs", str(fixture.root), fixture.options)


def test_domainbed_test_domain_option(tmp_path):
    fixture = build_domainbed(tmp_path, "terra-incognita", "location_38")

    with pytest.raises(DatasetError, match=r"test_domain: 'L38' is not a domain .*location_38"):
        get_reader("terra-incognita", str(fixture.root), {"test_domain": "L38"})
    with pytest.raises(DatasetError, match=r"holdout_fraction: 1.5 must be in \[0, 1\)"):
        get_reader(
            "terra-incognita",
            str(fixture.root),
            {"test_domain": "location_38", "holdout_fraction": 1.5},
        )


def test_cifar_c_severity_blocks_must_repeat(tmp_path):
    fixture = build_cifar_c(tmp_path)
    labels = np.load(fixture.root / "labels.npy")
    labels[3 * 3] = (labels[3 * 3] + 1) % 10
    np.save(fixture.root / "labels.npy", labels)

    with pytest.raises(DatasetError, match=r"severity block 4 differs from block 1"):
        get_reader("cifar10-c", str(fixture.root), fixture.options)


def test_cifar_c_block_count(tmp_path):
    fixture = build_cifar_c(tmp_path)
    np.save(fixture.root / "snow.npy", np.zeros((12, 32, 32, 3), dtype=np.uint8))
    np.save(fixture.root / "fog.npy", np.zeros((15, 32, 32), dtype=np.uint8))

    with pytest.raises(DatasetError) as error:
        get_reader("cifar10-c", str(fixture.root), fixture.options)

    assert "snow.npy has dtype uint8 and shape (12, 32, 32, 3); expected uint8 (15, 32" in str(
        error.value
    )
    assert "fog.npy has dtype uint8 and shape (15, 32, 32)" in str(error.value)


def test_cifar_c_labels_length(tmp_path):
    fixture = build_cifar_c(tmp_path)
    np.save(fixture.root / "labels.npy", np.zeros(14, dtype=np.uint8))

    with pytest.raises(DatasetError, match=r"labels.npy has shape \(14,\); expected \(15,\)"):
        get_reader("cifar10-c", str(fixture.root), fixture.options)


def test_cifar_c_labels_must_match_clean_test(tmp_path):
    fixture = build_cifar_c(tmp_path)
    np.save(fixture.root / "labels.npy", np.zeros(15, dtype=np.uint8))

    with pytest.raises(DatasetError, match=r"does not match the labels of test_batch.bin"):
        get_reader("cifar10-c", str(fixture.root), fixture.options)


def test_cifar_c_missing_files_and_clean_root(tmp_path):
    fixture = build_cifar_c(tmp_path, corruptions=("fog",))
    (tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin").unlink()

    with pytest.raises(DatasetError) as error:
        get_reader("cifar10-c", str(fixture.root), fixture.options)

    assert "missing file" in str(error.value)
    assert "CIFAR-10-C/gaussian_noise.npy" in str(error.value)
    assert "cifar-10-batches-bin/data_batch_3.bin" in str(error.value)
    with pytest.raises(DatasetError, match=r"dataset.options.clean_root: missing"):
        get_reader("cifar10-c", str(fixture.root))


def test_corruption_options(tmp_path):
    fixture = build_cifar_c(tmp_path)

    with pytest.raises(DatasetError) as error:
        get_reader(
            "cifar10-c",
            str(fixture.root),
            {**fixture.options, "corruptions": ["rain"], "severities": [0, 6], "size": 1},
        )

    assert "'rain' is not a corruption" in str(error.value)
    assert "severities: [0, 6] must be" in str(error.value)
    assert "dataset.options.size: unknown option" in str(error.value)


def test_imagenet_c_missing_severity_and_class(tmp_path):
    fixture = build_imagenet_c(tmp_path)
    shutil.rmtree(fixture.root / "fog" / "4")
    shutil.rmtree(fixture.root / "snow" / "2" / "n01629819")

    with pytest.raises(DatasetError) as error:
        get_reader("imagenet-c", str(fixture.root), fixture.options)

    assert "missing folder fog/4/" in str(error.value)
    assert "missing class folder snow/2/n01629819/" in str(error.value)


def test_imagenet_c_clean_val_classes(tmp_path):
    fixture = build_imagenet_c(tmp_path)
    shutil.rmtree(tmp_path / "imagenet" / "val" / "n02099601")

    with pytest.raises(DatasetError, match=r"missing class folder val/n02099601/"):
        get_reader("imagenet-c", str(fixture.root), fixture.options)


def test_tiny_imagenet_bad_annotation(tmp_path):
    fixture = build_tiny_imagenet_c(tmp_path)
    path = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    path.write_text(path.read_text() + "val_9.JPEG\tn99999999\t0\t0\t7\t7\n")

    with pytest.raises(DatasetError, match=r"val_annotations.txt line 7: expected"):
        get_reader("tiny-imagenet-c", str(fixture.root), fixture.options)


def test_subpop_target_needs_both_sides(tmp_path):
    fixture = build_fashion_mnist_subpop(tmp_path)

    with pytest.raises(DatasetError) as error:
        get_reader(
            "fashion-mnist-subpop",
            str(fixture.root),
            {"target_subclasses": ["Sandal", "Sneaker", "Ankle boot", "Jacket"]},
        )

    assert "'Jacket' is not a Fashion-MNIST class" in str(error.value)
    assert "superclass 'footwear' needs at least one source and one target" in str(error.value)
    assert "superclass 'tops' needs" in str(error.value)


def test_csv_missing_columns_and_files(tmp_path):
    fixture = build_csv_manifest(tmp_path)
    (fixture.root / "scans" / "hospital_b" / "train_benign_1.png").unlink()

    with pytest.raises(DatasetError, match=r"missing file scans/hospital_b/train_benign_1.png"):
        get_reader("csv", str(fixture.root), fixture.options)

    drop_column(fixture.root / "manifest.csv", "domain")
    with pytest.raises(DatasetError, match=r"manifest.csv: missing column 'domain'"):
        get_reader("csv", str(fixture.root), fixture.options)


def test_csv_missing_manifest(tmp_path):
    fixture = build_csv_manifest(tmp_path)

    with pytest.raises(DatasetError, match=r"missing file labels.csv"):
        get_reader("csv", str(fixture.root), {"manifest": "labels.csv"})


def test_custom_split_options(tmp_path):
    fixture = build_imagefolder(tmp_path)

    with pytest.raises(DatasetError) as error:
        get_reader(
            "imagefolder",
            str(fixture.root),
            {"test_fraction": 1.2, "domain_folders": "yes", "holdout": 0.1},
        )

    assert "test_fraction: 1.2 must be in [0, 1)" in str(error.value)
    assert "domain_folders: 'yes' must be true or false" in str(error.value)
    assert "dataset.options.holdout: unknown option" in str(error.value)
    with pytest.raises(DatasetError, match=r"ood_domains lists \['dusk'\]"):
        get_reader("imagefolder", str(fixture.root), {**fixture.options, "ood_domains": ["dusk"]})


def test_imagefolder_domains_need_same_classes(tmp_path):
    fixture = build_imagefolder(tmp_path)
    shutil.rmtree(fixture.root / "test" / "night" / "dog")

    with pytest.raises(DatasetError, match=r"missing class folder test/night/dog/"):
        get_reader("imagefolder", str(fixture.root), fixture.options)


def test_custom_fraction_too_small_for_groups(tmp_path):
    fixture = build_imagefolder(tmp_path)

    with pytest.raises(DatasetError, match=r"test_fraction=0.2 selects no image.*group has n=3"):
        get_reader("imagefolder", str(fixture.root / "train"), {"domain_folders": True})
