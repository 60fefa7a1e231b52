"""Tests of the common corruptions, the imagecorruptions repairs and the corruption generator."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.filters
from PIL import Image

from pipeline.ood import (
    BENCHMARK_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    InvalidImageError,
    apply_corruption,
    build_generator,
    corruption_family,
)
from pipeline.ood.compat import CORRUPTION_FUNCTIONS, glass_blur_reference, load_imagecorruptions
from pipeline.ood.corruptions import _legacy_seed_words
from pipeline.ood.glass_blur import glass_blur_fast
from schemas.errors import ConfigError, RobustKDError

REPO_ROOT = Path(__file__).resolve().parents[1]
REPAIRED = {"gaussian_blur", "glass_blur", "fog", "impulse_noise"}


def random_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth gradient plus texture, so blurs and noise both change it visibly."""
    rng = np.random.default_rng(seed)
    height, width = shape[:2]
    gradient = np.add.outer(np.linspace(0, 120, height), np.linspace(0, 100, width))
    texture = rng.integers(0, 35, size=shape)
    base = gradient if len(shape) == 2 else gradient[..., None]
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def test_families_cover_all_nineteen():
    assert len(CORRUPTIONS) == 19
    assert len(BENCHMARK_CORRUPTIONS) == 15
    assert EXTRA_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert set(CORRUPTIONS.values()) == {"noise", "blur", "weather", "digital"}
    assert corruption_family("speckle_noise") == "noise"
    assert corruption_family("saturate") == "digital"
    assert set(CORRUPTION_FUNCTIONS) == set(CORRUPTIONS)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_severity_keeps_shape_dtype(name):
    image = random_image((32, 32, 3))
    for severity in range(1, 6):
        out = apply_corruption(image, name, severity, seed=severity)
        assert out.shape == image.shape
        assert out.dtype == np.uint8
    assert not np.array_equal(apply_corruption(image, name, 5, seed=1), image)


@pytest.mark.parametrize("shape", [(28, 28), (28, 28, 1), (256, 256, 3), (33, 47, 3), (20, 90)])
def test_edge_shapes_round_trip(shape):
    image = random_image(shape)
    for name in CORRUPTIONS:
        out = apply_corruption(image, name, 3, seed=11)
        assert out.shape == image.shape, name
        assert out.dtype == np.uint8, name


def test_same_seed_same_bytes():
    image = random_image((40, 40, 3))
    for name in CORRUPTIONS:
        first = apply_corruption(image, name, 4, seed=123)
        np.random.seed(999)  # other code touching the global RNG in between must not matter
        second = apply_corruption(image, name, 4, seed=123)
        assert np.array_equal(first, second), name


def test_seed_changes_random_corruptions():
    image = random_image((40, 40, 3))
    for name in ("gaussian_noise", "impulse_noise", "glass_blur", "fog", "spatter", "frost"):
        assert not np.array_equal(
            apply_corruption(image, name, 3, seed=1), apply_corruption(image, name, 3, seed=2)
        ), name


def _digest_all(image: np.ndarray) -> str:
    digest = hashlib.sha256()
    for name in CORRUPTIONS:
        digest.update(apply_corruption(image, name, 3, seed=5).tobytes())
    return digest.hexdigest()


def test_fresh_process_same_bytes(tmp_path):
    image = random_image((36, 36, 3))
    np.save(tmp_path / "image.npy", image)
    script = (
        "import sys, numpy as np\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from tests.test_ood_corruptions import _digest_all\n"
        "print(_digest_all(np.load(sys.argv[2], allow_pickle=False)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(REPO_ROOT), str(tmp_path / "image.npy")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    assert result.stdout.strip() == _digest_all(image)


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n not in REPAIRED])
def test_unrepaired_match_library(name):
    import imagecorruptions

    image = random_image((48, 40, 3))
    for severity in (1, 3, 5):
        np.random.seed(_legacy_seed_words(17))
        expected = imagecorruptions.corrupt(image, severity=severity, corruption_name=name)
        assert np.array_equal(apply_corruption(image, name, severity, seed=17), expected)


def test_gaussian_blur_repair_matches_formula():
    # Pins the repair of skimage's removed `multichannel=True`, now `channel_axis=-1`.
    image = random_image((40, 40, 3))
    for severity, sigma in zip(range(1, 6), [1, 2, 3, 4, 6], strict=True):
        blurred = skimage.filters.gaussian(image / 255.0, sigma=sigma, channel_axis=-1)
        expected = (np.clip(blurred, 0, 1) * 255).astype(np.uint8)
        assert np.array_equal(apply_corruption(image, "gaussian_blur", severity, seed=0), expected)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_glass_blur_fast_equals_reference(severity):
    # The reference is the library's own pixel loop with only the `multichannel` repair.
    image = Image.fromarray(random_image((45, 52, 3)))
    np.random.seed(severity)
    expected = np.uint8(glass_blur_reference(image, severity))
    state_after_reference = np.random.get_state()[1].copy()
    np.random.seed(severity)
    actual = np.uint8(glass_blur_fast(image, severity))
    assert np.array_equal(actual, expected)
    assert np.array_equal(np.random.get_state()[1], state_after_reference)


