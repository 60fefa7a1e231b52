"""Precompute benchmark: the Ray job against a bare teacher loop, and its scaling.

The Ray job is `pipeline.precompute.run_precompute` on clean ID images only (no OOD views), so
that it does the same teacher work as the bare loop: read, resize, teacher forward with layer
taps, encode and write WebDataset and Parquet shards, manifest. The bare loop is a plain
`torch.no_grad()` forward over the same images, preprocessed once and held in memory, with the
same batch size and torch threads as the teacher actor.

Every job runs in one Ray session that the benchmark starts, so Ray's own start-up is timed once
and apart. A job's fixed costs (actor start, model build, manifest) are separated from its
per-sample cost by fitting time = intercept + slope * samples over several data set sizes.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks.perf_common import linear_fit, summary, timed
from pipeline.datasets import get_reader
from pipeline.plan import build_plan
from pipeline.precompute import HEAD_FILE, ray_session, run_precompute
from pipeline.teacher import build_teacher
from pipeline.views import source_image
from schemas.config import ExperimentConfig, config_from_dict

__all__ = ["bench_config", "precompute_section"]

log = logging.getLogger(__name__)

BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist.yaml"


def bench_config(
    data_root: str,
    folder: Path,
    name: str,
    train_samples: int,
    views_per_image: int = 0,
    actors: int = 1,
    torch_threads: int = 2,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> tuple[ExperimentConfig, dict[str, Any]]:
    """Return the demo config resized for one benchmark job, as a config and as plain data.

    The OOD test grid and validation carve-out are off, and the ID test split keeps one image,
    so the job's samples are the ID training images and their views.
    """
    data = yaml.safe_load(BASE_CONFIG.read_text())
    data = copy.deepcopy(data)
    data["name"] = name
    data["dataset"].update(
        root=data_root, max_train_samples=train_samples, max_test_samples=1, val_samples=0
    )
    data["ood"]["views_per_image"] = views_per_image
    data["ood"]["test"]["corruptions"] = []
    data["precompute"].update(
        output=str(folder / "shards" / "{name}"),
        num_teacher_actors=actors,
        torch_threads=torch_threads,
    )
    data["run_dir"] = str(folder / "runs" / "{name}")
    for section, values in (overrides or {}).items():
        data[section].update(values)
    return config_from_dict(ExperimentConfig, data), data


def job_images(cfg: ExperimentConfig) -> np.ndarray:
    """Return the images the job feeds the teacher, built by the pipeline's own view code."""
    reader = get_reader(cfg.dataset.name, cfg.dataset.root, cfg.dataset.options)
    plan = build_plan(cfg, reader)
    items = [item for shard in plan.shards for item in shard.items]
    size = cfg.dataset.image_size
    return np.stack([source_image(item["path"], item["image_npy"], size) for item in items])


