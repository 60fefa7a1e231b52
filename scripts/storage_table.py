"""Measure the bytes per sample and the loss error of every storage option; print the tables.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/storage_table.py [--out docs/storage_table.md]

Two configurations are measured. *Bundled*: the pretrained EfficientNet-Lite0 at 64 px with
the taps of `configs/fashion-mnist.yaml` and a linear probe over the 10 Fashion-MNIST classes,
fitted here. *ViT-B/16-sized*: a ViT with ViT-B/16's shapes (224 px, 197 tokens of 768
channels, taps after blocks 4, 8 and 12). It is randomly initialised, because no pretrained
ViT-B is available offline. Its 1000-class logits come from EfficientNet-Lite0's own ImageNet
head on the same images. Bytes are the stored array payload per sample, from the shapes
(`target_fields`).

Errors are measured against float32 storage of the same targets. The *floor* is the loss that a
student equal to the teacher would still see: T²·KL(p_stored ‖ p_full) at T = 2 for KD, and the
activation MSE divided by the mean square of the full-precision targets. *ΔKD* and *Δact* are
the relative changes |L(stored) − L(full)| / L(full) of the KD and activation losses for a
student that differs from the teacher, here the teacher applied to the images with Gaussian
pixel noise (σ = 0.1). For pooled or projected options, L(full) is the loss on the same reduction
in float32 without projection. Needs Fashion-MNIST (`make data`).
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones import build_backbone
from backbones.heads import fit_linear_probe, own_head
from benchmarks.perf_storage import teacher_outputs, write_option_shard
from pipeline.datasets import get_reader, prepare_image
from schemas import codecs
from schemas.config import BackboneConfig, StorageConfig
from schemas.sample import PNG_COMPRESS_LEVEL, LayerSpec, TargetLayout, target_fields
from shardstore.targets import layer_spec, reduce_activation

log = logging.getLogger("storage_table")

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
TEMPERATURE = 2.0
NOISE_SIGMA = 0.1


@dataclass
class Outputs:
    """Teacher outputs on clean images and on noisy ones (the stand-in student)."""

    teacher_logits: np.ndarray
    student_logits: np.ndarray
    teacher_raw: dict[str, torch.Tensor]
    student_raw: dict[str, torch.Tensor]


def fashion_images(split: str, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    reader = get_reader("fashion-mnist", FASHION_MNIST)
    records = reader.records(split)[:count]
    images = np.stack([prepare_image(r.image, size) for r in records])
    return images, np.array([r.label for r in records])


def png_size(image: np.ndarray) -> int:
    """Return the bytes of the image as PNG, the way shards store it."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return len(buffer.getvalue())


def noisy(images: np.ndarray, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, NOISE_SIGMA * 255, images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8)


def kd_loss(student: np.ndarray, target: np.ndarray) -> float:
    """T²·KL(softmax(target/T) ‖ softmax(student/T)), averaged over samples."""
    s = torch.log_softmax(torch.from_numpy(student) / TEMPERATURE, dim=1)
    t = torch.log_softmax(torch.from_numpy(target) / TEMPERATURE, dim=1)
    kl = torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean")
    return float(kl) * TEMPERATURE**2


def stored_logits(logits: np.ndarray, option: str, k: int | None) -> np.ndarray:
    if option == "float16":
        return logits.astype(np.float16).astype(np.float32)
    if option == "topk":
        return np.stack([codecs.topk_decode(*codecs.topk_encode(row, k)) for row in logits])
    return logits.copy()


def stored_values(values: np.ndarray, dtype: str) -> np.ndarray:
    """Round a batch of float32 targets through the storage dtype, one sample at a time."""
    if dtype == "float16":
        return values.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return codecs.bfloat16_decode(codecs.bfloat16_encode(values))
    if dtype == "int8":
        return np.stack([codecs.int8_decode(*codecs.int8_encode(v)) for v in values])
    return values


def layout_bytes(layout: TargetLayout) -> int:
    return sum(int(np.prod(shape)) * dtype.itemsize for _, dtype, shape in target_fields(layout))


