"""The teacher actor outside Ray: targets per row, and adversarial views made with its gradients."""

import json

import numpy as np
import pytest
from torch import nn

from backbones.heads import save_head
from pipeline.teacher import TeacherPredictor
from schemas.config import BackboneConfig

TEACHER = BackboneConfig(arch="efficientnet_lite0", pretrained=False, taps=["_blocks.4"])
ATTACK = {
    "name": "adversarial",
    "weight": 1.0,
    "params": {"attack": "pgd_linf", "eps": 8 / 255, "steps": 2},
}


def batch(n: int, gen_index: list[int], params: list[dict], errors: list[str]):
    rng = np.random.default_rng(0)
    return {
        "key": np.array([f"k-{i}" for i in range(n)], dtype=object),
        "label": np.arange(n) % 3,
        "gen_index": np.array(gen_index),
        "seed": np.arange(n) + 10,
        "params": np.array([json.dumps(p) for p in params], dtype=object),
        "error": np.array(errors, dtype=object),
        "image": rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
    }


@pytest.fixture()
def head_path(tmp_path):
    path = tmp_path / "head.safetensors"
    save_head(nn.Linear(1280, 3), path, "linear_probe")
    return str(path)


def test_teacher_actor_outputs_targets_and_skips_errors(head_path):
    actor = TeacherPredictor(TEACHER, 32, head_path, "float16", torch_threads=1)
    out = actor(batch(3, [-1, -1, -1], [{}, {}, {}], ["", "unreadable_image", ""]))
    assert out["logits"].shape == (3, 3)
    assert out["logits"].dtype == np.float32
    assert out["act_0"].shape == (3, 40)
    assert out["act_0"].dtype == np.float16
    assert not out["logits"][1].any()  # the failed row keeps zeros and its error reason
    assert out["logits"][0].any()


def test_teacher_actor_applies_attacks_with_its_gradients(head_path):
    from pipeline.ood import build_generator

    generator = build_generator(ATTACK["name"], ATTACK["params"])
    params = [generator.sample_params(np.random.default_rng(s)) for s in (10, 11)]
    rows = batch(3, [0, 0, -1], [*params, {}], ["", "", ""])
    clean = rows["image"].copy()
    actor = TeacherPredictor(
        TEACHER, 32, head_path, "float32", torch_threads=1, generators=[ATTACK]
    )
    out = actor(rows)
    diff = np.abs(out["image"].astype(int) - clean.astype(int))
    assert diff[:2].max() > 0
    assert diff[:2].max() <= round(8 / 255 * 255) + 1
    assert diff[2].max() == 0
    assert not actor.teacher.training
