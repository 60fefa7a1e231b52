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


def _repeats(count: int) -> str:
    return f"{count} repeat" if count == 1 else f"{count} repeats"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _layout(name: str, entry: dict[str, Any]) -> str:
    threads = entry["torch_threads"]
    actors = entry["actors"]
    label = (
        f"{actors} actor{'s' if actors > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
    )
    return f"{label} ({name})"


def goal_rows(report: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """Return (measure, goal, measured, met) for every goal."""
    pre = report["precompute"]
    goal = GOALS["precompute_vs_bare"]
    rows = []
    for name, entry in pre["configs"].items():
        rows.append(
            (
                f"precompute per sample vs bare loop, {_layout(name, entry)}",
                f">= {goal}x",
                f"{entry['ratio_per_sample']:.2f}x",
                entry["ratio_per_sample"] >= goal,
            )
        )
    main = pre["configs"]["all cores"]
    rows.append(
        (
            f"precompute, whole job of {max(pre['sizes']) + 1} samples vs bare loop, "
            f"{_layout('all cores', main)}",
            f">= {goal}x",
            f"{main['ratio_end_to_end']:.2f}x",
            main["ratio_end_to_end"] >= goal,
        )
    )
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
        f"{_repeats(report['settings']['repeats'])} unless a table says otherwise. Ratios divide "
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
    largest = max(pre["sizes"])
    lines = [
        "## Precompute",
        "",
        "The Ray job is `run_precompute` on clean ID images (no OOD views), with the teacher "
        "head fitted beforehand: read, resize, teacher forward with taps in a Ray actor, encode, "
        "write tar and Parquet shards and the manifest. The bare loop runs the same teacher "
        f"(`torch.no_grad`, batch {pre['batch_size']}, as many torch threads as the actors "
        "together) over the same "
        f"{pre['bare_loop_samples']} images, preprocessed once and held in memory. It runs once "
        "before each job of the largest size, so both see the same state of the machine. "
        "Per-sample costs come from a least-squares fit of job time against samples, and the "
        "intercept is the fixed cost of a job.",
        "",
        f"| actor layout | bare loop, samples/s | job of {largest + 1} samples, samples/s | "
        "job ms per sample | bare ms per sample | job fixed cost, s | per sample / bare | "
        "whole job / bare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in pre["configs"].items():
        bare = entry["bare_loop"]
        lines.append(
            f"| {_layout(name, entry)} | {_stat(bare)} | {_stat(entry['job_samples_per_s'])} | "
            f"{1000 * entry['fit']['slope']:.2f} | {1000 / bare['median']:.2f} | "
            f"{entry['fit']['intercept']:.1f} | {entry['ratio_per_sample']:.2f}x | "
            f"{entry['ratio_end_to_end']:.2f}x |"
        )
    lines += [
        "",
        f"Ray cluster start, once per session: {pre['ray_start_seconds']:.1f} s. A whole job "
        f"of {pre['job_with_probe_fit_samples']} samples including the linear-probe fit (a "
        f"second pass of the teacher over the ID training images): "
        f"{pre['job_with_probe_fit_seconds']:.1f} s.",
        "",
        "### Scaling",
        "",
        "Job wall time in seconds by ID training samples; every job also writes one ID test "
        "image, so a job of 4000 training samples stores 4001. Where min and max equal the "
        "median, the cell is one run.",
        "",
        "| samples | " + " | ".join(_layout(n, e) for n, e in pre["configs"].items()) + " |",
        "|---:|" + "---:|" * len(pre["configs"]),
    ]
    for n in pre["sizes"]:
        cells = [
            _stat(entry["seconds"][str(n)], 1) if str(n) in entry["seconds"] else "–"
            for entry in pre["configs"].values()
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| actor layout | slope, ms per sample | intercept, s | R² |",
        "|---|---:|---:|---:|",
    ]
    for name, entry in pre["configs"].items():
        fit = entry["fit"]
        # Two points always fit exactly, so their R² carries no information.
        r2 = f"{fit['r2']:.3f}" if len(entry["seconds"]) > 2 else "– (2 sizes)"
        lines.append(
            f"| {_layout(name, entry)} | {1000 * fit['slope']:.2f} | {fit['intercept']:.1f} | "
            f"{r2} |"
        )
    lines += [
        "",
        f"Two actors process {pre['speedup_two_actors']:.2f}x as many samples per second as "
        "one actor on all cores, from the slopes (above 1 is faster). Each layout has its own "
        "bare-loop runs, taken just before its jobs; the spread between layouts with the same "
        "threads shows how much the machine drifted.",
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
        f"{_repeats(first['repeats'])} of {first['steps']} timed steps of "
        f"{first['samples_per_step']:.0f} samples, {training['torch_threads']} torch threads. "
        "The three kinds run the same batches, in an order that rotates between repeats.",
        "",
    ]
    memory = training["memory"]
    lines += [
        "### Memory",
        "",
        f"Peak resident memory (VmHWM) of `{memory['command']}` in a child process, "
        "streaming, one run per shard set.",
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
    """Samples from which a whole job on all cores reaches the goal, or None if it never does."""
    entry = pre["configs"]["all cores"]
    fit = entry["fit"]
    bare = 1.0 / entry["bare_loop"]["median"]
    margin = bare - GOALS["precompute_vs_bare"] * fit["slope"]
    if margin <= 0:
        return None
    return GOALS["precompute_vs_bare"] * fit["intercept"] / margin


def _limits(report: dict[str, Any]) -> list[str]:
    """Explain, from the measured figures, what bounds each ratio."""
    pre = report["precompute"]
    main = pre["configs"]["all cores"]
    spare = pre["configs"].get("one core spare")
    breakeven = _breakeven_samples(pre)
    reach = (
        f"reaches {GOALS['precompute_vs_bare']}x from about {breakeven:,.0f} samples"
        if breakeven is not None
        else "never reaches the goal, because the per-sample cost alone misses it"
    )
    lines = [
        "## What limits each figure",
        "",
        f"- **Precompute, teacher threads on every core.** The job reaches "
        f"{main['ratio_per_sample']:.2f}x of the bare loop per sample. The teacher's threads "
        "already fill every core, so the rest of the job takes its CPU time from them. That "
        "rest is the view tasks (decode and resize), the driver's PNG and safetensors encoding "
        "and tar and Parquet writing, and Ray's transfers of each batch. A descheduled "
        "intra-op thread also stalls the other one at the next barrier, so stolen time costs "
        "the teacher more than its own length.",
    ]
    if spare is not None:
        lines.append(
            f"- **Precompute, one core spare.** With a core left to the rest of the pipeline "
            f"the job reaches {spare['ratio_per_sample']:.2f}x of a bare loop with the same "
            "threads. The driver, the view tasks and Ray's own threads still share that core, "
            "and they preempt the teacher when they need more: Ray starts its worker processes "
            "at a lower scheduling priority (nice 15 here) than the driver."
        )
    lines.append(
        f"- **Precompute, whole job.** Each job also pays a fixed {main['fit']['intercept']:.1f} "
        "s. A new Ray worker imports torch and builds the teacher. The driver builds the "
        "teacher to fingerprint it and the plan to skip finished shards. The pipeline fills "
        "and drains, and the manifest checksums every shard. The whole-job ratio grows with "
        f"the job and {reach}."
    )
    for method, name in METHOD_NAMES.items():
        r = report["training"][method]
        share = r["teacher_share_of_live_step"]["median"]
        bound = 1.0 / (1.0 - share) if share < 1 else float("inf")
        title = name[0].upper() + name[1:]
        lines.append(
            f"- **{title}, stored vs live teacher.** The live teacher's forward pass on the OOD "
            f"batch takes {100 * share:.0f}% of a live-teacher step. Stored targets remove only "
            f"that time, so the ratio stays near 1 / (1 - {share:.2f}) = {bound:.2f}x "
            f"(measured {r['stored_vs_live']:.2f}x) for a teacher as large as the student. A "
            "larger teacher, a teacher on more of the batch, or OOD views that need the "
            "teacher (PGD) raise it."
        )
    two = pre["configs"]["two actors"]
    lines += [
        f"- **Two actors.** Two actors with {two['torch_threads']} thread(s) each process "
        f"{pre['speedup_two_actors']:.2f}x as many samples per second as one actor with "
        f"{main['torch_threads']} threads on the same cores (above 1 is faster). Intra-op "
        "threads wait for each other at every operator, which costs more on small images and "
        "when other work takes a core, so one actor per core can beat one actor with all "
        "cores. Each actor holds its own copy of the teacher and pays its own start-up.",
        "- **Stored vs limit.** The stored step adds the layer taps, the KD and activation "
        "losses, and reading batches. A background thread reads and decodes the next batches "
        "during the step (`train.prefetch_batches`); the *waiting* column is the time the "
        "step still waited for it. On a machine whose cores the student's threads fill, the "
        "reading thread takes CPU time from the step, so the ratio is expected at or just "
        "below 1; a median above 1 lies within the spread of the repeats.",
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
    """Plot precompute wall time against samples per actor layout, with the fitted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre = report["precompute"]
    largest = max(pre["sizes"]) + 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, entry), color in zip(pre["configs"].items(), ("C0", "C1", "C2"), strict=False):
        sizes = sorted(int(n) for n in entry["seconds"])
        seconds = [entry["seconds"][str(n)]["median"] for n in sizes]
        fit = entry["fit"]
        ax.plot([n + 1 for n in sizes], seconds, "o", color=color, label=_layout(name, entry))
        ax.plot(
            [0, largest],
            [fit["intercept"], fit["intercept"] + fit["slope"] * largest],
            "-",
            color=color,
            alpha=0.5,
            label=f"fit: {fit['intercept']:.1f} s + {1000 * fit['slope']:.2f} ms/sample",
        )
        bare = entry["bare_loop"]["median"]
        ax.plot(
            [0, largest],
            [0, largest / bare],
            ":",
            color=color,
            label=f"bare teacher loop, {entry['actors'] * entry['torch_threads']} thread(s)",
        )
    ax.set_xlabel("samples")
    ax.set_ylabel("wall time (s)")
    ax.set_title("Precompute time against samples")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
