"""Config loading: every shipped YAML, overrides, and validation that lists every problem."""

from pathlib import Path

import pytest
import yaml

from schemas.config import ExperimentConfig, apply_overrides, config_from_dict, load_config
from schemas.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").rglob("*.yaml"))


def test_configs_folder_is_not_empty():
    assert CONFIGS, "no YAML files found under configs/"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    for method in cfg.methods:
        cfg.method_config(method)
    assert path.read_text().startswith("#"), "each config opens with the command that runs it"


def test_overrides_are_parsed_as_yaml():
    data = apply_overrides(
        {"train": {"epochs": 1}}, ["train.epochs=3", "train.lr=1e-4", "dataset.options.x=[1, 2]"]
    )
    assert data["train"] == {"epochs": 3, "lr": "1e-4"}
    cfg = config_from_dict(
        ExperimentConfig,
        {
            "name": "x",
            "dataset": {"name": "d", "root": "r"},
            "teacher": {"arch": "timm"},
            "train": data["train"],
        },
    )
    assert cfg.train.lr == 1e-4
    assert data["dataset"]["options"]["x"] == [1, 2]


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.epochs"])


def test_validation_reports_every_problem_at_once():
    data = yaml.safe_load(Path("configs/fashion-mnist.yaml").read_text())
    data["train"]["epochs"] = "two"
    data["teacher"]["head"] = "mlp"
    data["dataset"]["image_size"] = 16
    data["methods"]["full"]["lerning_rate"] = 0.1
    data["precompute"]["bogus"] = 1
    with pytest.raises(ConfigError) as info:
        config_from_dict(ExperimentConfig, data)
    message = str(info.value)
    assert "train.epochs: expected int, got 'two'" in message
    assert "teacher.head: 'mlp' is not one of" in message
    assert "dataset.image_size: 16 is below 32 px" in message
    assert "methods.full.lerning_rate: not a train field" in message
    assert "precompute.bogus: unknown field" in message


def test_missing_required_section_is_named():
    with pytest.raises(ConfigError, match="teacher: required field is missing"):
        config_from_dict(ExperimentConfig, {"name": "x", "dataset": {"name": "d", "root": "r"}})


def test_unknown_method_lists_known_ones():
    cfg = load_config("configs/fashion-mnist.yaml")
    with pytest.raises(ConfigError, match="known methods: full, lora, robustkd"):
        cfg.method_config("lp-ft")


def test_missing_config_file_lists_available(tmp_path):
    with pytest.raises(
        ConfigError, match="config file not found; available in configs/:.*fashion-mnist"
    ):
        load_config(tmp_path / "nope.yaml")


def test_nonpositive_subset_sizes_are_rejected():
    with pytest.raises(ConfigError) as info:
        load_config(
            "configs/fashion-mnist.yaml", ["dataset.max_train_samples=0", "dataset.val_samples=-1"]
        )
    assert "dataset.max_train_samples: 0 must be >= 1" in str(info.value)
    assert "dataset.val_samples: -1 must be >= 0" in str(info.value)


def test_bad_train_value_is_reported_once():
    with pytest.raises(ConfigError) as info:
        load_config("configs/fashion-mnist.yaml", ["train.epochs=two"])
    assert info.value.problems == ["train.epochs: expected int, got 'two'"]
    assert "with overrides" in str(info.value)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndataset:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml line \d+, column \d+: invalid YAML"):
        load_config(path)


def test_teacher_and_view_cpus_must_differ():
    with pytest.raises(ConfigError) as info:
        load_config(
            "configs/fashion-mnist.yaml",
            ["precompute.teacher_num_cpus=0.5", "precompute.view_num_cpus=0.5"],
        )
    assert "equals teacher_num_cpus" in str(info.value)


def test_actors_without_view_cpu_rejected():
    with pytest.raises(ConfigError) as info:
        load_config(
            "configs/fashion-mnist.yaml",
            ["precompute.num_cpus=2", "precompute.num_teacher_actors=2"],
        )
    message = str(info.value)
    assert "2 actors x teacher_num_cpus 1 + view_num_cpus 0.5 = 2.5 CPUs" in message
    assert "the Ray cluster has 2" in message
