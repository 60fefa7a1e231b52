"""The experiment report: a results table with 95% confidence intervals, and its figures.

Figures: ID-versus-OOD accuracy of every method with the WiSE-FT curves and the baseline line
that effective robustness is measured against; accuracy per corruption and severity; per-layer
CKA with the teacher; and a t-SNE of teacher and fine-tuned features.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from schemas.config import ExperimentConfig
from schemas.manifest import Manifest

__all__ = ["effective_robustness_line", "mean_ci", "verdict", "write_report"]


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Return the mean and the half-width of its 95% t-interval (0 for a single value)."""
    array = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(array) == 0:
        return float("nan"), float("nan")
    if len(array) == 1:
        return float(array[0]), 0.0
    half = stats.t.ppf(0.975, len(array) - 1) * array.std(ddof=1) / math.sqrt(len(array))
    return float(array.mean()), float(half)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def effective_robustness_line(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Fit logit(OOD) = a · logit(ID) + b through baseline (ID, OOD) accuracies.

    Effective robustness is a method's OOD accuracy minus this line at its ID accuracy
    (Taori et al., 2020). Returns None with fewer than two distinct baseline points.
    """
    if len({p[0] for p in points}) < 2:
        return None
    ids, oods = (np.array(v) for v in zip(*points, strict=True))
    slope, intercept = np.polyfit(_logit(ids), _logit(oods), 1)
    return float(slope), float(intercept)


def _predict_line(line: tuple[float, float], id_acc: float) -> float:
    z = line[0] * _logit(np.array(id_acc)) + line[1]
    return float(1.0 / (1.0 + np.exp(-z)))


def _fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, half = mean_ci(values)
    if math.isnan(mean):
        return "–"
    return f"{scale * mean:.{digits}f} ± {scale * half:.{digits}f}"


def _summaries(results: dict[str, dict[int, dict]], line) -> dict[str, dict[str, Any]]:
    summary = {}
    for method, per_seed in results.items():
        runs = list(per_seed.values())
        values = {
            key: [r.get(key) for r in runs]
            for key in (
                "id_accuracy",
                "ood_average",
                "ood_worst",
                "ood_seen_average",
                "ood_held_out_average",
                "id_ood_gap",
                "id_ece",
                "ood_ece",
                "epoch_seconds",
                "latency_ms",
                "trainable_parameters",
            )
        }
        if line is not None:
            values["effective_robustness"] = [
                r["ood_average"] - _predict_line(line, r["id_accuracy"]) for r in runs
            ]
        shifts = sorted({s for r in runs for s in r.get("ood_per_shift", {})})
        values.update({f"shift:{s}": [r["ood_per_shift"].get(s) for r in runs] for s in shifts})
        summary[method] = values
    return summary


def _table(summary: dict[str, dict[str, list]], storage: float) -> list[str]:
    header = [
        "method",
        "ID acc",
        "OOD avg",
        "OOD worst",
        "seen avg",
        "held-out avg",
        "ID−OOD gap",
        "ECE ID",
        "eff. robustness",
        "trainable params",
        "s / epoch",
        "latency ms/img",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method, v in summary.items():
        params = int(np.mean(v["trainable_parameters"]))
        lines.append(
            "| "
            + " | ".join(
                [
                    method,
                    _fmt(v["id_accuracy"]),
                    _fmt(v["ood_average"]),
                    _fmt(v["ood_worst"]),
                    _fmt(v["ood_seen_average"]),
                    _fmt(v["ood_held_out_average"]),
                    _fmt(v["id_ood_gap"]),
                    _fmt(v["id_ece"]),
                    _fmt(v.get("effective_robustness", [])),
                    f"{params:,}",
                    _fmt(v["epoch_seconds"], 1.0),
                    _fmt(v["latency_ms"], 1.0, 2),
                ]
            )
            + " |"
        )
    lines.append("")
    lines.append(
        f"Shard storage: {storage:,.0f} bytes per stored sample (tar), shared by all methods."
    )
    return lines


def _shift_table(summary: dict[str, dict[str, list]]) -> list[str]:
    shifts = sorted({k[6:] for v in summary.values() for k in v if k.startswith("shift:")})
    lines = ["| method | " + " | ".join(shifts) + " |", "|---|" + "---:|" * len(shifts)]
    for method, v in summary.items():
        lines.append(
            f"| {method} | " + " | ".join(_fmt(v.get(f"shift:{s}", [])) for s in shifts) + " |"
        )
    return lines


VERDICT_METRICS = {
    "id_accuracy": "ID accuracy",
    "ood_average": "average OOD accuracy",
    "ood_held_out_average": "held-out-family accuracy",
    "ood_worst": "worst-shift accuracy",
}


def verdict(
    summary: dict[str, dict[str, list]],
    baselines: list[str],
    metrics: dict[str, str] = VERDICT_METRICS,
) -> list[str]:
    """List, per RobustKD-FM variant and baseline, where it wins, loses or ties.

    A difference counts only when the two 95% intervals do not overlap.
    """
    lines = []
    for method in (m for m in summary if m.startswith("robustkd")):
        wins, losses, ties = [], [], []
        for base in baselines:
            for key, label in metrics.items():
                mean, half = mean_ci(summary[method].get(key, []))
                base_mean, base_half = mean_ci(summary[base].get(key, []))
                if math.isnan(mean) or math.isnan(base_mean):
                    continue
                gap = 100 * (mean - base_mean)
                if mean - half > base_mean + base_half:
                    wins.append(f"beats {base} on {label} ({gap:+.1f} points)")
                elif mean + half < base_mean - base_half:
                    losses.append(f"trails {base} on {label} ({gap:+.1f} points)")
                else:
                    ties.append(f"no clear difference from {base} on {label}")
        parts = wins + losses or ["shows no difference beyond the intervals"]
        lines.append(f"- **{method}** " + "; ".join(parts) + ".")
        if ties:
            lines.append(f"  ({method}: " + "; ".join(ties) + ".)")
    return lines


def write_report(
    cfg: ExperimentConfig,
    manifest: Manifest,
    results: dict,
    wise: dict,
    analysis: dict,
    chosen: dict,
    rule,
    wall_seconds: float,
) -> Path:
    """Write report.md, results.json and the PNG figures; return the report folder."""
    from trainer import report_figures as figures

    out = cfg.runs_dir() / "report"
    out.mkdir(parents=True, exist_ok=True)
    baselines = [m for m in cfg.runner.baselines if m in results]
    points = [
        (
            np.mean([r["id_accuracy"] for r in results[m].values()]),
            np.mean([r["ood_average"] for r in results[m].values()]),
        )
        for m in baselines
    ]
    line = effective_robustness_line(points)
    summary = _summaries(results, line)
    samples = sum(s.samples for s in manifest.shards)
    storage = sum(s.tar_bytes for s in manifest.shards) / max(1, samples)

    figures.scatter(out / "id_vs_ood.png", summary, wise, line)
    figures.heatmaps(out / "corruption_severity.png", results)
    if analysis.get("cka"):
        figures.cka(out / "cka.png", analysis["cka"])
    if analysis.get("embedding"):
        figures.embedding(out / "tsne.png", analysis["embedding"], cfg.runner.embedding_method)

    rule_text = (
        "no hyperparameters were swept"
        if not chosen
        else f"swept hyperparameters were chosen on `{rule[0]}` by `{rule[1]}` with seed "
        f"{cfg.runner.seeds[0]}; OOD test sets were never used for selection"
    )
    lines = [
        f"# Experiment {cfg.name}",
        "",
        f"Teacher `{manifest.teacher.short()}` on `{manifest.dataset['name']}`; "
        f"{len(cfg.runner.seeds)} seeds ({', '.join(map(str, cfg.runner.seeds))}); figures are "
        "mean ± 95% CI (t-distribution over seeds), accuracies in percent. Samples per split: "
        f"{manifest.counts()}.",
        "",
        f"Selection rule: {rule_text}. Chosen: {json.dumps(chosen) if chosen else 'none'}.",
        f"Effective robustness is measured against the logit-space line through "
        f"{', '.join(baselines) or 'no baselines'}.",
        "",
        "## Results",
        "",
        *_table(summary, storage),
        "",
        "## Where RobustKD-FM wins and where it does not",
        "",
        "Compared with each baseline; a difference counts only when the 95% intervals do not "
        "overlap. Times per epoch and latencies were measured on a shared machine and are "
        "noisy; compare accuracies, not times.",
        "",
        *verdict(summary, baselines),
        "",
        "## Accuracy per shift (each corruption averaged over severities)",
        "",
        *_shift_table(summary),
        "",
        "## Figures",
        "",
        "![ID versus OOD accuracy](id_vs_ood.png)",
        "",
        "![Accuracy per corruption and severity](corruption_severity.png)",
        "",
    ]
    if analysis.get("cka"):
        lines += ["![Per-layer CKA with the teacher](cka.png)", ""]
    if analysis.get("embedding"):
        lines += ["![t-SNE of teacher and fine-tuned features](tsne.png)", ""]
    lines += [
        "## Run",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'unknown CPU'}, "
        f"{_cpu_count()} CPUs, Python {platform.python_version()}. Wall time of this "
        f"invocation: {wall_seconds / 60:.1f} min (runs finished earlier were reused).",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "results": results,
                "wise": wise,
                "analysis_cka": analysis.get("cka"),
                "chosen": chosen,
                "selection": rule,
                "effective_robustness_line": line,
            },
            indent=2,
        )
    )
    return out


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 0
