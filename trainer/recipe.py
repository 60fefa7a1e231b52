"""The training recipe: setup, train, save_checkpoint, cleanup.

    robustkd train --config configs/fashion-mnist.yaml --method robustkd

One step runs the student once on the concatenated ID and OOD batches. BatchNorm statistics are
frozen, so mixing the batches changes nothing. The step then combines the task loss on ID
samples with the KD and activation terms against the stored teacher targets.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from backbones import freeze_batchnorm_stats
from schemas.config import ExperimentConfig, config_to_dict
from schemas.manifest import Manifest
from shardstore.resolve import resolve_shards_dir
from shardstore.targets import OutputTaps, reduce_activation
from trainer.data import Batch, ShardStream, prefetch
from trainer.losses import robustkd_loss
from trainer.methods import augmix_images, l2sp_penalty, ood_filter, pgd_examples, snapshot_weights
from trainer.metrics import MetricLogger
from trainer.student import build_student, trainable_state

__all__ = ["TrainRecipe", "latest_checkpoint"]

log = logging.getLogger(__name__)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Return the newest complete epoch checkpoint (its state.json is written last)."""
    done = sorted((run_dir / "checkpoints").glob("epoch-*/state.json"))
    return done[-1].parent if done else None


class TrainRecipe:
    """Train one method of an experiment on its precomputed shard set."""

    def __init__(self, experiment: ExperimentConfig, method: str):
        self.experiment = experiment
        self.method = method
        self.cfg = experiment.method_config(method)
        self.shards_dir = resolve_shards_dir(experiment)
        self.run_dir = experiment.runs_dir() / method
        self.start_epoch = 0
        self.global_step = 0

    def setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.torch_threads)

        # The manifest comes first: a missing or corrupted shard set should fail before the
        # model is built.
        self.manifest = Manifest.read(self.shards_dir)
        self.manifest.verify(self.shards_dir)
        if self.manifest.layout.image_size != self.experiment.dataset.image_size:
            raise ValueError(
                f"dataset.image_size is {self.experiment.dataset.image_size} but the shards in "
                f"{self.shards_dir} store {self.manifest.layout.image_size} px images; set "
                f"dataset.image_size={self.manifest.layout.image_size}"
            )
        log.info("training %s on %s", self.method, self.shards_dir)
        stored = self.manifest.layout.layer_names()
        self.layer_specs = {spec.name: spec for spec in self.manifest.layout.layers}
        self.act_layers = cfg.act_layers if cfg.act_layers is not None else stored
        unknown = sorted(set(self.act_layers) - set(stored))
        if unknown:
            raise ValueError(
                f"train.act_layers {unknown} are not stored in the shards; stored: {stored}"
            )

        # The student checks its base weights against the manifest's teacher fingerprint.
        self.model, self.backbone = build_student(
            self.experiment.teacher,
            self.experiment.dataset.image_size,
            self.manifest,
            self.shards_dir,
            cfg,
        )

        # Streams: ID batches drive the epoch; OOD batches are drawn alongside when a KD or
        # activation term needs them.
        self.use_ood = (cfg.lambda_kd > 0 and cfg.kd_source == "ood") or (
            cfg.lambda_act > 0 and cfg.div_source != "id"
        )
        self.id_stream = ShardStream(
            self.shards_dir,
            self.manifest,
            "id_train",
            cfg.batch_size,
            self.act_layers,
            shuffle=True,
            shuffle_buffer=cfg.shuffle_buffer,
            seed=cfg.seed,
        )
        self.ood_stream = ShardStream(
            self.shards_dir,
            self.manifest,
            "ood_train",
            cfg.ood_batch_size,
            self.act_layers,
            shuffle=True,
            shuffle_buffer=cfg.shuffle_buffer,
            seed=cfg.seed + 1,
            include=ood_filter(cfg.ood_include),
        )
        self.steps_per_epoch = len(self.id_stream)
        self.total_steps = self.steps_per_epoch * cfg.epochs

        # L2-SP needs the pretrained weights before the first step changes them.
        self.pretrained = snapshot_weights(self.backbone) if cfg.lambda_l2sp > 0 else None

        # Optimizer and schedule cover only trainable parameters (LoRA adapters and head).
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

        # Resume last: it restores model, optimizer and schedule state built above.
        if cfg.resume:
            self._resume()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(
            yaml.safe_dump(
                {
                    "method": self.method,
                    "train": config_to_dict(cfg),
                    "experiment": config_to_dict(self.experiment),
                },
                sort_keys=False,
            )
        )
        self.metrics = MetricLogger(self.run_dir)

    def _lr_factor(self, step: int) -> float:
        warmup = self.cfg.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def _resume(self) -> None:
        checkpoint = latest_checkpoint(self.run_dir)
        if checkpoint is None:
            return
        state = json.loads((checkpoint / "state.json").read_text())
        self.model.load_state_dict(
            load_file(str(checkpoint / "trainable.safetensors")), strict=False
        )
        self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = state["epoch"] + 1
        self.global_step = state["global_step"]
        log.info("resumed %s from %s (epoch %d done)", self.method, checkpoint, state["epoch"] + 1)

    def _id_inputs(self, batch: Batch) -> torch.Tensor:
        """Normalised ID inputs: clean, AugMix-ed, or PGD examples against the student."""
        cfg = self.cfg
        images = augmix_images(batch.images) if cfg.augment == "augmix" else batch.images
        if cfg.adv_eps > 0:
            return pgd_examples(
                self.model, self.backbone, images, batch.labels, cfg.adv_eps, cfg.adv_steps
            )
        return self.backbone.preprocess(images)

    def _loss_step(self, id_batch: Batch, ood_batch: Batch | None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        n_id = len(id_batch)
        x = self._id_inputs(id_batch)
        if ood_batch is not None:
            x = torch.cat([x, self.backbone.preprocess(ood_batch.images)])
        taps = self.act_layers if cfg.lambda_act > 0 else []
        # Student taps go through the same pooling and projection as the stored targets.
        with OutputTaps(self.backbone.encoder, taps) as raw:
            logits = self.model(x)
        reduced = {n: reduce_activation(raw.outputs[n], self.layer_specs[n]) for n in taps}

        rows = {"id": slice(0, n_id), "ood": slice(n_id, None)}
        stored = {"id": id_batch, "ood": ood_batch}
        kd_student = kd_teacher = div_student = div_teacher = None
        if cfg.lambda_kd > 0:
            kd_student = logits[rows[cfg.kd_source]]
            kd_teacher = stored[cfg.kd_source].logits
        if cfg.lambda_act > 0:
            sources = ["id", "ood"] if cfg.div_source == "both" else [cfg.div_source]
            rows_used = slice(0, None) if cfg.div_source == "both" else rows[cfg.div_source]
            div_student = {n: reduced[n][rows_used] for n in taps}
            div_teacher = {n: torch.cat([stored[s].activations[n] for s in sources]) for n in taps}
        losses = robustkd_loss(
            logits[:n_id],
            id_batch.labels,
            kd_student,
            kd_teacher,
            div_student,
            div_teacher,
            cfg.lambda_kd,
            cfg.lambda_act,
            cfg.temperature,
        )
        if self.pretrained is not None:
            losses["l2sp"] = l2sp_penalty(self.backbone, self.pretrained)
            losses["loss"] = losses["loss"] + cfg.lambda_l2sp * losses["l2sp"]
        return losses

    def batch_pairs(self, epoch: int) -> Iterator[tuple[Batch, Batch | None]]:
        """Yield one epoch of (ID batch, OOD batch or None), read ahead in a background thread.

        The OOD stream cycles on its own epochs, so the ID split alone sets the epoch length.
        """
        ood = self.ood_stream.forever(start_epoch=1000 * epoch) if self.use_ood else None

        def pairs() -> Iterator[tuple[Batch, Batch | None]]:
            for id_batch in self.id_stream.epoch(epoch):
                yield id_batch, next(ood) if ood is not None else None

        return prefetch(pairs(), self.cfg.prefetch_batches)

    def train_step(self, id_batch: Batch, ood_batch: Batch | None) -> dict[str, torch.Tensor]:
        """Run one optimizer step on a batch pair and return its losses."""
        losses = self._loss_step(id_batch, ood_batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        return losses

    def train(self) -> dict[str, float]:
        cfg = self.cfg
        epoch_times = []
        for epoch in range(self.start_epoch, cfg.epochs):
            self.model.train()
            freeze_batchnorm_stats(self.model)
            start = time.perf_counter()
            seen = 0
            bar = tqdm(
                self.batch_pairs(epoch),
                total=self.steps_per_epoch,
                desc=f"{self.method} epoch {epoch + 1}/{cfg.epochs}",
                unit="step",
            )
            for id_batch, ood_batch in bar:
                losses = self.train_step(id_batch, ood_batch)
                seen += len(id_batch) + (len(ood_batch) if ood_batch is not None else 0)

                last_step = self.global_step % self.steps_per_epoch == 0
                if self.global_step % cfg.log_every_n_steps == 0 or last_step:
                    values = {f"train/{k}": v.item() for k, v in losses.items()}
                    values["train/lr"] = self.scheduler.get_last_lr()[0]
                    values["train/samples_per_s"] = seen / (time.perf_counter() - start)
                    self.metrics.log(self.global_step, values)
                    bar.set_postfix(
                        {
                            k.removeprefix("train/"): f"{v:.3g}"
                            for k, v in values.items()
                            if "/" not in k.removeprefix("train/")
                        }
                    )
            epoch_times.append(time.perf_counter() - start)
            self.metrics.log(self.global_step, {"train/epoch_seconds": epoch_times[-1]})
            self.save_checkpoint(epoch)
        return {"epoch_seconds": sum(epoch_times) / len(epoch_times) if epoch_times else 0.0}

    def save_checkpoint(self, epoch: int) -> Path:
        """Write `checkpoints/epoch-NNN/`; state.json goes last and marks it complete."""
        folder = self.run_dir / "checkpoints" / f"epoch-{epoch:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(trainable_state(self.model), str(folder / "trainable.safetensors"))
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        state = {
            "method": self.method,
            "epoch": epoch,
            "global_step": self.global_step,
            "scheduler": self.scheduler.state_dict(),
            "teacher": self.manifest.teacher.short(),
            "package_version": self.manifest.package_version,
        }
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, folder / "state.json")
        log.info("saved checkpoint %s", folder)
        return folder

    def cleanup(self) -> None:
        self.metrics.close()
