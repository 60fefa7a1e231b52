"""WiSE-FT endpoints: α = 0 is the teacher and α = 1 the fine-tuned student, exactly."""

import copy

import numpy as np
import pytest
import torch

from backbones import build_backbone
from backbones.heads import load_head
from schemas.manifest import Manifest
from trainer.evaluate import load_student
from trainer.recipe import TrainRecipe
from trainer.wise import wise_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(precomputed, tmp_path_factory):
    cfg, _ = precomputed
    exp = copy.deepcopy(cfg)
    exp.run_dir = str(tmp_path_factory.mktemp("wise") / "runs")
    exp.methods = {
        "lora": {"finetune": "lora", "lr": 1e-2},
        "full": {"finetune": "full", "head_init": "random", "lr": 1e-3},
    }
    for method in exp.methods:
        recipe = TrainRecipe(exp, method)
        recipe.setup()
        recipe.train()
        recipe.cleanup()
    return exp


def outputs(model, backbone, images):
    with torch.no_grad():
        return model(backbone.preprocess(images))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_wise_endpoints_are_exact(trained, method):
    manifest = Manifest.read(trained.shards_dir())
    images = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)

    teacher = build_backbone(trained.teacher, 32).eval()
    teacher.set_head(load_head(trained.shards_dir() / "teacher_head.safetensors"))
    model0, backbone0 = wise_model(trained, method, manifest, 0.0)
    assert torch.equal(outputs(model0, backbone0, images), outputs(teacher, teacher, images))

    tuned, tuned_backbone = load_student(trained, method, manifest)
    model1, backbone1 = wise_model(trained, method, manifest, 1.0)
    assert torch.equal(outputs(model1, backbone1, images), outputs(tuned, tuned_backbone, images))

    middle, middle_backbone = wise_model(trained, method, manifest, 0.5)
    half = outputs(middle, middle_backbone, images)
    assert not torch.equal(half, outputs(teacher, teacher, images))
    assert not torch.equal(half, outputs(tuned, tuned_backbone, images))


def test_wise_rejects_alpha_outside_unit_interval(trained):
    manifest = Manifest.read(trained.shards_dir())
    with pytest.raises(ValueError, match="outside"):
        wise_model(trained, "lora", manifest, 1.5)
