"""Builders of tiny benchmark data sets in their official on-disk layouts, for the reader tests.

Each builder writes a few small images plus the metadata files with the real names and columns,
and returns a `Fixture` whose `expected` counts per split and domain come from the builder's own
bookkeeping, not from the reader under test.
"""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.ood import BENCHMARK_CORRUPTIONS

CORRUPTIONS_15 = BENCHMARK_CORRUPTIONS
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
VLCS_CLASSES = ("bird", "car", "chair", "dog", "person")
TERRA_CLASSES = (
    "bird",
    "bobcat",
    "cat",
    "coyote",
    "dog",
    "empty",
    "opossum",
    "rabbit",
    "raccoon",
    "squirrel",
)
# Placeholder names: the reader checks OfficeHome's class count (65), not the names.
OFFICE_HOME_CLASSES = tuple(f"Class_{i:02d}" for i in range(65))
DOMAINBED = {
    "pacs": (("art_painting", "cartoon", "photo", "sketch"), PACS_CLASSES),
    "vlcs": (("Caltech101", "LabelMe", "SUN09", "VOC2007"), VLCS_CLASSES),
    "office-home": (("Art", "Clipart", "Product", "Real World"), OFFICE_HOME_CLASSES),
    "terra-incognita": (
        ("location_100", "location_38", "location_43", "location_46"),
        TERRA_CLASSES,
    ),
}


@dataclass
class Fixture:
    """A built data set: where it is, the reader options it needs, and its true counts."""

    name: str
    root: Path
    options: dict[str, Any] = field(default_factory=dict)
    expected: dict[str, Counter] = field(default_factory=dict)
    """Samples per split and domain, as the builder wrote them."""
    unreadable: int = 0
    """Listed image files that hold garbage bytes."""

    def count(self, split: str, domain: str, n: int = 1) -> None:
        self.expected.setdefault(split, Counter())[domain] += n


def write_image(path: Path, seed: int, size: int = 8) -> int:
    """Write a small random RGB image (format from the suffix) and return its byte size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.stat().st_size


def write_garbage(path: Path) -> None:
    """Write a file with an image name but bytes no decoder accepts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image")


# --- WILDS -----------------------------------------------------------------------------------


def build_rxrx1(parent: Path) -> Fixture:
    """`rxrx1_v1.0/` with metadata.csv and images/<experiment>/Plate<plate>/<well>_s<site>.png."""
    root = parent / "rxrx1_v1.0"
    fixture = Fixture("rxrx1", root)
    experiments = {"HEPG2-01": "train", "HUVEC-02": "train", "RPE-03": "val", "U2OS-04": "test"}
    sirnas = {0: "s21721", 17: "s20894", 1138: "EMPTY"}
    rows = []
    seed = 0
    for experiment, dataset in experiments.items():
        cell_type = experiment.split("-")[0]
        for plate in (1, 3):
            for well, sirna_id in (("B02", 0), ("C05", 17), ("D11", 1138)):
                for site in (1, 2):
                    seed += 1
                    write_image(
                        root / "images" / experiment / f"Plate{plate}" / f"{well}_s{site}.png", seed
                    )
                    rows.append(
                        f"{experiment}_{plate}_{well}_{site},{experiment}_{plate}_{well},"
                        f"{cell_type},{dataset},{experiment},{plate},{well},{site},treatment,"
                        f"{sirnas[sirna_id]},{sirna_id}"
                    )
                    split = dataset
                    if dataset == "train":
                        split = "train" if site == 1 else "id_test"
                    fixture.count(split, experiment)
    header = "site_id,well_id,cell_type,dataset,experiment,plate,well,site,well_type,sirna,sirna_id"
    (root / "metadata.csv").write_text("\n".join([header] + rows) + "\n")
    return fixture