def logit_rows(out: Outputs, options) -> list[tuple[str, int, float, float]]:
    num_classes = out.teacher_logits.shape[1]
    reference = kd_loss(out.student_logits, out.teacher_logits)
    rows = []
    for option, k in options:
        layout = TargetLayout(0, num_classes, [], logits=option, top_k=k)
        stored = stored_logits(out.teacher_logits, option, k)
        floor = kd_loss(out.teacher_logits, stored)
        delta = abs(kd_loss(out.student_logits, stored) - reference) / reference
        name = f"top-{k}" if option == "topk" else option
        rows.append((name, layout_bytes(layout), floor, delta))
    return rows


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def activation_row(out: Outputs, shapes: dict, storage: StorageConfig):
    """Return (bytes, floor, Δact) of one activation storage option, summed over taps."""
    specs = [layer_spec(name, shape, storage) for name, shape in shapes.items()]
    fields = target_fields(TargetLayout(0, 1, specs))
    total_bytes = sum(
        int(np.prod(shape)) * dtype.itemsize for name, dtype, shape in fields if name != "logits"
    )
    floor_num = floor_den = loss_stored = loss_full = 0.0
    for spec in specs:
        plain = LayerSpec(spec.name, "float32", spec.shape, reduce=spec.reduce)
        if spec.projection_from is not None:
            plain = layer_spec(spec.name, shapes[spec.name], StorageConfig(activations=spec.reduce))
        teacher = reduce_activation(out.teacher_raw[spec.name], spec)
        stored = torch.from_numpy(stored_values(teacher.numpy(), spec.dtype))
        floor_num += _mse(stored, teacher)
        floor_den += float((teacher**2).mean())
        student = reduce_activation(out.student_raw[spec.name], spec)
        loss_stored += _mse(student, stored)
        teacher_ref = reduce_activation(out.teacher_raw[spec.name], plain)
        student_ref = reduce_activation(out.student_raw[spec.name], plain)
        loss_full += _mse(student_ref, teacher_ref)
    return total_bytes, floor_num / floor_den, abs(loss_stored - loss_full) / loss_full


def bundled_outputs(count: int) -> tuple[Outputs, dict, np.ndarray]:
    config = BackboneConfig(
        arch="efficientnet_lite0", taps=["_blocks.4", "_blocks.10", "_blocks.15"]
    )
    backbone = build_backbone(config, 64).eval()
    train, labels = fashion_images("train", 2000, 64)
    with torch.no_grad():
        features = torch.cat(
            [
                backbone.forward_features(backbone.preprocess(train[i : i + 64]))
                for i in range(0, 2000, 64)
            ]
        )
    backbone.set_head(fit_linear_probe(features.numpy(), labels, 10, max_iter=500))
    images, _ = fashion_images("test", count, 64)
    teacher_logits, teacher_raw = teacher_outputs(backbone, images, config.taps)
    student_logits, student_raw = teacher_outputs(backbone, noisy(images), config.taps)
    shapes = {name: tuple(v.shape[1:]) for name, v in teacher_raw.items()}
    return Outputs(teacher_logits, student_logits, teacher_raw, student_raw), shapes, images


def vit_outputs(count: int) -> tuple[Outputs, dict, Outputs]:
    options = dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=224,
        patch_size=16,
    )
    taps = ["layers.3", "layers.7", "layers.11"]
    vit = build_backbone(
        BackboneConfig(arch="hf_vit", pretrained=False, model_options=options, taps=taps), 224
    )
    vit.set_head(torch.nn.Linear(768, 1000))  # logits are taken from the ImageNet model below
    vit.eval()
    images, _ = fashion_images("test", count, 224)
    _, teacher_raw = teacher_outputs(vit, images, taps, batch_size=8)
    _, student_raw = teacher_outputs(vit, noisy(images), taps, batch_size=8)
    lite = build_backbone(BackboneConfig(arch="efficientnet_lite0"), 224).eval()
    lite.set_head(own_head(lite, 1000))
    teacher_logits, _ = teacher_outputs(lite, images, [], batch_size=8)
    student_logits, _ = teacher_outputs(lite, noisy(images), [], batch_size=8)
    shapes = {name: tuple(v.shape[1:]) for name, v in teacher_raw.items()}
    return Outputs(teacher_logits, student_logits, teacher_raw, student_raw), shapes


CONTAINER_OPTIONS = [
    ("float32 logits, mean float16 (default)", {}),
    ("top-3 logits, mean int8", dict(logits="topk", top_k=3, activation_dtype="int8")),
    ("float32 logits, full float16", dict(activations="full")),
    (
        "top-3 logits, full int8",
        dict(logits="topk", top_k=3, activations="full", activation_dtype="int8"),
    ),
]


