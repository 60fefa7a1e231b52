"""Array codecs of the compact teacher targets: bfloat16 bits, int8 with row scales, top-k logits.

Each `*_encode` turns float32 values into the arrays that a shard stores, and each `*_decode`
turns those arrays back into float32, which is what the trainer consumes. `schemas.sample`
decides which codec a stored field uses; `docs/storage.md` lists their bytes and errors.

    bits = bfloat16_encode(x); y = bfloat16_decode(bits)        # |y - x| <= 2**-8 * |x|
    q, scale = int8_encode(x); y = int8_decode(q, scale)        # |y - x| <= scale / 2 per row
    index, values = topk_encode(logits, 5); y = topk_decode(index, values)
"""

from __future__ import annotations

import numpy as np

from schemas.errors import ShardSetError

__all__ = [
    "bfloat16_decode",
    "bfloat16_encode",
    "int8_decode",
    "int8_encode",
    "quantization_rows",
    "topk_decode",
    "topk_encode",
]


def bfloat16_encode(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest, ties to even) and return the uint16 bits.

    NumPy has no bfloat16 dtype, so the bits are stored as uint16: the upper half of the
    float32 bit pattern after rounding.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    # NOTE: NaN payloads can round to infinity; teacher activations are expected to be finite.
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def bfloat16_decode(bits: np.ndarray) -> np.ndarray:
    """Return the float32 values of uint16 bfloat16 bit patterns."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def quantization_rows(shape: tuple[int, ...]) -> int:
    """Return how many int8 scales an activation of `shape` gets: one per entry of its first
    axis (a token, or a channel of a feature map), or one for a pooled vector."""
    return int(shape[0]) if len(shape) >= 2 else 1


def int8_encode(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantise symmetrically to int8 with one float32 scale per row.

    Returns `(q, scale)` where `q` has the shape of `values` and `scale` has
    `quantization_rows(values.shape)` entries; a row's scale is its max |value| / 127.
    """
    values = np.asarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ShardSetError(
            "int8 storage needs finite activations, got NaN or infinity; "
            "store this teacher with precompute.storage.activation_dtype: float32"
        )
    rows = values.reshape(quantization_rows(values.shape), -1)
    scale = (np.abs(rows).max(axis=1) / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(rows / safe[:, None]), -127, 127).astype(np.int8)
    return q.reshape(values.shape), scale


def int8_decode(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Return the float32 values of int8 codes `q` and their per-row `scale`."""
    q = np.asarray(q, dtype=np.int8)
    rows = q.reshape(len(scale), -1).astype(np.float32) * np.asarray(scale, np.float32)[:, None]
    return rows.reshape(q.shape)


def topk_encode(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the `k` largest logits and one logit that stands for every other class.

    Returns `(index, values)`, both of length k + 1. `index` holds the classes of the k largest
    logits (largest first) followed by the number of classes. `values` holds those k logits
    followed by the rest logit log(mean(exp(other logits))). Giving every other class the rest
    logit keeps the log-sum-exp of the full vector, so the decoded softmax at temperature 1 has
    the same top-k probabilities and the remaining mass spread evenly over the other classes.
    """
    logits = np.asarray(logits, dtype=np.float32)
    num_classes = logits.shape[0]
    if not 1 <= k < num_classes:
        raise ShardSetError(
            f"precompute.storage.top_k: {k} must be between 1 and {num_classes - 1} for "
            f"{num_classes} classes; lower it, or set precompute.storage.logits: float32"
        )
    order = np.argsort(-logits, kind="stable")
    top, others = order[:k], order[k:]
    rest = logits[others].astype(np.float64)
    peak = rest.max()
    rest_logit = peak + np.log(np.mean(np.exp(rest - peak)))
    index = np.append(top, num_classes).astype(np.int32)
    values = np.append(logits[top], rest_logit).astype(np.float32)
    return index, values


def topk_decode(index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Return the full float32 logit vector of a `topk_encode` result."""
    num_classes = int(index[-1])
    logits = np.full(num_classes, values[-1], dtype=np.float32)
    logits[np.asarray(index[:-1], dtype=np.int64)] = values[:-1]
    return logits
