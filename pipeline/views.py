"""Turn work items into images: load the source, resize it, and apply the item's generator.

`make_views` runs as a Ray Data `map_batches` function. A sample whose image cannot be loaded or
generated keeps its row with an `error` reason, so the writer logs and counts it instead of
losing it.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import numpy as np

from pipeline.datasets import SourceRecord, load_image, prepare_image

__all__ = ["apply_teacher_generators", "make_views", "source_image"]

log = logging.getLogger(__name__)

_GENERATORS: dict[str, Any] = {}


def _generator(name: str, params: dict[str, Any]):
    """Build each generator once per worker process."""
    from pipeline.ood import build_generator

    cache_key = json.dumps([name, params], sort_keys=True)
    if cache_key not in _GENERATORS:
        _GENERATORS[cache_key] = build_generator(name, params)
    return _GENERATORS[cache_key]


def source_image(path: str, image_npy: bytes, image_size: int) -> np.ndarray:
    """Load a work item's source image and resize it to image_size x image_size RGB."""
    image = np.load(io.BytesIO(image_npy), allow_pickle=False) if image_npy else None
    record = SourceRecord(key="", label=-1, domain="", path=path or None, image=image)
    return prepare_image(load_image(record), image_size)


def _one_view(row: dict[str, Any], image_size: int, generators: list[dict[str, Any]]):
    image = source_image(row["path"], row["image_npy"], image_size)
    if row["generator"] == "identity":
        return image, {}
    if row["fixed_params"]:
        # Only the OOD test grid fixes its parameters, and it uses corruptions alone.
        from pipeline.ood import apply_corruption

        params = json.loads(row["fixed_params"])
        seed = int(row["seed"])
        return apply_corruption(image, params["corruption"], params["severity"], seed), params
    spec = generators[int(row["gen_index"])]
    generator = _generator(spec["name"], spec["params"])
    if generator.needs_teacher:
        # Attacks need the teacher's gradients: the actor applies them to this clean image.
        return image, generator.sample_params(np.random.default_rng(int(row["seed"])))
    return generator.generate(image, int(row["seed"]))


def make_views(
    batch: dict[str, np.ndarray], image_size: int, generators: list[dict[str, Any]]
) -> dict[str, np.ndarray]:
    """Ray Data batch function: add `image`, `params` and `error` columns to work items."""
    n = len(batch["key"])
    images = np.zeros((n, image_size, image_size, 3), dtype=np.uint8)
    params_out, errors = [], []
    for i in range(n):
        row = {k: v[i] for k, v in batch.items()}
        try:
            image, params = _one_view(row, image_size, generators)
            images[i] = image
            params_out.append(json.dumps(params, sort_keys=True))
            errors.append("")
        except (OSError, ValueError, RuntimeError) as exc:
            reason = "unreadable_image" if isinstance(exc, OSError) else "generator_failed"
            log.warning(
                "sample %s (source %s, path %r): %s: %s",
                row["key"],
                row["source_key"],
                row["path"],
                reason,
                exc,
            )
            params_out.append("{}")
            errors.append(reason)
    out = {k: v for k, v in batch.items() if k not in ("image_npy", "fixed_params")}
    out["image"] = images
    out["params"] = np.array(params_out, dtype=object)
    out["error"] = np.array(errors, dtype=object)
    return out


def apply_teacher_generators(
    batch: dict[str, np.ndarray], model, generators: list[dict[str, Any]]
) -> np.ndarray:
    """Return the batch images with teacher-dependent views (adversarial attacks) applied.

    Runs inside the teacher actor; rows of other generators are returned unchanged.
    """
    images = batch["image"].copy()
    groups: dict[int, list[int]] = {}
    for i, (index, error) in enumerate(zip(batch["gen_index"], batch["error"], strict=True)):
        # The OOD test grid and ID samples have no generator index.
        if int(index) >= 0 and not error:
            spec = generators[int(index)]
            if _generator(spec["name"], spec["params"]).needs_teacher:
                groups.setdefault(int(index), []).append(i)
    for index, rows in groups.items():
        spec = generators[index]
        generator = _generator(spec["name"], spec["params"])
        params = [json.loads(batch["params"][i]) for i in rows]
        seeds = [int(batch["seed"][i]) for i in rows]
        images[rows] = generator.apply_batch(
            model, images[rows], batch["label"][rows], params, seeds
        )
    return images