def container_rows(out: Outputs, shapes: dict, images: np.ndarray, folder: str) -> list[str]:
    """Write one real shard per option and return its tar and Parquet bytes per sample."""
    rows = []
    for index, (name, options) in enumerate(CONTAINER_OPTIONS):
        storage = StorageConfig(**options)
        specs = [layer_spec(tap, shape, storage) for tap, shape in shapes.items()]
        layout = TargetLayout(64, 10, specs, logits=storage.logits, top_k=storage.top_k)
        reduced = {s.name: reduce_activation(out.teacher_raw[s.name], s).numpy() for s in specs}
        tar_bytes, parquet_bytes = write_option_shard(
            folder, f"id_test-{index:05d}", layout, images, out.teacher_logits, reduced
        )
        count = len(images)
        rows.append(
            f"| {name} | {layout_bytes(layout)} | {tar_bytes // count} | {parquet_bytes // count} |"
        )
    return rows


ACTIVATION_OPTIONS = [
    ("mean, float32", dict(activation_dtype="float32")),
    ("mean, float16", dict(activation_dtype="float16")),
    ("mean, bfloat16", dict(activation_dtype="bfloat16")),
    ("mean, int8", dict(activation_dtype="int8")),
    ("cls, float16", dict(activations="cls", activation_dtype="float16")),
    ("cls, int8", dict(activations="cls", activation_dtype="int8")),
    ("full, float16", dict(activations="full", activation_dtype="float16")),
    ("full, bfloat16", dict(activations="full", activation_dtype="bfloat16")),
    ("full, int8", dict(activations="full", activation_dtype="int8")),
    ("full, projection 64, float16", dict(activations="full", projection_dim=64)),
    (
        "full, projection 64, int8",
        dict(activations="full", projection_dim=64, activation_dtype="int8"),
    ),
]


def fmt(value: float) -> str:
    return f"{value:.1e}" if value else "0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="test images, bundled backbone")
    parser.add_argument("--vit-images", type=int, default=32, help="test images, ViT-B-sized")
    parser.add_argument("--out", help="also write the Markdown tables to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    bundled, bundled_shapes, bundled_images = bundled_outputs(args.images)
    log.info("bundled backbone done after %.0f s", time.perf_counter() - start)
    vit, vit_shapes = vit_outputs(args.vit_images)
    log.info("ViT-B-sized model done after %.0f s", time.perf_counter() - start)

    lines = [
        "| logits | bytes, 10 classes | KD floor | ΔKD | bytes, 1000 classes | KD floor | ΔKD |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    small = logit_rows(
        bundled, [("float32", None), ("float16", None), ("topk", 1), ("topk", 3), ("topk", 5)]
    )
    large = logit_rows(
        vit, [("float32", None), ("float16", None), ("topk", 5), ("topk", 20), ("topk", 100)]
    )
    for (name, b1, f1, d1), (name2, b2, f2, d2) in zip(small, large, strict=True):
        lines.append(
            f"| {name} / {name2} | {b1} | {fmt(f1)} | {fmt(d1)} | {b2} | {fmt(f2)} | {fmt(d2)} |"
        )
    lines += [
        "",
        "| activations, all taps | bytes, bundled | floor | Δact | bytes, ViT-B | floor | Δact |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, options in ACTIVATION_OPTIONS:
        storage = StorageConfig(**options)
        cells = []
        for outputs, shapes in ((bundled, bundled_shapes), (vit, vit_shapes)):
            try:
                size, floor, delta = activation_row(outputs, shapes, storage)
                cells += [str(size), fmt(floor), fmt(delta)]
            except ValueError:  # `cls` on feature maps
                cells += ["–", "–", "–"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    png_bytes = np.mean([png_size(image) for image in bundled_images])
    lines += [
        "",
        f"| bundled shard, 64 px images (PNG {png_bytes:.0f} bytes) | target payload | tar | "
        "Parquet |",
        "|---|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        lines += container_rows(bundled, bundled_shapes, bundled_images, folder)
    table = "\n".join(lines)
    print(table)
    print(f"\n{args.images} + {args.vit_images} images, {time.perf_counter() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