def bare_loop(cfg: ExperimentConfig, head: Path, images: np.ndarray, repeats: int) -> dict:
    """Time the teacher alone over preprocessed in-memory batches; return samples/s stats."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.precompute.torch_threads)
    try:
        teacher = build_teacher(cfg.teacher, cfg.dataset.image_size, head)
        size = cfg.precompute.batch_size
        batches = [teacher.preprocess(images[i : i + size]) for i in range(0, len(images), size)]

        def run() -> None:
            with torch.no_grad():
                for x in batches:
                    teacher(x)

        run()  # warm-up: first-call allocations and kernel selection
        rates = [len(images) / timed(run) for _ in range(repeats)]
    finally:
        torch.set_num_threads(previous_threads)
    return summary(rates)


def ray_job(cfg: ExperimentConfig, head: Path | None) -> float:
    """Run one precompute job into an empty folder and return its wall seconds.

    With `head`, that teacher head is placed in the folder first, so the job skips the linear
    probe fit and times the shard-writing pipeline alone.
    """
    folder = cfg.shards_dir()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if head is not None:
        shutil.copy(head, folder / HEAD_FILE)
    return timed(lambda: run_precompute(cfg))


def precompute_configs(cores: int) -> dict[str, dict[str, int]]:
    """Return the actor layouts to time: teacher threads on every core, one core left to the
    rest of the pipeline, and two actors sharing the cores."""
    configs = {"all cores": {"actors": 1, "torch_threads": cores}}
    if cores > 1:
        configs["one core spare"] = {"actors": 1, "torch_threads": cores - 1}
    configs["two actors"] = {"actors": 2, "torch_threads": max(1, cores // 2)}
    return configs


def _time_jobs(args, scratch: Path, cpus: float, head: Path, layout: dict, sizes, repeats):
    """Return {samples: [seconds per run]} for one actor layout."""
    # The actors reserve at most 1 CPU each and together leave 0.5 for a view task.
    reserved = {"teacher_num_cpus": min(1.0, (cpus - 0.5) / layout["actors"])}
    times: dict[int, list[float]] = {}
    for n in sizes:
        cfg, _ = bench_config(
            args.data_root,
            scratch,
            f"precompute-{layout['actors']}a{layout['torch_threads']}t-{n}",
            n,
            0,
            layout["actors"],
            layout["torch_threads"],
            overrides={"precompute": reserved},
        )
        times[n] = [ray_job(cfg, head) for _ in range(repeats)]
        log.info("precompute %s, %d samples: %s s", layout, n, [round(t, 2) for t in times[n]])
    return times


def precompute_section(args, scratch: Path) -> dict[str, Any]:
    """Measure the Ray job against the bare loop per actor layout, and its scaling."""
    sizes = args.precompute_sizes
    largest = max(sizes)
    configs = precompute_configs(os.cpu_count() or 1)
    result: dict[str, Any] = {"sizes": sizes, "configs": {}, "bare_loop": {}}

    start = time.perf_counter()
    with ray_session(args.ray_cpus) as ray:
        result["ray_start_seconds"] = time.perf_counter() - start
        cpus = ray.cluster_resources()["CPU"]

        # The first job also fits the linear probe: the whole job as a user runs it.
        cfg, _ = bench_config(args.data_root, scratch, "precompute-probe", min(sizes))
        result["job_with_probe_fit_seconds"] = ray_job(cfg, None)
        result["job_with_probe_fit_samples"] = min(sizes) + 1
        head = cfg.shards_dir() / HEAD_FILE

        # Every size is repeated for the main layout. The spare-core layout needs only two
        # sizes for its per-sample cost; the two-actor layout shows scaling, one run per size.
        plan = {
            "all cores": (sizes, args.repeats),
            "one core spare": ([sizes[len(sizes) // 2 - 1], largest], args.repeats),
            "two actors": (sizes, 1),
        }
        for name, layout in configs.items():
            layout_sizes, repeats = plan[name]
            times = _time_jobs(args, scratch, cpus, head, layout, layout_sizes, repeats)
            medians = [float(np.median(times[n])) for n in layout_sizes]
            # Each job also writes the one-image ID test split.
            result["configs"][name] = {
                **layout,
                "seconds": {str(n): summary(times[n]) for n in layout_sizes},
                "fit": linear_fit([n + 1 for n in layout_sizes], medians),
            }

    cfg, _ = bench_config(args.data_root, scratch, "bare", largest)
    images = job_images(cfg)
    for threads in sorted({layout["torch_threads"] for layout in configs.values()}):
        cfg.precompute.torch_threads = threads
        result["bare_loop"][str(threads)] = bare_loop(cfg, head, images, args.repeats)
    result["bare_loop_samples"] = len(images)
    result["batch_size"] = cfg.precompute.batch_size
    result["image_size"] = cfg.dataset.image_size

    for entry in result["configs"].values():
        bare = result["bare_loop"][str(entry["torch_threads"])]["median"]
        whole = entry["seconds"][str(largest)]
        entry["job_samples_per_s"] = {
            "median": (largest + 1) / whole["median"],
            "min": (largest + 1) / whole["max"],
            "max": (largest + 1) / whole["min"],
            "repeats": whole["repeats"],
        }
        entry["ratio_end_to_end"] = entry["job_samples_per_s"]["median"] / bare
        entry["ratio_per_sample"] = (1.0 / entry["fit"]["slope"]) / bare
    main = result["configs"]["all cores"]["fit"]["slope"]
    result["speedup_two_actors"] = main / result["configs"]["two actors"]["fit"]["slope"]
    return result
