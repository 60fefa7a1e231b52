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


class BareLoop:
    """The teacher alone over preprocessed in-memory batches: the limit of a precompute job."""

    def __init__(self, cfg: ExperimentConfig, head: Path, images: np.ndarray):
        self.teacher = build_teacher(cfg.teacher, cfg.dataset.image_size, head)
        size = cfg.precompute.batch_size
        self.batches = [
            self.teacher.preprocess(images[i : i + size]) for i in range(0, len(images), size)
        ]
        self.samples = len(images)

    @torch.no_grad()
    def rate(self, torch_threads: int) -> float:
        """Return samples/s of one pass with `torch_threads` threads, after a one-batch warm-up."""
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(torch_threads)
        try:
            self.teacher(self.batches[0])
            start = time.perf_counter()
            for x in self.batches:
                self.teacher(x)
            return self.samples / (time.perf_counter() - start)
        finally:
            torch.set_num_threads(previous_threads)


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


def _time_jobs(
    args, scratch: Path, cpus: float, head: Path, layout: dict, sizes, repeats, bare: BareLoop
):
    """Return ({samples: [seconds per run]}, [bare-loop samples/s]) for one actor layout.

    Before each job of the largest size, the bare loop runs once with the layout's threads in
    all, so the two see the same state of a shared machine.
    """
    # The actors reserve at most 1 CPU each and together leave 0.5 for a view task.
    reserved = {"teacher_num_cpus": min(1.0, (cpus - 0.5) / layout["actors"])}
    times: dict[int, list[float]] = {}
    bare_rates: list[float] = []
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
        times[n] = []
        for _ in range(repeats):
            if n == max(sizes):
                # The bare loop gets as many threads as all actors together.
                bare_rates.append(bare.rate(layout["actors"] * layout["torch_threads"]))
            times[n].append(ray_job(cfg, head))
        log.info("precompute %s, %d samples: %s s", layout, n, [round(t, 2) for t in times[n]])
    return times, bare_rates


def precompute_section(args, scratch: Path) -> dict[str, Any]:
    """Measure the Ray job against the bare loop per actor layout, and its scaling."""
    sizes = args.precompute_sizes
    largest = max(sizes)
    configs = precompute_configs(os.cpu_count() or 1)
    result: dict[str, Any] = {"sizes": sizes, "configs": {}}

    start = time.perf_counter()
    with ray_session(args.ray_cpus) as ray:
        result["ray_start_seconds"] = time.perf_counter() - start
        cpus = ray.cluster_resources()["CPU"]

        # The first job also fits the linear probe: the whole job as a user runs it.
        cfg, _ = bench_config(args.data_root, scratch, "precompute-probe", min(sizes))
        result["job_with_probe_fit_seconds"] = ray_job(cfg, None)
        result["job_with_probe_fit_samples"] = min(sizes) + 1
        head = cfg.shards_dir() / HEAD_FILE
        cfg, _ = bench_config(args.data_root, scratch, "bare", largest)
        bare = BareLoop(cfg, head, job_images(cfg))

        # Every size is repeated for the main layout. The spare-core layout needs only two
        # sizes for its per-sample cost; the two-actor layout shows scaling, one run per size.
        plan = {
            "all cores": (sizes, args.repeats),
            "one core spare": ([sizes[len(sizes) // 2 - 1], largest], args.repeats),
            "two actors": (sizes, 1),
        }
        for name, layout in configs.items():
            layout_sizes, repeats = plan[name]
            times, bare_rates = _time_jobs(
                args, scratch, cpus, head, layout, layout_sizes, repeats, bare
            )
            medians = [float(np.median(times[n])) for n in layout_sizes]
            # Each job also writes the one-image ID test split.
            result["configs"][name] = {
                **layout,
                "seconds": {str(n): summary(times[n]) for n in layout_sizes},
                "fit": linear_fit([n + 1 for n in layout_sizes], medians),
                "bare_loop": summary(bare_rates),
            }
    result["bare_loop_samples"] = bare.samples
    result["batch_size"] = cfg.precompute.batch_size
    result["image_size"] = cfg.dataset.image_size

    for entry in result["configs"].values():
        bare = entry["bare_loop"]["median"]
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
