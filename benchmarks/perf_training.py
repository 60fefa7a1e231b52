"""Training benchmark: stored targets against a live teacher and the student-only limit.

Three ways to run the same RobustKD-FM step (task + KD + activation loss) on the same batches:

- *stored*: `TrainRecipe.train_step` on batches streamed from the shard tars, targets included;
- *live teacher*: the same stream, but the teacher runs on the inputs of the KD and activation
  terms and its outputs replace the stored targets before the same `train_step`;
- *limit*: the student forward and backward with cross-entropy on the ID rows, over the same
  images preprocessed once and held in memory, with no targets read or computed.

The three alternate within each repeat, so drift of a shared machine affects them alike. Peak
memory is measured by training one epoch through the `robustkd train` command in a child
process, on a shard set and on one four times as large.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from backbones import freeze_batchnorm_stats
from benchmarks.perf_common import child_peak_rss, summary
from benchmarks.perf_precompute import bench_config
from pipeline.precompute import HEAD_FILE, ray_session, run_precompute
from pipeline.teacher import build_teacher
from shardstore.targets import OutputTaps, reduce_activation
from trainer.data import Batch
from trainer.recipe import TrainRecipe

__all__ = ["training_section"]

log = logging.getLogger(__name__)

METHODS = {
    "lora": {"finetune": "lora", "lambda_kd": 1.0, "lambda_act": 1.0},
    "full": {"finetune": "full", "lr": 2.0e-4, "lambda_kd": 1.0, "lambda_act": 1.0},
}


def training_shards(args, scratch: Path) -> dict[str, tuple[Any, dict, int]]:
    """Precompute the 1x and 4x training shard sets (ID images plus one OOD view each)."""
    sets = {}
    with ray_session(args.ray_cpus):
        for scale in (1, 4):
            n = args.train_samples * scale
            cfg, data = bench_config(
                args.data_root,
                scratch,
                f"train-{scale}x",
                n,
                views_per_image=1,
                overrides={
                    "methods": METHODS,
                    "train": {
                        "shuffle_buffer": args.shuffle_buffer,
                        "batch_size": args.train_batch_size,
                        "ood_batch_size": args.train_batch_size,
                    },
                },
            )
            seconds = time.perf_counter()
            run_precompute(cfg)
            log.info(
                "%dx training shards: %d samples in %.0f s",
                scale,
                2 * n,
                time.perf_counter() - seconds,
            )
            sets[f"{scale}x"] = (cfg, data, 2 * n)
    return sets


class LiveTeacher:
    """The frozen teacher computing, per step, the targets that the shards would supply."""

    def __init__(self, recipe: TrainRecipe):
        cfg = recipe.experiment
        self.teacher = build_teacher(
            cfg.teacher, cfg.dataset.image_size, recipe.shards_dir / HEAD_FILE
        )
        self.layers = list(recipe.act_layers) if recipe.cfg.lambda_act > 0 else []
        self.seconds = 0.0
        """Time spent computing targets, summed over `apply` calls."""
        self.specs = recipe.layer_specs
        train = recipe.cfg
        self.sources = set()
        if train.lambda_kd > 0:
            self.sources.add(train.kd_source)
        if train.lambda_act > 0:
            self.sources |= {"id", "ood"} if train.div_source == "both" else {train.div_source}

    @torch.no_grad()
    def targets(self, batch: Batch) -> Batch:
        x = self.teacher.preprocess(batch.images)
        with OutputTaps(self.teacher.encoder, self.layers) as taps:
            logits = self.teacher(x)
        activations = {
            name: reduce_activation(taps.outputs[name], self.specs[name]).float()
            for name in self.layers
        }
        return dataclasses.replace(batch, logits=logits, activations=activations)

    def apply(self, id_batch: Batch, ood_batch: Batch) -> tuple[Batch, Batch]:
        start = time.perf_counter()
        if "id" in self.sources:
            id_batch = self.targets(id_batch)
        if "ood" in self.sources:
            ood_batch = self.targets(ood_batch)
        self.seconds += time.perf_counter() - start
        return id_batch, ood_batch


def _limit_window(recipe: TrainRecipe, tensors: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Time student-only steps over in-memory tensors; return seconds."""
    start = time.perf_counter()
    for x, labels in tensors:
        logits = recipe.model(x)
        loss = F.cross_entropy(logits[: len(labels)], labels)
        recipe.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        recipe.optimizer.step()
    return time.perf_counter() - start


def _held_tensors(recipe: TrainRecipe, epoch: int, steps: int) -> list:
    """Return batch pairs 2 to steps + 1 of `epoch` as preprocessed inputs and ID labels."""
    pairs = recipe.batch_pairs(epoch)
    try:
        next(pairs)
        held = [next(pairs) for _ in range(steps)]
    finally:
        pairs.close()
    preprocess = recipe.backbone.preprocess
    return [(torch.cat([preprocess(a.images), preprocess(b.images)]), a.labels) for a, b in held]


