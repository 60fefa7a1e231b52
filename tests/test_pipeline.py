"""End to end on a tiny Fashion-MNIST: precompute with Ray, resume, train every method, evaluate."""

import json

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import tiny_experiment
from safetensors.torch import load_file

from pipeline import precompute as precompute_module
from pipeline.precompute import run_precompute
from pipeline.writer import ShardWriter
from schemas.config import ExperimentConfig, config_from_dict, config_to_dict
from schemas.errors import ConfigError, ShardSetError
from schemas.manifest import Manifest
from schemas.sample import decode_wds
from trainer import student as student_module
from trainer.evaluate import evaluate_experiment
from trainer.recipe import TrainRecipe, latest_checkpoint

pytestmark = pytest.mark.slow


def build(tmp_path, fashion_root, **sections) -> ExperimentConfig:
    return config_from_dict(ExperimentConfig, tiny_experiment(tmp_path, fashion_root, **sections))


def file_states(folder):
    return {
        p.name: (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def test_precompute_writes_every_split(precomputed):
    cfg, folder = precomputed
    manifest = Manifest.read(folder)
    assert manifest.counts() == {
        "id_train": 60,
        "ood_train": 120,
        "id_val": 0,
        "ood_val": 0,
        "id_test": 30,
        "ood_test": 20,
    }
    assert manifest.skipped == {}
    assert [s.tar for s in manifest.shards_of("ood_train")] == [
        "ood_train-00000.tar",
        "ood_train-00001.tar",
        "ood_train-00002.tar",
    ]
    assert manifest.layout.layer_names() == ["_blocks.4", "_blocks.10"]
    assert manifest.teacher.head == "linear_probe"
    manifest.verify(folder)


def test_ood_test_marks_seen_and_held_out_families(precomputed):
    _, folder = precomputed
    samples = [
        decode_wds(m)
        for m in wds.WebDataset(str(folder / "ood_test-00000.tar"), shardshuffle=False)
    ]
    seen = {s.generator_params["corruption"]: s.generator_params["seen"] for s in samples}
    assert seen == {"gaussian_noise": True, "defocus_blur": False}


def test_stored_view_regenerates_bit_exactly(precomputed):
    from pipeline.datasets import get_reader, prepare_image
    from pipeline.ood import build_generator

    cfg, folder = precomputed
    sample = decode_wds(
        next(iter(wds.WebDataset(str(folder / "ood_train-00001.tar"), shardshuffle=False)))
    )
    reader = get_reader("fashion-mnist", cfg.dataset.root)
    record = {r.key: r for r in reader.records("train")}[sample.source_key]
    source = prepare_image(record.image, cfg.dataset.image_size)
    generator = build_generator(sample.generator, cfg.ood.train[0].params)
    again = generator.apply(source, sample.generator_params, sample.generator_seed)
    assert again.tobytes() == sample.image.tobytes()
    assert not np.array_equal(source, sample.image)


def test_rerun_recomputes_nothing(precomputed, monkeypatch):
    cfg, folder = precomputed
    before = file_states(folder)

    def fail(*args, **kwargs):
        raise AssertionError("a finished shard set must not start Ray or build the teacher")

    monkeypatch.setattr(precompute_module, "build_teacher", fail)
    monkeypatch.setattr(precompute_module, "ray_session", fail)
    assert run_precompute(cfg) == folder
    assert file_states(folder) == before


def test_changed_config_is_rejected_in_the_same_folder(precomputed):
    cfg, _ = precomputed
    cfg.ood.seed = 99
    try:
        with pytest.raises(ShardSetError, match="holds shards from a different config"):
            run_precompute(cfg)
    finally:
        cfg.ood.seed = 0


def test_interrupted_precompute_resumes(tmp_path, fashion_root, ray_cluster, monkeypatch):
    cfg = build(tmp_path, fashion_root)
    original_write = ShardWriter.write
    calls = {"n": 0}

    def write_then_crash(self, sample):
        calls["n"] += 1
        if calls["n"] > 50:
            raise OSError("simulated crash")
        original_write(self, sample)

    monkeypatch.setattr(ShardWriter, "write", write_then_crash)
    with pytest.raises(OSError, match="simulated crash"):
        run_precompute(cfg)
    folder = cfg.shards_dir()
    finished = sorted(p.name for p in folder.glob("*.done.json"))
    assert finished == ["id_train-00000.done.json"]
    assert not list(folder.glob(".*.tmp"))
    first = (folder / "id_train-00000.tar").stat().st_mtime_ns

    monkeypatch.setattr(ShardWriter, "write", original_write)
    run_precompute(cfg)
    assert (folder / "id_train-00000.tar").stat().st_mtime_ns == first
    Manifest.read(folder).verify(folder)


def test_actors_filling_the_cluster_are_rejected_before_starting(
    tmp_path, fashion_root, ray_cluster
):
    # Two 1-CPU actors on the 2-CPU test cluster leave no CPU for view tasks: Ray Data would
    # wait for one forever.
    cfg = build(tmp_path, fashion_root)
    cfg.precompute.num_cpus = None
    cfg.precompute.num_teacher_actors = 2
    with pytest.raises(ConfigError, match="the Ray cluster has 2, so no view task could run"):
        run_precompute(cfg)
    assert not list(cfg.shards_dir().glob("*.tar"))


def train(cfg, method):
    recipe = TrainRecipe(cfg, method)
    recipe.setup()
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    return recipe


def test_train_every_method_without_a_teacher_then_evaluate(precomputed, monkeypatch):
    cfg, _ = precomputed
    built = []
    original = student_module.build_backbone

    def counting_build(*args, **kwargs):
        built.append(args[0].arch)
        return original(*args, **kwargs)

    monkeypatch.setattr(student_module, "build_backbone", counting_build)
    for method in ("lora", "full", "robustkd"):
        recipe = train(cfg, method)
        assert latest_checkpoint(recipe.run_dir).name == "epoch-000"
    assert built == ["efficientnet_lite0"] * 3  # one student per method, never a teacher

    rows = (cfg.runs_dir() / "robustkd" / "metrics.csv").read_text().splitlines()
    keys = {row.split(",")[1] for row in rows[1:]}
    assert {"train/loss", "train/task", "train/kd", "train/act", "train/act/_blocks.4"} <= keys
    assert any((cfg.runs_dir() / "robustkd" / "tensorboard").iterdir())

    report = evaluate_experiment(cfg, ["lora", "full", "robustkd"])
    assert set(report["methods"]) == {"teacher", "lora", "full", "robustkd"}
    for metrics in report["methods"].values():
        assert 0.0 <= metrics["id_accuracy"] <= 1.0
        assert metrics["ood_worst"] <= metrics["ood_average"]
        assert set(metrics["ood_per_shift"]) == {"gaussian_noise", "defocus_blur"}
        assert metrics["ood_seen_average"] == metrics["ood_per_shift"]["gaussian_noise"]
        assert metrics["ood_held_out_average"] == metrics["ood_per_shift"]["defocus_blur"]
    saved = json.loads((cfg.runs_dir() / "metrics.json").read_text())
    assert saved["methods"]["teacher"] == report["methods"]["teacher"]
    assert "| robustkd |" in (cfg.runs_dir() / "report.md").read_text()


def test_teacher_logits_give_teacher_accuracy(precomputed):
    cfg, folder = precomputed
    samples = [
        decode_wds(m)
        for m in wds.WebDataset(str(folder / "id_train-00000.tar"), shardshuffle=False)
    ]
    accuracy = np.mean([s.logits.argmax() == s.label for s in samples])
    assert accuracy > 0.5  # the probe was fitted on these samples; chance is 0.1


def test_student_with_other_base_weights_is_rejected(precomputed, tmp_path):
    cfg, _ = precomputed
    other = build(
        tmp_path,
        cfg.dataset.root,
        teacher={
            "arch": "efficientnet_lite0",
            "pretrained": False,
            "taps": ["_blocks.4", "_blocks.10"],
        },
    )
    other.precompute.output = cfg.precompute.output
    manifest = Manifest.read(cfg.shards_dir())
    with pytest.raises(ShardSetError) as info:
        TrainRecipe(other, "lora").setup()
    message = str(info.value)
    assert f"teacher efficientnet_lite0@{manifest.teacher.weights_sha256[:12]}" in message
    assert "student base weights efficientnet_lite0@" in message


def test_training_resumes_after_a_crash(precomputed, tmp_path, monkeypatch):
    cfg, _ = precomputed
    cfg = build(tmp_path, cfg.dataset.root, precompute=config_to_dict(cfg.precompute))
    cfg.train.epochs = 2
    reference = build(tmp_path / "ref", cfg.dataset.root, precompute=config_to_dict(cfg.precompute))
    reference.train.epochs = 2
    train(reference, "robustkd")

    original = TrainRecipe.save_checkpoint

    def crash_after_first(self, epoch):
        original(self, epoch)
        raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(TrainRecipe, "save_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, "robustkd")
    monkeypatch.setattr(TrainRecipe, "save_checkpoint", original)
    resumed = train(cfg, "robustkd")
    assert resumed.start_epoch == 1

    got = load_file(str(latest_checkpoint(resumed.run_dir) / "trainable.safetensors"))
    want = load_file(
        str(latest_checkpoint(reference.runs_dir() / "robustkd") / "trainable.safetensors")
    )
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)
