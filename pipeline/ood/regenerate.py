"""Rebuild a stored OOD sample from its source image, generator, parameters and seed.

`regenerate_sample(folder, key)` finds the sample in the shard set's WebDataset tars, reloads its
source image through the data set reader named in the manifest, applies the recorded generator,
and compares the result with the stored image byte for byte. It backs
`robustkd ood regenerate KEY --shards FOLDER`.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.ood.base import build_generator
from schemas.errors import RobustKDError, ShardSetError
from schemas.manifest import Manifest
from schemas.sample import StoredSample, decode_wds

__all__ = ["Regenerated", "find_stored_sample", "load_source_image", "regenerate_sample"]

log = logging.getLogger(__name__)


@dataclass
class Regenerated:
    """The outcome of regenerating one stored sample."""

    stored: StoredSample
    image: np.ndarray
    """The regenerated uint8 image."""
    generator_params: dict[str, Any]
    """The generator config params that reproduced it (or the last ones tried)."""

    @property
    def matches(self) -> bool:
        return self.image.shape == self.stored.image.shape and np.array_equal(
            self.image, self.stored.image
        )


def find_stored_sample(
    folder: str | Path, key: str, manifest: Manifest | None = None
) -> StoredSample:
    """Return the sample stored under `key` in the WebDataset tars of the shard set."""
    manifest = manifest or Manifest.read(folder)
    prefix = f"{key}."
    for shard in manifest.shards:
        members: dict[str, bytes] = {}
        with tarfile.open(Path(folder) / shard.tar, "r:") as tar:
            for member in tar:
                if member.isfile() and member.name.startswith(prefix):
                    members[member.name[len(prefix) :]] = tar.extractfile(member).read()
        if members:
            return decode_wds(members)
    raise ShardSetError(
        f"sample key {key!r} is not in any shard of {folder}; keys look like "
        "<source key>-v<view>; list them with `tar tf <shard>.tar`"
    )


def load_source_image(manifest: Manifest, source_key: str, root: str | None = None) -> np.ndarray:
    """Reload a source image the way precompute did: reader record, load, resize to image_size."""
    from pipeline.datasets import get_reader, load_image, prepare_image

    dataset = manifest.dataset["config"]
    reader = get_reader(dataset["name"], root or dataset["root"], dataset.get("options") or {})
    for split in reader.splits():
        for record in reader.records(split):
            if record.key == source_key:
                return prepare_image(load_image(record), manifest.layout.image_size)
    raise ShardSetError(
        f"source key {source_key!r} is not in data set {dataset['name']!r} at "
        f"{root or dataset['root']}; pass --root if the data set moved"
    )


def _candidate_params(manifest: Manifest, generator: str) -> list[dict[str, Any]]:
    """Params of every training generator with this name; [{}] when none (the OOD test grid)."""
    entries = manifest.generator_config.get("train", [])
    candidates = [entry.get("params", {}) for entry in entries if entry.get("name") == generator]
    return candidates or [{}]


def _apply(generator, source: np.ndarray, stored: StoredSample, teacher) -> np.ndarray:
    if not generator.needs_teacher:
        return generator.apply(source, stored.generator_params, stored.generator_seed)
    if teacher is None:
        raise RobustKDError(
            f"generator {stored.generator!r} needs the teacher; pass the "
            "experiment config with --config so that it can be rebuilt"
        )
    return generator.apply_batch(
        teacher,
        source[None],
        np.array([stored.label]),
        [stored.generator_params],
        [stored.generator_seed],
    )[0]


def regenerate_sample(
    folder: str | Path, key: str, root: str | None = None, teacher=None
) -> Regenerated:
    """Regenerate the sample `key`; `teacher` is needed only for adversarial samples."""
    manifest = Manifest.read(folder)
    stored = find_stored_sample(folder, key, manifest)
    source = load_source_image(manifest, stored.source_key, root)
    if stored.generator == "identity":
        return Regenerated(stored, source, {})

    # Several training generators may share a name; the first whose output matches wins.
    result, failure = None, None
    for params in _candidate_params(manifest, stored.generator):
        generator = build_generator(stored.generator, params)
        try:
            result = Regenerated(stored, _apply(generator, source, stored, teacher), params)
        except RobustKDError as error:
            failure = error
            continue
        if result.matches:
            break
    if result is None:
        raise failure
    log.info(
        "regenerated %s with %s %s seed %d: %s",
        key,
        stored.generator,
        json.dumps(stored.generator_params, sort_keys=True),
        stored.generator_seed,
        "identical to the stored bytes" if result.matches else "DIFFERENT from the stored image",
    )
    return result


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 image as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