CAMELYON_SLIDES = {
    # patient: (node, center); centers are the 0-based codes of the metadata.
    4: (4, 0),
    21: (2, 1),
    42: (0, 2),
    64: (1, 3),
    88: (3, 4),
}


def build_camelyon17(parent: Path, garbage: bool = True) -> Fixture:
    """`camelyon17_v1.0/` with metadata.csv and patches/patient_XXX_node_N/patch_..._x_X_y_Y.png.

    One listed patch of the training split contains garbage bytes when `garbage` is set.
    """
    root = parent / "camelyon17_v1.0"
    fixture = Fixture("camelyon17", root)
    rows = []
    index = 0
    for patient, (node, center) in CAMELYON_SLIDES.items():
        slide = f"patient_{patient:03d}_node_{node}"
        for i, (x, y, tumor, split_code) in enumerate(
            ((3328, 21792, 1, 0), (3360, 21792, 0, 0), (3392, 21824, 1, 1), (3424, 22016, 0, 0))
        ):
            path = root / "patches" / slide / f"patch_{slide}_x_{x}_y_{y}.png"
            if garbage and center == 0 and i == 1:
                write_garbage(path)
                fixture.unreadable += 1
            else:
                write_image(path, seed=index, size=12)
            rows.append(
                f"{index},{patient:03d},{node},{x},{y},{tumor},{patient * 5 + node},"
                f"{center},{split_code}"
            )
            index += 1
            if center == 1:
                split = "val"
            elif center == 2:
                split = "test"
            else:
                split = "train" if split_code == 0 else "id_val"
            fixture.count(split, f"center_{center}")
    header = ",patient,node,x_coord,y_coord,tumor,slide,center,split"
    (root / "metadata.csv").write_text("\n".join([header] + rows) + "\n")
    return fixture


# --- DomainBed -------------------------------------------------------------------------------


def build_domainbed(parent: Path, name: str, test_domain: str, per_class: int = 2) -> Fixture:
    """`<root>/<domain>/<class>/<image>` with hidden folders and files that must be ignored.

    Domain i has `per_class + i` images per class, so every domain has its own count.
    """
    domains, classes = DOMAINBED[name]
    root = parent / name
    fixture = Fixture(name, root, options={"test_domain": test_domain, "holdout_fraction": 0.2})
    seed = 0
    for d, domain in enumerate(domains):
        for class_name in classes:
            for i in range(per_class + d):
                seed += 1
                suffix = ".png" if i % 2 else ".jpg"
                write_image(root / domain / class_name / f"pic_{i:03d}{suffix}", seed)
            (root / domain / class_name / ".DS_Store").write_bytes(b"\0")
        write_image(root / domain / ".ipynb_checkpoints" / "pic_000.jpg", seed)
        n = len(classes) * (per_class + d)
        holdout = int(0.2 * n)
        if domain == test_domain:
            fixture.count("test", domain, n - holdout)
            fixture.count("test_domain_val", domain, holdout)
        else:
            fixture.count("id_val", domain, holdout)
            fixture.count("train", domain, n - holdout)
    write_image(root / ".ipynb_checkpoints" / "dog" / "pic_000.jpg", 0)
    return fixture


# --- corruption benchmarks -------------------------------------------------------------------


def _cifar_records(labels: list[list[int]], seed: int) -> bytes:
    """CIFAR binary records: label bytes, then the R, G and B planes of a 32x32 image."""
    rng = np.random.default_rng(seed)
    out = bytearray()
    for label_bytes in labels:
        out += bytes(label_bytes)
        out += rng.integers(0, 256, 3 * 32 * 32, dtype=np.uint8).tobytes()
    return bytes(out)


