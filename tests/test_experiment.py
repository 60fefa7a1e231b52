"""The experiment runner on a tiny shard set: sweep on validation data, seeds, WiSE-FT, report."""

import json

import pytest
from conftest import tiny_experiment

from pipeline.precompute import run_precompute
from schemas.config import ExperimentConfig, config_from_dict
from schemas.errors import ConfigError
from trainer.experiment import run_experiment
from trainer.recipe import TrainRecipe
from trainer.report import effective_robustness_line, mean_ci

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, fashion_root, ray_cluster):
    tmp = tmp_path_factory.mktemp("experiment")
    data = tiny_experiment(tmp, fashion_root)
    data["dataset"]["val_samples"] = 20
    data["methods"]["full"]["head_init"] = "random"
    data["runner"] = {
        "seeds": [0, 1],
        "baselines": ["lora", "full"],
        "wise_methods": ["robustkd"],
        "wise_alphas": [0.0, 1.0],
        "sweep": {"robustkd": {"lambda_kd": [0.5, 2.0]}},
        "cka_methods": ["full", "robustkd"],
        "embedding_method": "robustkd",
    }
    cfg = config_from_dict(ExperimentConfig, data)
    run_precompute(cfg)
    return cfg, run_experiment(cfg)


def test_report_has_table_and_figures(experiment):
    _, report = experiment
    text = (report / "report.md").read_text()
    for method in ("teacher", "lora", "full", "robustkd"):
        assert f"| {method} |" in text
    assert "chosen on `id_val` by `id_accuracy`" in text
    for figure in ("id_vs_ood.png", "corruption_severity.png", "cka.png", "tsne.png"):
        assert (report / figure).stat().st_size > 1000, figure


def test_results_cover_every_seed_and_wise_endpoint(experiment):
    cfg, report = experiment
    results = json.loads((report / "results.json").read_text())
    assert set(results["results"]) == {"teacher", "lora", "full", "robustkd"}
    assert set(results["results"]["robustkd"]) == {"0", "1"}
    assert set(results["chosen"]["robustkd"]) == {"lambda_kd"}
    wise = results["wise"]["robustkd"]["0"]
    teacher = results["results"]["teacher"]["0"]
    assert wise["0"]["id_accuracy"] == teacher["id_accuracy"]  # α = 0 is the teacher
    assert wise["1"]["id_accuracy"] == results["results"]["robustkd"]["0"]["id_accuracy"]
    assert set(results["analysis_cka"]["full"]) == {"_blocks.4", "_blocks.10"}
    saved = (cfg.runs_dir() / "seed-1" / "robustkd" / "result.json").read_text()
    assert json.loads(saved)["train"]["seed"] == 1


def test_rerun_trains_nothing(experiment, monkeypatch):
    cfg, _ = experiment

    def fail(self):
        raise AssertionError("finished runs must be reused")

    monkeypatch.setattr(TrainRecipe, "train", fail)
    run_experiment(cfg)


def test_sweep_without_validation_data_is_rejected(precomputed):
    cfg, _ = precomputed
    cfg = config_from_dict(
        ExperimentConfig,
        {
            **json.loads(json.dumps(vars(cfg), default=vars)),
            "runner": {"sweep": {"robustkd": {"lambda_kd": [1.0]}}},
        },
    )
    with pytest.raises(ConfigError, match="neither id_val nor ood_val"):
        run_experiment(cfg)


def test_mean_ci_uses_t_distribution():
    mean, half = mean_ci([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(4.302652729 * 0.1 / 3**0.5, rel=1e-6)
    assert mean_ci([0.4]) == (0.4, 0.0)


def test_effective_robustness_line_through_two_points():
    slope, intercept = effective_robustness_line([(0.5, 0.5), (0.9, 0.9)])
    assert slope == pytest.approx(1.0)
    assert intercept == pytest.approx(0.0, abs=1e-9)
    assert effective_robustness_line([(0.5, 0.4)]) is None


def test_wise_of_a_cold_head_method_is_rejected(experiment):
    cfg, _ = experiment
    bad = config_from_dict(
        ExperimentConfig,
        {
            **json.loads(json.dumps(vars(cfg), default=vars)),
            "runner": {"wise_methods": ["full"]},
        },
    )
    with pytest.raises(ConfigError, match="start from a random head"):
        run_experiment(bad)


def test_verdict_names_wins_and_losses():
    from trainer.report import verdict

    summary = {
        "base": {"id_accuracy": [0.80, 0.81, 0.79], "ood_average": [0.50, 0.51, 0.49]},
        "robustkd": {"id_accuracy": [0.80, 0.80, 0.80], "ood_average": [0.60, 0.61, 0.59]},
    }
    lines = verdict(summary, ["base"], {"id_accuracy": "ID accuracy", "ood_average": "OOD"})
    text = "\n".join(lines)
    assert "**robustkd** beats base on OOD (+10.0 points)" in text
    assert "no clear difference from base on ID accuracy" in text
