"""The experiment runner: methods × seeds on one shard set, WiSE-FT sweeps, analysis, report.

    robustkd experiment --config configs/experiments/fashion-mnist-baselines.yaml

Steps, each resumable because every finished unit leaves a `result.json`:
1. choose hyperparameters listed under `runner.sweep` on validation data (never on test data);
2. train and evaluate every method for every seed;
3. evaluate WiSE-FT interpolations of `runner.wise_methods`;
4. per-layer CKA and a t-SNE embedding for the analysis figures;
5. write `report.md`, `results.json` and figures into `runs/<name>/report/`.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from schemas.config import ExperimentConfig, config_to_dict
from schemas.errors import ConfigError
from schemas.manifest import Manifest
from shardstore.resolve import resolve_shards_dir
from trainer.analysis import inference_latency_ms, layer_features, linear_cka
from trainer.evaluate import load_student, model_outputs, score, teacher_outputs
from trainer.recipe import TrainRecipe
from trainer.report import write_report
from trainer.wise import wise_model

__all__ = ["run_experiment", "selection_rule"]

log = logging.getLogger(__name__)


def selection_rule(manifest: Manifest) -> tuple[str, str] | None:
    """Return (split, metric) used to choose hyperparameters, or None without validation data.

    A natural-shift validation split (WILDS `val`) is preferred; otherwise ID validation.
    """
    counts = manifest.counts()
    if counts["ood_val"]:
        return "ood_val", "ood_average"
    if counts["id_val"]:
        return "id_val", "id_accuracy"
    return None


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _variant(
    cfg: ExperimentConfig, method: str, run_dir: Path, overrides: dict
) -> ExperimentConfig:
    variant = copy.deepcopy(cfg)
    variant.run_dir = str(run_dir)
    variant.methods = {method: {**cfg.methods[method], **overrides}}
    variant.method_config(method)  # validates the combination
    return variant


def _train_and_score(
    variant: ExperimentConfig,
    method: str,
    manifest: Manifest,
    splits: tuple[str, ...],
    id_split: str,
    ood_split: str,
) -> dict[str, Any]:
    """Train one run (resuming if interrupted) and score it on the given splits."""
    recipe = TrainRecipe(variant, method)
    recipe.setup()
    try:
        timing = recipe.train()
    finally:
        recipe.cleanup()
    model, backbone = load_student(variant, method, manifest)
    outputs = model_outputs(variant, manifest, model, backbone, splits)
    result = score(outputs, variant.evaluate.ece_bins, id_split, ood_split)
    result["epoch_seconds"] = timing["epoch_seconds"]
    result["trainable_parameters"] = sum(
        p.numel() for p in recipe.model.parameters() if p.requires_grad
    )
    result["latency_ms"] = inference_latency_ms(model, backbone, variant.dataset.image_size)
    return result


def _sweep(cfg: ExperimentConfig, manifest: Manifest, out: Path, bar) -> dict[str, dict]:
    """Pick the best candidate of every swept method on validation data; returns overrides."""
    rule = selection_rule(manifest)
    if cfg.runner.sweep and rule is None:
        raise ConfigError(
            [
                "runner.sweep: hyperparameters are chosen on validation data, but the shard set "
                "has neither id_val nor ood_val; set dataset.val_samples or dataset.id_val_split"
            ]
        )
    chosen: dict[str, dict] = {}
    for method, grid in cfg.runner.sweep.items():
        names = sorted(grid)
        candidates = [
            dict(zip(names, values, strict=True))
            for values in itertools.product(*(grid[n] for n in names))
        ]
        scores = []
        for index, overrides in enumerate(candidates):
            path = out / "sweep" / method / f"candidate-{index:02d}" / "result.json"
            if not path.is_file():
                variant = _variant(
                    cfg, method, path.parent, {**overrides, "seed": cfg.runner.seeds[0]}
                )
                splits = (rule[0], "ood_val") if rule[0] == "id_val" else ("id_val", "ood_val")
                result = _train_and_score(variant, method, manifest, splits, "id_val", "ood_val")
                _write_json(path, {"overrides": overrides, "metrics": result})
            scores.append(json.loads(path.read_text())["metrics"].get(rule[1], float("nan")))
            bar.update(1)
        best = max(range(len(candidates)), key=lambda i: scores[i])
        chosen[method] = candidates[best]
        log.info(
            "%s: chose %s (%s %s = %.4f)", method, candidates[best], rule[0], rule[1], scores[best]
        )
    return chosen


def _wise(cfg: ExperimentConfig, method: str, manifest: Manifest, run: Path) -> dict[str, Any]:
    path = run / method / "wise.json"
    if path.is_file():
        return json.loads(path.read_text())
    variant = copy.deepcopy(cfg)
    variant.run_dir = str(run)
    results = {}
    for alpha in cfg.runner.wise_alphas:
        model, backbone = wise_model(variant, method, manifest, alpha)
        outputs = model_outputs(variant, manifest, model, backbone)
        results[f"{alpha:g}"] = score(outputs, cfg.evaluate.ece_bins)
    _write_json(path, results)
    return results


def _analysis(cfg: ExperimentConfig, manifest: Manifest, out: Path) -> dict[str, Any]:
    path = out / "analysis.json"
    if path.is_file():
        return json.loads(path.read_text())
    first = out / f"seed-{cfg.runner.seeds[0]}"
    layers = manifest.layout.layer_names()
    variant = copy.deepcopy(cfg)
    variant.run_dir = str(first)
    cka: dict[str, dict[str, float]] = {}
    for method in cfg.runner.cka_methods:
        model, backbone = load_student(variant, method, manifest)
        student, teacher, _ = layer_features(
            model, backbone, cfg.shards_dir(), manifest, "id_test", layers, limit=1000
        )
        cka[method] = {n: linear_cka(student[n], teacher[n]) for n in layers}
    embedding = None
    if cfg.runner.embedding_method:
        model, backbone = load_student(variant, cfg.runner.embedding_method, manifest)
        student, teacher, labels = layer_features(
            model, backbone, cfg.shards_dir(), manifest, "id_test", layers[-1:], limit=400
        )
        embedding = {
            "layer": layers[-1],
            "labels": labels.tolist(),
            "student": student[layers[-1]].tolist(),
            "teacher": teacher[layers[-1]].tolist(),
        }
    result = {"cka": cka, "embedding": embedding}
    _write_json(path, result)
    return result


def run_experiment(cfg: ExperimentConfig) -> Path:
    """Run every unit of the experiment that is not finished yet; return the report folder."""
    runner = cfg.runner
    methods = runner.methods or list(cfg.methods)
    unknown = [
        m
        for m in [*methods, *runner.sweep, *runner.wise_methods, *runner.cka_methods]
        if m not in cfg.methods
    ]
    if unknown:
        raise ConfigError([f"runner: methods {unknown} are not defined under `methods`"])
    cold_heads = [m for m in runner.wise_methods if cfg.method_config(m).head_init != "probe"]
    if cold_heads:
        # WiSE-FT interpolates the head from the teacher's towards the fine-tuned one, which is
        # only meaningful when fine-tuning started from the teacher's head.
        raise ConfigError(
            [
                f"runner.wise_methods: {cold_heads} start from a "
                f"{cfg.method_config(cold_heads[0]).head_init} head, so interpolating it with "
                "the teacher's head mixes unrelated weights; list "
                "methods with head_init: probe"
            ]
        )
    # Resolve the shard set once (pulling it by id if needed) and pin its folder for every run.
    cfg = copy.deepcopy(cfg)
    cfg.precompute.output = str(resolve_shards_dir(cfg))
    cfg.shard_set = None
    manifest = Manifest.read(cfg.shards_dir())
    manifest.verify(cfg.shards_dir())
    out = cfg.runs_dir()
    started = time.time()
    sweep_units = sum(len(list(itertools.product(*g.values()))) for g in runner.sweep.values())
    total = sweep_units + len(methods) * len(runner.seeds)
    results: dict[str, dict[int, dict]] = {m: {} for m in methods}
    wise: dict[str, dict[int, dict]] = {m: {} for m in runner.wise_methods}
    with tqdm(total=total, desc=f"experiment {cfg.name}", unit="run") as bar:
        chosen = _sweep(cfg, manifest, out, bar)
        for seed in runner.seeds:
            run = out / f"seed-{seed}"
            for method in methods:
                path = run / method / "result.json"
                if not path.is_file():
                    variant = _variant(cfg, method, run, {**chosen.get(method, {}), "seed": seed})
                    metrics = _train_and_score(
                        variant, method, manifest, ("id_test", "ood_test"), "id_test", "ood_test"
                    )
                    _write_json(
                        path,
                        {
                            "method": method,
                            "seed": seed,
                            "metrics": metrics,
                            "train": config_to_dict(variant.method_config(method)),
                        },
                    )
                results[method][seed] = json.loads(path.read_text())["metrics"]
                bar.update(1)
            for method in runner.wise_methods:
                variant = _variant(cfg, method, run, {**chosen.get(method, {}), "seed": seed})
                wise[method][seed] = _wise(variant, method, manifest, run)
    # The teacher needs no training: its stored logits score it, identically for every seed.
    teacher = score(
        teacher_outputs(cfg.shards_dir(), manifest, cfg.evaluate.batch_size), cfg.evaluate.ece_bins
    )
    teacher.update(epoch_seconds=0.0, trainable_parameters=0, latency_ms=float("nan"))
    results = {"teacher": dict.fromkeys(runner.seeds, teacher), **results}
    analysis = _analysis(cfg, manifest, out)
    torch.set_num_threads(cfg.train.torch_threads)
    report = write_report(
        cfg,
        manifest,
        results,
        wise,
        analysis,
        chosen,
        selection_rule(manifest),
        wall_seconds=time.time() - started,
    )
    log.info("experiment %s: report in %s", cfg.name, report)
    return report
