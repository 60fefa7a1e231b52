"""Tests of the torchvision augmentation views and their recorded operations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from pipeline.ood import build_generator
from schemas.errors import ConfigError
from tests.test_ood_adversarial import one_torch_thread  # noqa: F401

POLICIES = ["randaugment", "trivialaugment", "augmix"]


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("shape", [(28, 28), (28, 28, 1), (32, 32, 3), (45, 61, 3)])
def test_shape_dtype_kept(policy, shape):
    generator = build_generator("augmentation", {"policy": policy})
    for seed in range(4):
        view, params = generator.generate(image(shape), seed)
        assert view.shape == shape
        assert view.dtype == np.uint8
        assert json.loads(json.dumps(params)) == params


@pytest.mark.parametrize("policy", POLICIES)
def test_replay_from_params_exact(policy):
    generator = build_generator("augmentation", {"policy": policy})
    source = image((40, 40, 3))
    for seed in range(10):
        view, params = generator.generate(source, seed)
        stored = json.loads(json.dumps(params))
        rebuilt = build_generator("augmentation", {"policy": policy}).apply(source, stored, seed)
        assert rebuilt.tobytes() == view.tobytes()


def test_randaugment_records_ops():
    generator = build_generator(
        "augmentation", {"policy": "randaugment", "num_ops": 3, "magnitude": 5}
    )
    names, signs = set(), set()
    for seed in range(200):
        params = generator.sample_params(np.random.default_rng(seed))
        assert len(params["ops"]) == 3
        assert {op["bin"] for op in params["ops"]} == {5}
        names.update(op["op"] for op in params["ops"])
        signs.update(op["sign"] for op in params["ops"])
    assert len(names) == 14  # torchvision 0.29 RandAugment has 14 operations
    assert signs == {-1, 1}


def test_recorded_op_matches_functional():
    # A recorded Rotate of bin 9 out of 31 bins is 9 degrees (linspace(0, 30, 31)), sign -1.
    generator = build_generator("augmentation", {"policy": "randaugment", "num_ops": 1})
    source = image((36, 36, 3))
    recorded = {"policy": "randaugment", "num_magnitude_bins": 31, "interpolation": "nearest"}
    op = {"op": "Rotate", "bin": 9, "sign": -1}
    view = generator.apply(source, {**recorded, "ops": [op]}, 0)
    tensor = torch.from_numpy(source).permute(2, 0, 1)
    expected = F.rotate(tensor, angle=-9.0, interpolation=InterpolationMode.NEAREST)
    assert np.array_equal(view, expected.permute(1, 2, 0).numpy())
    solarized = generator.apply(
        source, {**recorded, "ops": [{"op": "Solarize", "bin": 30, "sign": 1}]}, 0
    )
    assert np.array_equal(solarized, 255 - source)  # threshold 0 inverts every value


def test_augmix_weights_and_mixing():
    generator = build_generator(
        "augmentation", {"policy": "augmix", "mixture_width": 2, "chain_depth": 1}
    )
    params = generator.sample_params(np.random.default_rng(4))
    assert len(params["chains"]) == 2
    assert all(len(chain) == 1 for chain in params["chains"])
    assert sum(params["chain_weights"]) + params["original_weight"] == pytest.approx(1.0)

    source = image((32, 32, 3))
    identity_chain = {"op": "ShearX", "bin": 0, "sign": 1}  # bin 0 is a shear of 0
    mixed = generator.apply(
        source,
        {
            "policy": "augmix",
            "interpolation": "bilinear",
            "original_weight": 0.5,
            "chain_weights": [0.25, 0.25],
            "chains": [[identity_chain], [identity_chain]],
        },
        0,
    )
    # 0.5 x + 0.25 x + 0.25 x in float32, truncated, gives x back.
    assert np.array_equal(mixed, source)


def test_trivialaugment_magnitude_recorded():
    generator = build_generator("augmentation", {"policy": "trivialaugment"})
    _, params = generator.generate(image((64, 64, 3)), 7)
    (op,) = params["ops"]
    assert 0 <= op["bin"] < 31
    assert "magnitude" in op


def test_replay_ignores_generator_config():
    source = image((40, 40, 3))
    view, params = build_generator(
        "augmentation", {"policy": "trivialaugment", "num_magnitude_bins": 11}
    ).generate(source, 3)
    other_config = build_generator("augmentation", {"policy": "augmix"})
    assert other_config.apply(source, params, 3).tobytes() == view.tobytes()


def test_incomplete_view_params_rejected():
    generator = build_generator("augmentation", {"policy": "randaugment"})
    with pytest.raises(ConfigError, match=r"policy randaugment lack \['num_magnitude_bins'"):
        generator.apply(
            image((32, 32, 3)), {"policy": "randaugment", "ops": [], "interpolation": "nearest"}, 0
        )
    with pytest.raises(ConfigError, match="policy 'cutmix' is invalid"):
        generator.apply(image((32, 32, 3)), {"policy": "cutmix"}, 0)


def test_invalid_params_listed():
    with pytest.raises(ConfigError, match="policy 'autoaugment' is invalid"):
        build_generator("augmentation", {"policy": "autoaugment"})
    params = {
        "policy": "randaugment",
        "num_ops": -2,
        "magnitude": 31,
        "severity": 3,
        "interpolation": "cubic",
    }
    with pytest.raises(ConfigError, match="4 problem") as error:
        build_generator("augmentation", params)
    message = str(error.value)
    for fragment in (
        "severity does not apply to policy randaugment",
        "num_ops -2 is invalid",
        "magnitude 31 is invalid",
        "interpolation 'cubic' is invalid",
    ):
        assert fragment in message


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"policy": "randaugment", "num_ops": -1}, "num_ops -1 is invalid"),
        ({"policy": "randaugment", "num_magnitude_bins": "many"}, "num_magnitude_bins 'many'"),
        ({"policy": "augmix", "chain_depth": 0}, "chain_depth 0 is invalid"),
        ({"policy": "augmix", "alpha": True}, "alpha True is invalid"),
        ({"policy": "augmix", "all_ops": "yes"}, "all_ops 'yes' is invalid"),
        ({"policy": "augmix", "mixture_width": 0}, "mixture_width 0 is invalid"),
        ({"policy": "trivialaugment", "num_magnitude_bins": 1}, "num_magnitude_bins 1"),
    ],
)
def test_each_option_validated(params, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_generator("augmentation", params)
