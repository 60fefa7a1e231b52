"""Evaluate the teacher and trained students on the ID and OOD test shards.

    robustkd evaluate --config configs/fashion-mnist.yaml [--methods lora full robustkd]

The teacher is scored from its stored logits; each student is rebuilt from its last checkpoint.
Accuracy is reported per split, per OOD set (corruption and severity, or natural domain), per
corruption, and per family split into families seen during training and held-out ones. Results
go to `metrics.json` and a `report.md` table in the experiment's run folder.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from schemas.config import ExperimentConfig
from schemas.manifest import Manifest
from shardstore.resolve import resolve_shards_dir
from trainer.data import ShardStream
from trainer.recipe import latest_checkpoint
from trainer.student import build_student

__all__ = [
    "evaluate_experiment",
    "expected_calibration_error",
    "format_table",
    "load_student",
    "model_outputs",
    "score",
    "teacher_outputs",
]

log = logging.getLogger(__name__)


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: Σ_b (n_b / n) · |accuracy_b − confidence_b|."""
    if len(labels) == 0:
        return float("nan")
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def _ood_set(params: dict[str, Any], domain: str) -> tuple[str, str, str]:
    """Return (set name, corruption or domain, group) of an OOD test sample."""
    if "corruption" in params:
        group = "seen" if params.get("seen") else "held_out"
        return f"{params['corruption']}/s{params['severity']}", params["corruption"], group
    match = re.fullmatch(r"([a-z_]+)/([1-5])", domain)
    if match:
        # Corruption benchmarks (CIFAR-10-C, ImageNet-C) name domains "<corruption>/<severity>".
        return f"{match[1]}/s{match[2]}", match[1], "natural"
    return f"domain:{domain}", f"domain:{domain}", "natural"


def score(
    outputs: dict[str, dict[str, Any]],
    bins: int,
    id_split: str = "id_test",
    ood_split: str = "ood_test",
) -> dict[str, Any]:
    """Compute every metric from logits, labels, params and domains per split."""
    result: dict[str, Any] = {}
    id_test = outputs[id_split]
    id_acc = float((id_test["logits"].argmax(1) == id_test["labels"]).mean())
    result["id_accuracy"] = id_acc
    result["id_ece"] = expected_calibration_error(id_test["logits"], id_test["labels"], bins)
    ood = outputs.get(ood_split)
    if ood is None or len(ood["labels"]) == 0:
        return result
    correct = ood["logits"].argmax(1) == ood["labels"]
    sets: dict[str, list[bool]] = defaultdict(list)
    shift_of_set, group_of_shift = {}, {}
    for ok, params, domain in zip(correct, ood["params"], ood["domains"], strict=True):
        name, shift, group = _ood_set(params, domain)
        sets[name].append(bool(ok))
        shift_of_set[name] = shift
        group_of_shift[shift] = group
    per_set = {name: float(np.mean(v)) for name, v in sorted(sets.items())}
    per_shift: dict[str, list[float]] = defaultdict(list)
    for name, acc in per_set.items():
        per_shift[shift_of_set[name]].append(acc)
    per_shift_mean = {shift: float(np.mean(v)) for shift, v in sorted(per_shift.items())}
    result["ood_per_set"] = per_set
    result["ood_per_shift"] = per_shift_mean
    result["ood_average"] = float(np.mean(list(per_shift_mean.values())))
    result["ood_worst"] = float(min(per_shift_mean.values()))
    result["id_ood_gap"] = id_acc - result["ood_average"]
    result["ood_ece"] = expected_calibration_error(ood["logits"], ood["labels"], bins)
    for group in ("seen", "held_out", "natural"):
        values = [a for s, a in per_shift_mean.items() if group_of_shift[s] == group]
        if values:
            result[f"ood_{group}_average"] = float(np.mean(values))
            result[f"ood_{group}_worst"] = float(min(values))
    return result


def teacher_outputs(folder: Path, manifest: Manifest, batch_size: int) -> dict[str, dict]:
    outputs = {}
    for split in ("id_test", "ood_test"):
        stream = ShardStream(folder, manifest, split, batch_size, layers=[])
        outputs[split] = _collect(stream, lambda batch: batch.logits)
    return outputs


def _collect(stream: ShardStream, predict) -> dict[str, Any]:
    logits, labels, params, domains = [], [], [], []
    for batch in tqdm(
        stream.epoch(0),
        total=len(stream),
        desc=f"evaluate {stream.split}",
        unit="batch",
        leave=False,
    ):
        logits.append(predict(batch).numpy())
        labels.append(batch.labels.numpy())
        params += batch.generator_params
        domains += batch.domains
    if not logits:
        return {
            "logits": np.zeros((0, 0)),
            "labels": np.zeros(0, dtype=int),
            "params": [],
            "domains": [],
        }
    return {
        "logits": np.concatenate(logits),
        "labels": np.concatenate(labels),
        "params": params,
        "domains": domains,
    }