def _stream_window(
    recipe: TrainRecipe, epoch: int, steps: int, live: LiveTeacher | None
) -> tuple[float, int, float]:
    """Time training steps 2 to steps + 1 of `epoch`, streamed from the shards.

    The first step is untimed: it fills the shuffle buffers, which happens once per epoch.
    Returns (seconds, samples, seconds spent waiting for batches).
    """
    pairs = recipe.batch_pairs(epoch)
    try:
        first = next(pairs)
        recipe.train_step(*(live.apply(*first) if live else first))
        if live is not None:
            live.seconds = 0.0
        samples, waiting = 0, 0.0
        start = time.perf_counter()
        for _ in range(steps):
            fetch = time.perf_counter()
            id_batch, ood_batch = next(pairs)
            waiting += time.perf_counter() - fetch
            if live is not None:
                id_batch, ood_batch = live.apply(id_batch, ood_batch)
            recipe.train_step(id_batch, ood_batch)
            samples += len(id_batch) + len(ood_batch)
        return time.perf_counter() - start, samples, waiting
    finally:
        pairs.close()


def throughput(cfg, method: str, steps: int, repeats: int) -> dict[str, Any]:
    """Measure samples/s of the three step kinds for one method."""
    recipe = TrainRecipe(cfg, method)
    recipe.setup()
    try:
        recipe.model.train()
        freeze_batchnorm_stats(recipe.model)
        live = LiveTeacher(recipe)
        if len(recipe.id_stream) < steps + 1:
            raise ValueError(
                f"{len(recipe.id_stream)} ID batches per epoch, but the benchmark times "
                f"{steps} steps after an untimed one; raise --train-samples or lower --train-steps"
            )
        rates: dict[str, list[float]] = {"limit": [], "stored": [], "live_teacher": []}
        waiting: list[float] = []
        teacher_share: list[float] = []
        samples_per_step = []
        for repeat in range(repeats):
            # All three kinds run the same batch pairs of epoch `repeat`, in an order that
            # rotates between repeats, so that drift of the machine does not favour one kind.
            kinds = ["stored", "live_teacher", "limit"]
            for kind in kinds[repeat % 3 :] + kinds[: repeat % 3]:
                if kind == "limit":
                    tensors = _held_tensors(recipe, repeat, steps)
                    samples = sum(len(x) for x, _ in tensors)
                    rates["limit"].append(samples / _limit_window(recipe, tensors))
                    del tensors
                    continue
                seconds, samples, wait = _stream_window(
                    recipe, repeat, steps, live if kind == "live_teacher" else None
                )
                rates[kind].append(samples / seconds)
                if kind == "stored":
                    waiting.append(wait / seconds)
                    samples_per_step.append(samples / steps)
                else:
                    teacher_share.append(live.seconds / seconds)
            log.info(
                "%s repeat %d: limit %.0f, stored %.0f, live teacher %.0f samples/s",
                method,
                repeat,
                rates["limit"][-1],
                rates["stored"][-1],
                rates["live_teacher"][-1],
            )
    finally:
        recipe.cleanup()
    result: dict[str, Any] = {name: summary(values) for name, values in rates.items()}
    result["waiting_share"] = summary(waiting)
    result["teacher_share_of_live_step"] = summary(teacher_share)
    result["samples_per_step"] = max(samples_per_step)
    result["steps"] = steps
    result["repeats"] = repeats
    stored = result["stored"]["median"]
    result["stored_vs_limit"] = stored / result["limit"]["median"]
    result["stored_vs_live"] = stored / result["live_teacher"]["median"]
    return result


def peak_memory(sets: dict[str, tuple[Any, dict, int]], scratch: Path) -> dict[str, Any]:
    """Train one LoRA epoch on each shard set in a child process; return its peak RSS."""
    cli = Path(sys.executable).with_name("robustkd")
    command_prefix = [str(cli)] if cli.is_file() else [sys.executable, "-m", "robustkd.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    result: dict[str, Any] = {}
    for scale, (_, data, samples) in sets.items():
        path = scratch / f"train-{scale}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        command = [
            *command_prefix,
            "train",
            "--config",
            str(path),
            "--method",
            "lora",
            "train.epochs=1",
        ]
        rss, seconds = child_peak_rss(command, env, scratch / f"train-{scale}.log")
        result[scale] = {"samples": samples, "peak_rss_bytes": rss, "seconds": seconds}
        log.info("training on %s (%d samples): peak RSS %.0f MiB", scale, samples, rss / 2**20)
    result["ratio_4x_to_1x"] = result["4x"]["peak_rss_bytes"] / result["1x"]["peak_rss_bytes"]
    result["command"] = "robustkd train --config <set>.yaml --method lora train.epochs=1"
    return result


def training_section(args, scratch: Path) -> dict[str, Any]:
    """Measure training throughput for LoRA and full fine-tuning, then peak memory."""
    sets = training_shards(args, scratch)
    cfg = sets["1x"][0]
    previous_threads = torch.get_num_threads()
    result: dict[str, Any] = {"torch_threads": cfg.train.torch_threads}
    try:
        for method in METHODS:
            result[method] = throughput(cfg, method, args.train_steps, args.train_repeats)
    finally:
        torch.set_num_threads(previous_threads)
    result["memory"] = peak_memory(sets, scratch)
    return result