def test_fog_repair_matches_library(monkeypatch):
    # The library's fog fails on numpy 2 only because `np.float_` is gone; restoring the alias
    # for this test gives the unrepaired algorithm to compare against.
    library = load_imagecorruptions()
    monkeypatch.setattr(np, "float_", np.float64, raising=False)
    image = random_image((50, 44, 3))
    for severity in (1, 5):
        np.random.seed(_legacy_seed_words(3))
        expected = np.uint8(library.fog(Image.fromarray(image), severity))
        assert np.array_equal(apply_corruption(image, "fog", severity, seed=3), expected)


def test_impulse_noise_seeded_and_strength():
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    first = apply_corruption(image, "impulse_noise", 5, seed=8)
    assert np.array_equal(first, apply_corruption(image, "impulse_noise", 5, seed=8))
    # Severity 5 replaces a fraction 0.27 of the values by 0 or 255.
    changed = np.mean(first != 128)
    assert 0.24 < changed < 0.30
    assert set(np.unique(first)) == {0, 128, 255}


def test_import_without_pkg_resources(tmp_path):
    # setuptools 82 removed pkg_resources. A None entry in sys.modules makes the import fail
    # the same way.
    script = (
        "import sys, numpy as np\n"
        "sys.modules['pkg_resources'] = None\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from pipeline.ood import apply_corruption\n"
        "image = np.full((40, 40, 3), 90, dtype=np.uint8)\n"
        "out = apply_corruption(image, 'frost', 5, seed=1)\n"
        "print(out.shape, int(out.mean() > 90), sys.modules.get('pkg_resources'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(REPO_ROOT)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert result.stdout.strip() == "(40, 40, 3) 1 None"


def test_small_image_is_block_mean_of_upsampled():
    small = random_image((16, 16, 3))
    large = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    corrupted_large = apply_corruption(large, "motion_blur", 3, seed=4).astype(np.float64)
    expected = np.rint(corrupted_large.reshape(16, 2, 16, 2, 3).mean(axis=(1, 3)))
    assert np.array_equal(
        apply_corruption(small, "motion_blur", 3, seed=4), expected.astype(np.uint8)
    )


def test_gray_keeps_noise_channel_and_luma():
    gray = random_image((40, 40))
    rgb = np.repeat(gray[..., None], 3, axis=2)
    noisy = apply_corruption(gray, "gaussian_noise", 2, seed=6)
    assert np.array_equal(noisy, apply_corruption(rgb, "gaussian_noise", 2, seed=6)[..., 0])
    frosted_rgb = apply_corruption(rgb, "frost", 2, seed=6).astype(np.int64)
    luma = (frosted_rgb @ np.array([299, 587, 114]) + 500) // 1000
    assert np.array_equal(apply_corruption(gray, "frost", 2, seed=6), luma.astype(np.uint8))


@pytest.mark.parametrize("severity", [0, 6, -1, True, 2.0, "3"])
def test_invalid_severity_rejected(severity):
    with pytest.raises(ConfigError, match="severity .* use an integer from 1 to 5"):
        apply_corruption(random_image((32, 32, 3)), "fog", severity, seed=0)


def test_invalid_inputs_rejected():
    image = random_image((32, 32, 3))
    with pytest.raises(InvalidImageError, match="dtype must be uint8"):
        apply_corruption(image.astype(np.float32), "fog", 1, seed=0)
    with pytest.raises(InvalidImageError, match=r"shape must be .*got \(32, 32, 4\)"):
        apply_corruption(np.zeros((32, 32, 4), np.uint8), "fog", 1, seed=0)
    with pytest.raises(InvalidImageError, match="numpy array"):
        apply_corruption(image.tolist(), "fog", 1, seed=0)
    with pytest.raises(RobustKDError, match="seed must be a non-negative integer"):
        apply_corruption(image, "fog", 1, seed=-3)
    with pytest.raises(ConfigError, match="'fgo' is unknown; valid names: gaussian_noise"):
        apply_corruption(image, "fgo", 1, seed=0)
    with pytest.raises(ConfigError, match="'rain' is unknown"):
        corruption_family("rain")


def test_generator_lists_every_problem():
    params = {"corruptions": ["fgo"], "severities": [0, 3], "severity": 2}
    with pytest.raises(ConfigError, match="3 problem") as error:
        build_generator("corruption", params)
    message = str(error.value)
    assert "unknown parameter 'severity'" in message
    assert "['fgo'] are unknown" in message
    assert "severities [0] are invalid" in message
    with pytest.raises(ConfigError, match="'warp' is unknown; available: .*corruption"):
        build_generator("warp", {})


def test_generator_regenerates_from_params():
    generator = build_generator(
        "corruption", {"corruptions": ["fog", "glass_blur", "snow"], "severities": [2, 4]}
    )
    image = random_image((64, 64, 3))
    view, params = generator.generate(image, seed=2024)
    assert json.loads(json.dumps(params)) == params
    assert params["corruption"] in {"fog", "glass_blur", "snow"}
    assert params["severity"] in {2, 4}
    rebuilt = build_generator("corruption", generator.params).apply(image, params, 2024)
    assert rebuilt.tobytes() == view.tobytes()
    default = build_generator("corruption", {})
    assert default.corruptions == list(BENCHMARK_CORRUPTIONS)
    assert default.severities == [1, 2, 3, 4, 5]