def build_cifar_c(
    parent: Path,
    hundred: bool = False,
    test_size: int = 3,
    corruptions: tuple[str, ...] = CORRUPTIONS_15,
) -> Fixture:
    """CIFAR-10-C (or CIFAR-100-C) as `.npy` files plus the clean binary CIFAR release."""
    num_classes = 100 if hundred else 10
    c_root = parent / ("CIFAR-100-C" if hundred else "CIFAR-10-C")
    clean = parent / ("cifar-100-binary" if hundred else "cifar-10-batches-bin")
    clean.mkdir(parents=True)
    c_root.mkdir(parents=True)
    fixture = Fixture(
        "cifar100-c" if hundred else "cifar10-c", c_root, options={"clean_root": str(clean)}
    )
    test_labels = [(7 * i + 3) % num_classes for i in range(test_size)]

    def labels_of(fine: list[int]) -> list[list[int]]:
        return [[f // 5, f] if hundred else [f] for f in fine]

    train_counts = [4, 3, 4, 3, 4]
    if hundred:
        (clean / "train.bin").write_bytes(_cifar_records(labels_of(list(range(6))), 1))
        (clean / "test.bin").write_bytes(_cifar_records(labels_of(test_labels), 2))
        names = "\n".join(f"fine_{i}" for i in range(100))
        (clean / "fine_label_names.txt").write_text(names + "\n")
        (clean / "coarse_label_names.txt").write_text(
            "\n".join(f"coarse_{i}" for i in range(20)) + "\n"
        )
        fixture.count("train", "clean", 6)
    else:
        for b, count in enumerate(train_counts, start=1):
            labels = [(b + i) % 10 for i in range(count)]
            (clean / f"data_batch_{b}.bin").write_bytes(_cifar_records(labels_of(labels), b))
        (clean / "test_batch.bin").write_bytes(_cifar_records(labels_of(test_labels), 9))
        names = [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
        (clean / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
        fixture.count("train", "clean", sum(train_counts))
    fixture.count("test", "clean", test_size)

    rng = np.random.default_rng(5)
    np.save(c_root / "labels.npy", np.array(test_labels * 5, dtype=np.uint8))
    for corruption in corruptions:
        images = rng.integers(0, 256, (5 * test_size, 32, 32, 3), dtype=np.uint8)
        np.save(c_root / f"{corruption}.npy", images)
        for severity in range(1, 6):
            fixture.count("corrupted", f"{corruption}/{severity}", test_size)
    return fixture


WNIDS = ("n01443537", "n01629819", "n02099601")


def build_imagenet_c(parent: Path) -> Fixture:
    """ImageNet-C (`<corruption>/<severity>/<wnid>/*.JPEG`) plus a clean ImageNet folder."""
    clean = parent / "imagenet"
    c_root = parent / "ImageNet-C"
    fixture = Fixture("imagenet-c", c_root, options={"clean_root": str(clean)})
    seed = 0
    for c, wnid in enumerate(WNIDS):
        for i in range(2 + c):
            seed += 1
            write_image(clean / "train" / wnid / f"{wnid}_{i + 10}.JPEG", seed)
        fixture.count("train", "clean", 2 + c)
        write_image(clean / "val" / wnid / f"ILSVRC2012_val_{c + 1:08d}.JPEG", seed)
        fixture.count("val", "clean")
    for corruption in CORRUPTIONS_15:
        for severity in range(1, 6):
            for c, wnid in enumerate(WNIDS):
                seed += 1
                write_image(
                    c_root / corruption / str(severity) / wnid / f"ILSVRC2012_val_{c + 1:08d}.JPEG",
                    seed,
                )
            fixture.count("corrupted", f"{corruption}/{severity}", len(WNIDS))
    return fixture


def build_tiny_imagenet_c(parent: Path) -> Fixture:
    """Tiny-ImageNet-C plus the `tiny-imagenet-200` release it was made from."""
    clean = parent / "tiny-imagenet-200"
    c_root = parent / "Tiny-ImageNet-C"
    fixture = Fixture("tiny-imagenet-c", c_root, options={"clean_root": str(clean)})
    clean.mkdir(parents=True)
    (clean / "wnids.txt").write_text("\n".join(reversed(WNIDS)) + "\n")
    (clean / "words.txt").write_text("\n".join(f"{w}\tthing {w}" for w in WNIDS) + "\n")

    seed = 0
    annotations = []
    for c, wnid in enumerate(WNIDS):
        boxes = []
        for i in range(3):
            seed += 1
            write_image(clean / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", seed)
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t7\t7")
        (clean / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
        fixture.count("train", "clean", 3)
        for i in range(2):
            name = f"val_{2 * c + i}.JPEG"
            write_image(clean / "val" / "images" / name, seed + 100 + i)
            annotations.append(f"{name}\t{wnid}\t0\t0\t7\t7")
            fixture.count("val", "clean")
    (clean / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    write_image(clean / "test" / "images" / "test_0.JPEG", 999)

    for corruption in CORRUPTIONS_15:
        for severity in range(1, 6):
            for c, wnid in enumerate(WNIDS):
                write_image(
                    c_root / corruption / str(severity) / wnid / f"val_{2 * c}.JPEG", seed + c
                )
            fixture.count("corrupted", f"{corruption}/{severity}", len(WNIDS))
    return fixture


# --- Fashion-MNIST ---------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def build_fashion_mnist(parent: Path, train_per_class: int = 3, test_per_class: int = 2) -> Path:
    """The four gzip-compressed IDX files of Fashion-MNIST, with every class equally often."""
    root = parent / "fashion-mnist"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(10), per_class)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


SUBPOP_DOMAINS = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
SUBPOP_TARGETS = ("dress", "coat", "shirt", "ankle_boot")


def build_fashion_mnist_subpop(parent: Path) -> Fixture:
    root = build_fashion_mnist(parent)
    fixture = Fixture("fashion-mnist-subpop", root)
    for domain in SUBPOP_DOMAINS:
        side = "target" if domain in SUBPOP_TARGETS else "source"
        fixture.count(f"{side}_train", domain, 3)
        fixture.count(f"{side}_test", domain, 2)
    return fixture


# --- custom data -----------------------------------------------------------------------------


def build_imagefolder(parent: Path, train_per_class: int = 3) -> Fixture:
    """`<split>/<domain>/<class>/<image>` with a hidden checkpoint folder at every level."""
    root = parent / "my-images"
    fixture = Fixture(
        "imagefolder",
        root,
        options={"split_folders": True, "domain_folders": True, "ood_domains": ["night"]},
    )
    seed = 0
    for split, per_class in (("train", train_per_class), ("test", 2)):
        for domain in ("day", "night"):
            for class_name in ("cat", "dog"):
                for i in range(per_class):
                    seed += 1
                    write_image(root / split / domain / class_name / f"img {i}.png", seed)
                fixture.count("ood" if domain == "night" else split, domain, per_class)
            write_image(root / split / domain / ".ipynb_checkpoints" / "x.png", seed)
    write_image(root / ".ipynb_checkpoints" / "day" / "cat" / "x.png", 0)
    return fixture


def build_csv_manifest(parent: Path) -> Fixture:
    """A manifest `manifest.csv` with path,label,domain,split, where one listed file is garbage."""
    root = parent / "csv-data"
    fixture = Fixture("csv", root, options={"manifest": "manifest.csv"})
    lines = ["path,label,domain,split"]
    seed = 0
    for domain, split in (
        ("hospital_a", "train"),
        ("hospital_b", "train"),
        ("hospital_a", "test"),
        ("hospital_c", "ood"),
    ):
        for label in ("benign", "malignant"):
            for i in range(2):
                seed += 1
                relative = f"scans/{domain}/{split}_{label}_{i}.png"
                if seed == 3:
                    write_garbage(root / relative)
                    fixture.unreadable += 1
                else:
                    write_image(root / relative, seed)
                lines.append(f"{relative},{label},{domain},{split}")
                fixture.count(split, domain)
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return fixture
