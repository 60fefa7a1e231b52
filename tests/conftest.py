"""Shared fixtures: offline settings, a tiny Fashion-MNIST in IDX layout, one Ray cluster."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parent.parent


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed IDX file (magic 0x0000 08 ndim)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_fashion_mnist(folder: Path, n_train: int = 60, n_test: int = 30, seed: int = 0) -> Path:
    """Write a tiny Fashion-MNIST in the original file layout; each class has its own pattern."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            row = 2 + 2 * int(label)
            images[i, row : row + 3, 4:24] = 230
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory) -> Path:
    return make_fashion_mnist(tmp_path_factory.mktemp("fashion-mnist"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session; `ray_session` reuses it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def tiny_experiment(tmp_path: Path, fashion_root: Path, **sections) -> dict:
    """A small experiment config as plain data; tests override sections as needed."""
    data = {
        "name": "tiny",
        "dataset": {"name": "fashion-mnist", "root": str(fashion_root), "image_size": 32},
        "teacher": {
            "arch": "efficientnet_lite0",
            "taps": ["_blocks.4", "_blocks.10"],
            "head": "linear_probe",
        },
        "ood": {
            "views_per_image": 2,
            "train": [
                {
                    "name": "corruption",
                    "params": {"corruptions": ["gaussian_noise", "contrast"], "severities": [1, 3]},
                }
            ],
            "test": {
                "corruptions": ["gaussian_noise", "defocus_blur"],
                "severities": [2],
                "images_per_set": 10,
            },
        },
        "precompute": {
            "output": str(tmp_path / "shards"),
            "shard_size": 40,
            "batch_size": 32,
            "num_cpus": 2,
            "probe_max_iter": 200,
        },
        "train": {
            "epochs": 1,
            "batch_size": 16,
            "ood_batch_size": 16,
            "log_every_n_steps": 1,
            "shuffle_buffer": 20,
        },
        "methods": {
            "lora": {"finetune": "lora"},
            "full": {"finetune": "full", "lr": 1e-4},
            "robustkd": {"finetune": "lora", "lambda_kd": 1.0, "lambda_act": 1.0},
        },
        "run_dir": str(tmp_path / "runs"),
    }
    for key, value in sections.items():
        data[key] = value
    return data


@pytest.fixture(scope="session")
def precomputed(tmp_path_factory, fashion_root, ray_cluster):
    """The tiny experiment's shard set, precomputed once: (config, shard folder)."""
    from pipeline.precompute import run_precompute
    from schemas.config import ExperimentConfig, config_from_dict

    cfg = config_from_dict(
        ExperimentConfig, tiny_experiment(tmp_path_factory.mktemp("e2e"), fashion_root)
    )
    return cfg, run_precompute(cfg)
