"""Matplotlib figures of the experiment report, written as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["cka", "embedding", "heatmaps", "scatter"]


def scatter(path: Path, summary: dict, wise: dict, line) -> None:
    """ID versus average OOD accuracy per method, WiSE-FT curves and the baseline line."""
    from trainer.report import _predict_line

    fig, ax = plt.subplots(figsize=(8, 6))
    # The default colour cycle has 10 colours, so the marker changes every 10 methods.
    markers = "os^DvP*X"
    for index, (method, v) in enumerate(summary.items()):
        ids, oods = np.array(v["id_accuracy"]) * 100, np.array(v["ood_average"]) * 100
        ax.errorbar(
            ids.mean(),
            oods.mean(),
            xerr=ids.std(),
            yerr=oods.std(),
            fmt=markers[index // 10 % len(markers)],
            capsize=3,
            label=method,
        )
    for method, per_seed in wise.items():
        alphas = sorted(next(iter(per_seed.values())), key=float)
        ids = [np.mean([s[a]["id_accuracy"] for s in per_seed.values()]) * 100 for a in alphas]
        oods = [np.mean([s[a]["ood_average"] for s in per_seed.values()]) * 100 for a in alphas]
        ax.plot(ids, oods, "--", marker=".", label=f"WiSE-FT {method} (α {alphas[0]}→{alphas[-1]})")
    if line is not None:
        lo, hi = ax.get_xlim()
        xs = np.linspace(lo, hi, 50)
        ax.plot(
            xs,
            [100 * _predict_line(line, x / 100) for x in xs],
            ":",
            color="grey",
            label="baseline fit (logit space)",
        )
    ax.set_xlabel("ID test accuracy (%)")
    ax.set_ylabel("average OOD accuracy (%)")
    ax.set_title("ID versus OOD accuracy (mean over seeds, bars: 1 s.d.)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def heatmaps(path: Path, results: dict) -> None:
    """Accuracy per corruption (rows) and severity (columns), one panel per method."""
    methods = list(results)
    sets = sorted(
        {
            s
            for per_seed in results.values()
            for r in per_seed.values()
            for s in r.get("ood_per_set", {})
            if "/s" in s
        }
    )
    if not sets:
        return
    corruptions = sorted({s.split("/s")[0] for s in sets})
    severities = sorted({int(s.split("/s")[1]) for s in sets})
    cols = min(4, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 0.35 * len(corruptions) * rows + 1.5), squeeze=False
    )
    for ax, method in zip(axes.flat, methods, strict=False):
        grid = np.full((len(corruptions), len(severities)), np.nan)
        for i, c in enumerate(corruptions):
            for j, sev in enumerate(severities):
                vals = [r["ood_per_set"].get(f"{c}/s{sev}") for r in results[method].values()]
                vals = [v for v in vals if v is not None]
                if vals:
                    grid[i, j] = 100 * np.mean(vals)
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_title(method, fontsize=9)
        ax.set_xticks(range(len(severities)), [f"s{s}" for s in severities], fontsize=7)
        ax.set_yticks(range(len(corruptions)), corruptions, fontsize=7)
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6, color="w")
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.6, label="accuracy (%)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cka(path: Path, values: dict[str, dict[str, float]]) -> None:
    """Per-layer linear CKA between each student and the teacher on ID test images."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, per_layer in values.items():
        layers = list(per_layer)
        ax.plot(range(len(layers)), [per_layer[n] for n in layers], marker="o", label=method)
    ax.set_xticks(range(len(layers)), layers, rotation=30, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("linear CKA with the teacher")
    ax.set_title("Representation similarity to the pretrained model")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def embedding(path: Path, data: dict, method: str) -> None:
    """Joint t-SNE of teacher and fine-tuned features of the same images, coloured by class."""
    from sklearn.manifold import TSNE

    teacher, student = np.array(data["teacher"]), np.array(data["student"])
    labels = np.array(data["labels"])
    joint = TSNE(n_components=2, init="pca", random_state=0, perplexity=30).fit_transform(
        np.concatenate([teacher, student])
    )
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharex=True, sharey=True)
    for ax, points, title in (
        (axes[0], joint[: len(teacher)], "teacher"),
        (axes[1], joint[len(teacher) :], method),
    ):
        ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=6)
        ax.set_title(f"{title} ({data['layer']})")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("t-SNE of one joint embedding of teacher and student features (colour = class)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
