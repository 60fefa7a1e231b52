"""Render the `make bench` report: goals first, then one section per measure, and a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["GOALS", "goal_rows", "markdown", "scaling_figure"]

GOALS = {
    "stored_vs_limit": 0.9,
    "stored_vs_live": 1.5,
    "precompute_vs_bare": 0.85,
    "memory_growth": 1.10,
}
"""Targets: stored-target step >= 0.9x the student-only limit and >= 1.5x the live-teacher step;
precompute >= 0.85x the bare teacher loop; peak training memory at 4x data <= 1.10x that at 1x."""

METHOD_NAMES = {"lora": "LoRA", "full": "full fine-tuning"}


def _stat(value: dict[str, float], digits: int = 0) -> str:
    return f"{value['median']:.{digits}f} [{value['min']:.{digits}f}, {value['max']:.{digits}f}]"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def goal_rows(report: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """Return (measure, goal, measured, met) for every goal."""
    pre = report["precompute"]
    rows = [
        (
            "precompute throughput per sample vs bare loop (fitted slope)",
            f">= {GOALS['precompute_vs_bare']}x",
            f"{pre['ratio_per_sample']:.2f}x",
            pre["ratio_per_sample"] >= GOALS["precompute_vs_bare"],
        ),
        (
            f"precompute, whole job of {max(pre['sizes']) + 1} samples vs bare loop",
            f">= {GOALS['precompute_vs_bare']}x",
            f"{pre['ratio_end_to_end']:.2f}x",
            pre["ratio_end_to_end"] >= GOALS["precompute_vs_bare"],
        ),
    ]
    training = report["training"]
    for method, name in METHOD_NAMES.items():
        result = training[method]
        rows.append(
            (
                f"{name}: stored-target step vs student-only limit",
                f">= {GOALS['stored_vs_limit']}x",
                f"{result['stored_vs_limit']:.2f}x",
                result["stored_vs_limit"] >= GOALS["stored_vs_limit"],
            )
        )
        rows.append(
            (
                f"{name}: stored-target step vs live-teacher step",
                f">= {GOALS['stored_vs_live']}x",
                f"{result['stored_vs_live']:.2f}x",
                result["stored_vs_live"] >= GOALS["stored_vs_live"],
            )
        )
    memory = training["memory"]
    rows.append(
        (
            "peak training memory, 4x data vs 1x data",
            f"<= {GOALS['memory_growth']:.2f}x",
            f"{memory['ratio_4x_to_1x']:.3f}x",
            memory["ratio_4x_to_1x"] <= GOALS["memory_growth"],
        )
    )
    return rows


def _header(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    batch = report["settings"]["train_batch_size"]
    memory = f"{m['memory_gib']:.0f} GiB" if m["memory_gib"] else "unknown memory"
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`{report['command'].strip()}`) on {report['date']} at commit "
        f"`{report['git_commit']}`, in {report['seconds']['total'] / 60:.1f} min.",
        "",
    ]
    if report["smoke"]:
        lines += ["> Smoke run: tiny sizes and one repeat. These figures mean nothing.", ""]
    lines += [
        f"Machine: {m['cpu']}, {m['cores']} cores, {memory}, "
        f"GPU: {m['gpu'] or 'none'}; Python {m['python']}, torch {m['torch']}, Ray {m['ray']}. "
        f"One-minute load average at the start: {m['load_average_1min']:.2f}.",
        "",
        "Every figure is the median over repeats, with [min, max]; "
        f"{report['settings']['repeats']} repeats unless a table says otherwise. Ratios divide "
        "medians measured in this one run. The workload is the demo config "
        "(`configs/fashion-mnist.yaml`): EfficientNet-Lite0 at 64 px with three mean-pooled "
        f"taps, a 10-class linear-probe head, teacher batches of "
        f"{report['precompute']['batch_size']}, training batches of {batch} ID + {batch} OOD "
        "samples, on CPU.",
        "",
    ]
    return lines


def _goals(report: dict[str, Any]) -> list[str]:
    lines = ["## Goals", "", "| measure | goal | measured | met |", "|---|---|---:|---|"]
    for measure, goal, measured, ok in goal_rows(report):
        lines.append(f"| {measure} | {goal} | {measured} | {_met(ok)} |")
    return lines + [""]


def _precompute(report: dict[str, Any]) -> list[str]:
    pre = report["precompute"]
    one, two = pre["workers"]["1"], pre["workers"]["2"]
    largest = max(pre["sizes"])
    lines = [
        "## Precompute",
        "",
        "The Ray job is `run_precompute` on clean ID images (no OOD views), with the teacher "
        "head fitted beforehand: read, resize, teacher forward with taps in a Ray actor, encode, "
        "write tar and Parquet shards and the manifest. The bare loop runs the same teacher "
        f"(`torch.no_grad`, batch {pre['batch_size']}, {one['torch_threads']} torch threads) "
        "over the same images, preprocessed once and held in memory.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| bare loop, samples/s | {_stat(pre['bare_loop'])} |",
        f"| Ray job, {largest + 1} samples, 1 worker, samples/s | "
        f"{_stat(pre['job_samples_per_s'])} |",
        f"| Ray job, cost per sample (fitted slope), ms | {1000 * one['fit']['slope']:.2f} |",
        f"| Ray job, fixed cost per job (fitted intercept), s | {one['fit']['intercept']:.1f} |",
        f"| bare loop, cost per sample, ms | {1000 / pre['bare_loop']['median']:.2f} |",
        f"| Ray cluster start (once per session), s | {pre['ray_start_seconds']:.1f} |",
        f"| whole job with the linear-probe fit, {pre['job_with_probe_fit_samples']} samples, s | "
        f"{pre['job_with_probe_fit_seconds']:.1f} |",
        "",
        "### Scaling",
        "",
        "Job wall time in seconds by ID training samples (one run per cell, except "
        f"{pre['workers']['1']['seconds'][str(largest)]['repeats']} for the largest size with "
        "one worker). A worker is a teacher actor.",
        "",
        f"| samples | 1 worker, {one['torch_threads']} threads | "
        f"2 workers, {two['torch_threads']} thread each |",
        "|---:|---:|---:|",
    ]
    for n in pre["sizes"]:
        lines.append(
            f"| {n} | {_stat(one['seconds'][str(n)], 1)} | {_stat(two['seconds'][str(n)], 1)} |"
        )
    lines += [
        "",
        "| workers | slope, ms per sample | intercept, s | R² |",
        "|---|---:|---:|---:|",
    ]
    for workers, fit in (("1", one["fit"]), ("2", two["fit"])):
        lines.append(
            f"| {workers} | {1000 * fit['slope']:.2f} | {fit['intercept']:.1f} | {fit['r2']:.3f} |"
        )
    lines += [
        "",
        f"Two workers change the per-sample cost by {pre['speedup_two_workers']:.2f}x "
        "(slope with one worker / slope with two).",
        "",
        f"![Precompute time against samples]({report['figures']['scaling']})",
        "",
    ]
    return lines


def _training(report: dict[str, Any]) -> list[str]:
    training = report["training"]
    lines = [
        "## Training",
        "",
        "One RobustKD-FM step (task + KD + activation loss, lambda_kd = lambda_act = 1) in three "
        "forms, in samples/s. *stored*: `TrainRecipe.train_step` on batches streamed from the "
        "shard tars. *live teacher*: the same stream, with the teacher computing the KD and "
        "activation targets on the OOD batch before the same step. *limit*: student forward and "
        "backward with cross-entropy on the same images, preprocessed and held in memory.",
        "",
        "| method | limit | stored | live teacher | stored / limit | stored / live | "
        "stored step waiting for batches |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method, name in METHOD_NAMES.items():
        r = training[method]
        lines.append(
            f"| {name} | {_stat(r['limit'])} | {_stat(r['stored'])} | "
            f"{_stat(r['live_teacher'])} | {r['stored_vs_limit']:.2f}x | "
            f"{r['stored_vs_live']:.2f}x | {100 * r['waiting_share']['median']:.1f}% |"
        )
    first = training[next(iter(METHOD_NAMES))]
    lines += [
        "",
        f"{first['steps']} timed steps of {first['samples_per_step']} samples per repeat, "
        f"{training['torch_threads']} torch threads.",
        "",
    ]
    memory = training["memory"]
    lines += [
        "### Memory",
        "",
        f"Peak resident memory of `{memory['command']}` in a child process, streaming.",
        "",
        "| shard set | samples | peak RSS, MiB | wall, s |",
        "|---|---:|---:|---:|",
    ]
    for scale in ("1x", "4x"):
        r = memory[scale]
        lines.append(
            f"| {scale} | {r['samples']} | {r['peak_rss_bytes'] / 2**20:.0f} | {r['seconds']:.0f} |"
        )
    return lines + ["", f"4x / 1x: {memory['ratio_4x_to_1x']:.3f}.", ""]


def _storage(report: dict[str, Any]) -> list[str]:
    storage = report["storage"]
    lines = [
        "## Storage",
        "",
        f"Bytes per sample of shards written by the pipeline's `ShardWriter` for "
        f"{storage['samples']} images at {storage['image_size']} px, taps "
        f"{', '.join(storage['taps'])}. *targets* is the payload of the stored arrays; tar and "
        "Parquet include the PNG image, metadata and container overhead.",
        "",
        "| storage option | targets | tar | Parquet |",
        "|---|---:|---:|---:|",
    ]
    for row in storage["rows"]:
        lines.append(
            f"| {row['option']} | {row['target_bytes']} | {row['tar_bytes_per_sample']:.0f} | "
            f"{row['parquet_bytes_per_sample']:.0f} |"
        )
    return lines + [""]


def _breakeven_samples(pre: dict[str, Any]) -> float | None:
    """Samples from which a whole job reaches the precompute goal, or None if it never does."""
    fit = pre["workers"]["1"]["fit"]
    bare = 1.0 / pre["bare_loop"]["median"]
    margin = bare - GOALS["precompute_vs_bare"] * fit["slope"]
    if margin <= 0:
        return None
    return GOALS["precompute_vs_bare"] * fit["intercept"] / margin


def _limits(report: dict[str, Any]) -> list[str]:
    """Explain, from the measured figures, what bounds each ratio."""
    pre = report["precompute"]
    fit = pre["workers"]["1"]["fit"]
    bare_ms = 1000 / pre["bare_loop"]["median"]
    breakeven = _breakeven_samples(pre)
    reach = (
        f"reaches {GOALS['precompute_vs_bare']}x from about {breakeven:,.0f} samples"
        if breakeven is not None
        else "never reaches the goal, because the per-sample cost alone misses it"
    )
    lines = [
        "## What limits each figure",
        "",
        f"- **Precompute, per sample.** The job spends {1000 * fit['slope']:.2f} ms per sample "
        f"against the bare loop's {bare_ms:.2f} ms. The teacher's torch threads already use "
        "every core, so the rest of the job competes with it: view tasks (decode and resize), "
        "PNG and safetensors encoding and tar and Parquet writing in the driver, and Ray's "
        "transfers of each batch.",
        f"- **Precompute, whole job.** Each job also pays a fixed {fit['intercept']:.1f} s: a "
        "new Ray worker imports torch and builds the teacher, the driver builds the teacher "
        "to fingerprint it and the plan to skip finished shards, and the manifest checksums "
        f"every shard. The whole-job ratio therefore grows with the job and {reach}.",
    ]
    for method, name in METHOD_NAMES.items():
        r = report["training"][method]
        share = r["teacher_share_of_live_step"]["median"]
        bound = 1.0 / (1.0 - share) if share < 1 else float("inf")
        lines.append(
            f"- **{name}, stored vs live teacher.** The live teacher's forward pass on the OOD "
            f"batch takes {100 * share:.0f}% of a live-teacher step. Stored targets remove "
            f"only that time, so this ratio cannot exceed {bound:.2f}x for a teacher as large "
            "as the student; a larger teacher, or OOD views that need the teacher (PGD), "
            "raise the bound."
        )
    lines += [
        "- **Stored vs limit.** The stored step adds the layer taps, the KD and activation "
        "losses, and reading batches. A background thread reads and decodes the next batches "
        "during the step (`train.prefetch_batches`); the *waiting* column is the time the "
        "step still waited for it. On a machine whose cores the student's threads fill, the "
        "reading thread takes CPU time from the step, so the ratio stays below 1.",
        "- **Two workers.** Two actors with one thread each use the same two cores as one "
        "actor with two threads, so no speed-up is possible here; the row shows the cost of "
        "the second actor (its start-up and memory).",
        "",
    ]
    return lines


def markdown(report: dict[str, Any], ood_markdown: str) -> str:
    """Return the whole report; `ood_markdown` is the OOD generator benchmark's own table."""
    lines = _header(report) + _goals(report) + _precompute(report) + _training(report)
    lines += _storage(report)
    lines += _limits(report)
    seconds = report["seconds"]
    lines += [
        ood_markdown.replace("## OOD generators", "## OOD generation", 1).rstrip(),
        "",
        "## Section times",
        "",
        "| section | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {value:.0f} |" for name, value in seconds.items()]
    return "\n".join(lines) + "\n"


def scaling_figure(report: dict[str, Any], path: Path) -> None:
    """Plot precompute wall time against samples per worker count, with the fitted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre = report["precompute"]
    sizes = [n + 1 for n in pre["sizes"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for workers, style in (("1", "o-"), ("2", "s--")):
        result = pre["workers"][workers]
        seconds = [result["seconds"][str(n)]["median"] for n in pre["sizes"]]
        fit = result["fit"]
        ax.plot(sizes, seconds, style[0], label=f"Ray job, {workers} worker(s)")
        ax.plot(
            [0, max(sizes)],
            [fit["intercept"], fit["intercept"] + fit["slope"] * max(sizes)],
            style[1:],
            alpha=0.6,
            label=f"fit: {fit['intercept']:.1f} s + {1000 * fit['slope']:.2f} ms/sample",
        )
    bare = pre["bare_loop"]["median"]
    ax.plot([0, max(sizes)], [0, max(sizes) / bare], ":", color="gray", label="bare teacher loop")
    ax.set_xlabel("samples")
    ax.set_ylabel("wall time (s)")
    ax.set_title("Precompute time against samples")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
