"""Stream stored samples from a shard set's WebDataset tars, in batches of tensors.

Shards are read one after another in an epoch-seeded order through a shuffle buffer; the
teacher targets ride along with each image, so training needs no teacher at all.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from schemas.errors import ShardSetError
from schemas.manifest import Manifest
from schemas.sample import StoredSample, decode_wds

__all__ = ["Batch", "ShardStream", "collate", "prefetch"]


@dataclass
class Batch:
    """A batch of stored samples as tensors."""

    keys: list[str]
    images: torch.Tensor
    """uint8 (B, H, W, 3)."""
    labels: torch.Tensor
    logits: torch.Tensor
    """Stored teacher logits, float32 (B, num_classes)."""
    activations: dict[str, torch.Tensor]
    """Stored teacher activations per layer, float32 (B, C)."""
    generator_params: list[dict]
    domains: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def collate(samples: list[StoredSample], layers: list[str]) -> Batch:
    return Batch(
        keys=[s.key for s in samples],
        images=torch.from_numpy(np.stack([s.image for s in samples])),
        labels=torch.tensor([s.label for s in samples], dtype=torch.long),
        logits=torch.from_numpy(np.stack([s.logits for s in samples])),
        activations={
            name: torch.from_numpy(
                np.stack([s.activations[name] for s in samples]).astype(np.float32)
            )
            for name in layers
        },
        generator_params=[s.generator_params for s in samples],
        domains=[s.domain for s in samples],
    )


class ShardStream:
    """Batches of one split of a shard set.

    With `shuffle`, shard order and a `shuffle_buffer`-sample buffer are reseeded per epoch from
    `seed`, so a resumed run reads the same order as an uninterrupted one.
    """

    def __init__(
        self,
        folder: str | Path,
        manifest: Manifest,
        split: str,
        batch_size: int,
        layers: list[str],
        shuffle: bool = False,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        include: Callable[[StoredSample], bool] | None = None,
    ):
        self.folder = Path(folder)
        self.shards = manifest.shards_of(split)
        self.split = split
        self.num_samples = sum(s.samples for s in self.shards)
        self.batch_size = batch_size
        self.layers = layers
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.include = include

    def __len__(self) -> int:
        """Number of batches per epoch (the last one may be smaller)."""
        return -(-self.num_samples // self.batch_size)

    def _samples(self, epoch: int) -> Iterator[StoredSample]:
        rng = random.Random(f"{self.seed}-{epoch}")
        urls = [str(self.folder / s.tar) for s in self.shards]
        if self.shuffle:
            rng.shuffle(urls)
        for url in urls:
            if not Path(url).is_file():
                raise ShardSetError(
                    f"shard {url} listed in the manifest is missing; run pull or precompute"
                )
            for members in wds.WebDataset(url, shardshuffle=False, empty_check=False):
                sample = decode_wds(members)
                if self.include is None or self.include(sample):
                    yield sample

    def _shuffled(self, epoch: int) -> Iterator[StoredSample]:
        if not self.shuffle:
            yield from self._samples(epoch)
            return
        rng = random.Random(f"buffer-{self.seed}-{epoch}")
        buffer: list[StoredSample] = []
        for sample in self._samples(epoch):
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                index = rng.randrange(len(buffer))
                buffer[index], buffer[-1] = buffer[-1], buffer[index]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        """Yield one pass over the split."""
        pending: list[StoredSample] = []
        for sample in self._shuffled(epoch):
            pending.append(sample)
            if len(pending) == self.batch_size:
                yield collate(pending, self.layers)
                pending = []
        if pending:
            yield collate(pending, self.layers)

    def forever(self, start_epoch: int = 0) -> Iterator[Batch]:
        """Cycle through epochs without end (for the OOD stream that pairs with ID batches)."""
        epoch = start_epoch
        while True:
            produced = False
            for batch in self.epoch(epoch):
                produced = True
                yield batch
            if not produced:
                raise ShardSetError(
                    f"split {self.split} of {self.folder} has no samples that pass the filter; "
                    "check train.ood_include against the generators in the manifest"
                )
            epoch += 1


_END = object()


def prefetch(items: Iterator, depth: int) -> Iterator:
    """Yield from `items`, reading up to `depth` items ahead in a background thread.

    Shard reading and decoding then overlap the training step: zlib, Pillow's PNG decoder and
    torch kernels release the GIL. An exception raised while reading is re-raised here, and
    closing this generator stops the thread. With `depth` 0, items are read in the caller.
    """
    if depth <= 0:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        # A bounded wait, so a consumer that stopped early never leaves the thread blocked.
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # re-raised in the consumer
            put(exc)

    thread = threading.Thread(target=read, name="shard-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
