"""Tests of unlabeled image pools: a folder, an ImageFolder tree and WebDataset shards."""

from __future__ import annotations

import io

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.ood import build_generator
from pipeline.ood.pools import index_pool
from schemas.errors import ConfigError, RobustKDError


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def pools(tmp_path):
    """A flat folder, an ImageFolder tree and two WebDataset shards, each with known images."""
    rng = np.random.default_rng(0)
    images = {f"img{i}": rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8) for i in range(4)}
    flat = tmp_path / "flat"
    flat.mkdir()
    for name, array in images.items():
        Image.fromarray(array).save(flat / f"{name}.png")
    (flat / "notes.txt").write_text("not an image")

    tree = tmp_path / "tree"
    for index, (name, array) in enumerate(images.items()):
        (tree / f"class{index % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(tree / f"class{index % 2}" / f"{name}.png")
    Image.fromarray(images["img0"]).save(tree / "stray.png")  # outside any class folder

    shards = tmp_path / "shards"
    shards.mkdir()
    for shard_index in range(2):
        with wds.TarWriter(str(shards / f"pool-{shard_index:03d}.tar")) as writer:
            for name in list(images)[shard_index * 2 : shard_index * 2 + 2]:
                writer.write({"__key__": name, "png": png_bytes(images[name]), "json": b"{}"})
    index_pool.cache_clear()
    return {"images": images, "flat": flat, "tree": tree, "shards": shards}


def test_folder_pool_keys(pools):
    generator = build_generator("pool", {"source": "folder", "path": str(pools["flat"])})
    assert generator.keys == [f"img{i}.png" for i in range(4)]


def test_imagefolder_pool_skips_stray(pools):
    generator = build_generator("pool", {"source": "imagefolder", "path": str(pools["tree"])})
    assert generator.keys == [
        "class0/img0.png",
        "class0/img2.png",
        "class1/img1.png",
        "class1/img3.png",
    ]


@pytest.mark.parametrize("pattern", ["{root}", "{root}/pool-{{000..001}}.tar", "{root}/*.tar"])
def test_webdataset_pool_patterns(pools, pattern):
    path = pattern.format(root=pools["shards"])
    generator = build_generator("pool", {"source": "webdataset", "path": path})
    assert generator.keys == [
        "pool-000.tar/img0",
        "pool-000.tar/img1",
        "pool-001.tar/img2",
        "pool-001.tar/img3",
    ]


def test_stretch_returns_pool_pixels(pools):
    generator = build_generator(
        "pool", {"source": "webdataset", "path": str(pools["shards"]), "resize": "stretch"}
    )
    view = generator.apply(np.zeros((48, 64, 3), np.uint8), {"key": "pool-001.tar/img3"}, 0)
    assert np.array_equal(view, pools["images"]["img3"])


@pytest.mark.parametrize("shape", [(28, 28), (28, 28, 1), (32, 32, 3), (100, 30, 3)])
def test_center_crop_matches_input_shape(pools, shape):
    generator = build_generator("pool", {"source": "folder", "path": str(pools["flat"])})
    view, params = generator.generate(np.zeros(shape, np.uint8), seed=5)
    assert view.shape == shape
    assert view.dtype == np.uint8
    assert params["key"] in generator.keys
    again = generator.apply(np.zeros(shape, np.uint8), params, 5)
    assert again.tobytes() == view.tobytes()


def test_center_crop_of_same_size_is_identity(pools):
    generator = build_generator("pool", {"source": "folder", "path": str(pools["flat"])})
    view = generator.apply(np.zeros((48, 64, 3), np.uint8), {"key": "img2.png"}, 0)
    assert np.array_equal(view, pools["images"]["img2"])


def test_seeds_spread_over_pool(pools):
    generator = build_generator("pool", {"source": "folder", "path": str(pools["flat"])})
    keys = {generator.sample_params(np.random.default_rng(seed))["key"] for seed in range(50)}
    assert keys == set(generator.keys)


def test_missing_key_and_bad_params(pools, tmp_path):
    generator = build_generator("pool", {"source": "folder", "path": str(pools["flat"])})
    with pytest.raises(RobustKDError, match="pool image 'gone.png' is not in folder pool"):
        generator.apply(np.zeros((32, 32, 3), np.uint8), {"key": "gone.png"}, 0)
    with pytest.raises(ConfigError, match="3 problem"):
        build_generator("pool", {"source": "s3", "path": 7, "resize": "fill"})
    with pytest.raises(ConfigError, match="matches no .tar shards"):
        build_generator("pool", {"source": "webdataset", "path": str(tmp_path / "none-*.tar")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        build_generator("pool", {"source": "folder", "path": str(tmp_path / "empty")})
