"""Every baseline is a train config: each one trains on the tiny shard set with its loss parts."""

import copy

import pytest
import torch

from schemas.config import ExperimentConfig
from trainer.methods import l2sp_penalty, snapshot_weights
from trainer.recipe import TrainRecipe

pytestmark = pytest.mark.slow

METHODS = {
    "linear_probe": ({"finetune": "linear_probe"}, {"train/task"}),
    "lp_ft": ({"finetune": "full", "head_init": "probe", "lr": 1e-4}, {"train/task"}),
    "ft_random_head": ({"finetune": "full", "head_init": "random", "lr": 1e-4}, {"train/task"}),
    "augmix": ({"finetune": "lora", "augment": "augmix"}, {"train/task"}),
    "adversarial": ({"finetune": "lora", "adv_eps": 2 / 255, "adv_steps": 2}, {"train/task"}),
    "l2sp": ({"finetune": "full", "lambda_l2sp": 0.01, "lr": 1e-4}, {"train/l2sp"}),
    "feature_distance": ({"lambda_act": 1.0, "div_source": "id"}, {"train/act"}),
    "self_distillation": ({"lambda_kd": 1.0, "kd_source": "id"}, {"train/kd"}),
    "robustkd_noise_only": (
        {"lambda_kd": 1.0, "lambda_act": 1.0, "ood_include": ["gaussian_noise"]},
        {"train/kd", "train/act"},
    ),
}


def experiment_with(
    cfg: ExperimentConfig, tmp_path, name: str, overrides: dict
) -> ExperimentConfig:
    exp = copy.deepcopy(cfg)
    exp.run_dir = str(tmp_path / "runs")
    exp.methods = {name: overrides}
    return exp


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_with_its_loss_parts(precomputed, tmp_path, name):
    cfg, _ = precomputed
    overrides, parts = METHODS[name]
    recipe = TrainRecipe(experiment_with(cfg, tmp_path, name, overrides), name)
    recipe.setup()
    before = {n: p.detach().clone() for n, p in recipe.model.named_parameters()}
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    rows = (recipe.run_dir / "metrics.csv").read_text().splitlines()[1:]
    keys = {row.split(",")[1] for row in rows}
    assert parts <= keys
    values = [float(row.split(",")[2]) for row in rows if row.split(",")[1] == "train/loss"]
    assert values and all(v == v and v < 1e4 for v in values)  # finite, not NaN
    changed = {n for n, p in recipe.model.named_parameters() if not torch.equal(p, before[n])}
    if name == "linear_probe":
        assert changed == {"head.weight", "head.bias"}
    else:
        assert any(n.startswith("encoder") or "lora" in n for n in changed)


def test_ood_include_keeps_only_named_views(precomputed, tmp_path):
    cfg, _ = precomputed
    exp = experiment_with(cfg, tmp_path, "m", {"lambda_kd": 1.0, "ood_include": ["contrast"]})
    recipe = TrainRecipe(exp, "m")
    recipe.setup()
    batch = next(recipe.ood_stream.forever())
    assert {p["corruption"] for p in batch.generator_params} == {"contrast"}


def test_l2sp_is_zero_at_the_pretrained_weights(precomputed, tmp_path):
    cfg, _ = precomputed
    exp = experiment_with(cfg, tmp_path, "m", {"finetune": "full", "lambda_l2sp": 1.0})
    recipe = TrainRecipe(exp, "m")
    recipe.setup()
    reference = snapshot_weights(recipe.backbone)
    assert l2sp_penalty(recipe.backbone, reference).item() == 0.0
    with torch.no_grad():
        recipe.backbone.encoder._conv_stem.weight[0, 0, 0, 0] += 0.5
    assert l2sp_penalty(recipe.backbone, reference).item() == pytest.approx(0.25)


@pytest.fixture(scope="module")
def projected_set(tmp_path_factory, fashion_root, ray_cluster):
    from conftest import tiny_experiment

    from pipeline.precompute import run_precompute
    from schemas.config import config_from_dict

    data = tiny_experiment(tmp_path_factory.mktemp("projected"), fashion_root)
    data["precompute"]["storage"] = {
        "activations": "full",
        "projection_dim": 8,
        "activation_dtype": "int8",
    }
    cfg = config_from_dict(ExperimentConfig, data)
    run_precompute(cfg)
    return cfg


def test_activation_term_matches_full_projected_int8_targets(projected_set):
    recipe = TrainRecipe(projected_set, "robustkd")
    recipe.setup()
    spec = recipe.layer_specs["_blocks.4"]
    assert spec.reduce == "full"
    assert spec.projection_from == 40
    batch = next(recipe.ood_stream.forever())
    recipe.model.eval()
    with torch.no_grad():
        losses = recipe._loss_step(next(recipe.id_stream.epoch(0)), batch)
    # A fresh LoRA student equals the teacher, so only int8 rounding remains: the error is
    # small relative to the targets' own power.
    for name in ("_blocks.4", "_blocks.10"):
        power = batch.activations[name].pow(2).mean().item()
        assert losses[f"act/{name}"].item() < 1e-3 * power, name
    assert losses["kd"].item() < 1e-6
    recipe.cleanup()