def load_student(experiment: ExperimentConfig, method: str, manifest: Manifest):
    """Rebuild a method's student from its last checkpoint, in eval mode: (model, backbone)."""
    cfg = experiment.method_config(method)
    run_dir = experiment.runs_dir() / method
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(
            f"no checkpoint for method {method!r} in {run_dir}; "
            f"run `robustkd train --method {method}` first"
        )
    model, backbone = build_student(
        experiment.teacher,
        experiment.dataset.image_size,
        manifest,
        resolve_shards_dir(experiment),
        cfg,
    )
    missing = model.load_state_dict(
        load_file(str(checkpoint / "trainable.safetensors")), strict=False
    )
    if missing.unexpected_keys:
        raise ValueError(
            f"checkpoint {checkpoint} has unexpected tensors {missing.unexpected_keys[:5]}"
        )
    return model.eval(), backbone


def model_outputs(
    experiment: ExperimentConfig,
    manifest: Manifest,
    model,
    backbone,
    splits: tuple[str, ...] = ("id_test", "ood_test"),
) -> dict[str, dict]:
    """Run a student over the given splits: logits, labels, generator params and domains."""

    @torch.no_grad()
    def predict(batch):
        return model(backbone.preprocess(batch.images)).float()

    batch_size = experiment.evaluate.batch_size
    folder = resolve_shards_dir(experiment)
    return {
        split: _collect(ShardStream(folder, manifest, split, batch_size, layers=[]), predict)
        for split in splits
    }


def _student_outputs(experiment: ExperimentConfig, method: str, manifest: Manifest) -> dict:
    model, backbone = load_student(experiment, method, manifest)
    return model_outputs(experiment, manifest, model, backbone)


def evaluate_experiment(experiment: ExperimentConfig, methods: list[str]) -> dict[str, Any]:
    """Score the teacher and each method; write metrics.json and report.md; return the metrics."""
    folder = resolve_shards_dir(experiment)
    manifest = Manifest.read(folder)
    bins = experiment.evaluate.ece_bins
    results = {
        "teacher": score(teacher_outputs(folder, manifest, experiment.evaluate.batch_size), bins)
    }
    for method in methods:
        torch.set_num_threads(experiment.method_config(method).torch_threads)
        results[method] = score(_student_outputs(experiment, method, manifest), bins)
    report = {
        "experiment": experiment.name,
        "teacher": manifest.teacher.short(),
        "dataset": manifest.dataset["name"],
        "metric": manifest.dataset.get("metric", "accuracy"),
        "counts": manifest.counts(),
        "methods": results,
    }
    out = experiment.runs_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(_markdown(report))
    log.info("wrote %s and %s", out / "metrics.json", out / "report.md")
    return report


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Return the summary table as Markdown, one row per method."""
    header = (
        "| method | ID acc | OOD avg | OOD worst | seen avg | held-out avg | held-out worst "
        "| ID−OOD gap | ECE ID | ECE OOD |"
    )
    lines = [header, "|---|" + "---:|" * 9]
    for method, m in results.items():
        lines.append(
            f"| {method} | {_pct(m.get('id_accuracy'))} | {_pct(m.get('ood_average'))} | "
            f"{_pct(m.get('ood_worst'))} | {_pct(m.get('ood_seen_average'))} | "
            f"{_pct(m.get('ood_held_out_average'))} | {_pct(m.get('ood_held_out_worst'))} | "
            f"{_pct(m.get('id_ood_gap'))} | {_pct(m.get('id_ece'))} | {_pct(m.get('ood_ece'))} |"
        )
    return "\n".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    methods = report["methods"]
    lines = [
        f"# {report['experiment']}: evaluation",
        "",
        f"Teacher `{report['teacher']}` on `{report['dataset']}`; samples per split: "
        f"{report['counts']}. Figures are percentages ({report['metric']}). OOD averages are taken "
        "over shifts (each corruption averaged over its severities); *seen* families were used to "
        "generate training views, *held-out* ones were not.",
        "",
        format_table(methods),
        "",
        "## Accuracy per OOD set",
        "",
    ]
    sets = sorted({s for m in methods.values() for s in m.get("ood_per_set", {})})
    lines.append("| set | " + " | ".join(methods) + " |")
    lines.append("|---|" + "---:|" * len(methods))
    for name in sets:
        row = [_pct(m.get("ood_per_set", {}).get(name)) for m in methods.values()]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
