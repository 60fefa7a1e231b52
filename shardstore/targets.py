"""Stored activation targets: how a tapped module's output becomes the array a shard stores.

The teacher actor applies `reduce_activation` to each tapped output. A trainer that compares
student taps with stored targets must apply the same function to the student's raw outputs
(recorded with `OutputTaps`), so that both sides use the same pooling and projection:

    spec = manifest.layout.layers[0]
    with OutputTaps(backbone.encoder, [spec.name]) as taps:
        logits = backbone(x)
    student = reduce_activation(taps.outputs[spec.name], spec)   # shape (B, *spec.shape)

`mean` reduction is the pooling of `backbones.taps.pool_activation`. The trainer's activation
term records student taps this way, so every storage option trains.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from backbones.taps import LayerTaps
from schemas.config import StorageConfig
from schemas.errors import ConfigError
from schemas.sample import LayerSpec

__all__ = ["OutputTaps", "layer_spec", "projection_matrix", "reduce_activation"]

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def projection_matrix(channels: int, dim: int, seed: int) -> np.ndarray:
    """Return the fixed (channels, dim) Gaussian projection with entries N(0, 1/channels).

    This scale keeps the mean square over channels unchanged in expectation, so an MSE
    activation loss on projected targets estimates the loss on the unprojected ones. NumPy's
    PCG64 stream is the same on every platform, so every machine builds the same float32
    matrix from the same seed.
    """
    rng = np.random.default_rng([seed, channels, dim])
    matrix = rng.standard_normal((channels, dim)) / np.sqrt(channels)
    matrix = matrix.astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def _channel_axis(ndim: int) -> int:
    """Channel axis of a per-sample shape: first for (C, H, W) feature maps, else last."""
    return 0 if ndim == 3 else ndim - 1


def layer_spec(name: str, output_shape: Sequence[int], storage: StorageConfig) -> LayerSpec:
    """Return the stored layout of tap `name`, whose output has `output_shape` per sample.

    `output_shape` excludes the batch axis: (C,), (T, C) for tokens or (C, H, W) for maps.
    """
    shape = tuple(int(d) for d in output_shape)
    if storage.activations == "mean":
        stored = shape if len(shape) == 1 else (shape[_channel_axis(len(shape))],)
    elif storage.activations == "cls":
        if len(shape) == 3:
            raise ConfigError(
                [
                    f"precompute.storage.activations: 'cls' needs token outputs (T, C), but tap "
                    f"{name!r} outputs feature maps {shape}; use 'mean' or 'full'"
                ]
            )
        stored = (shape[-1],)
    else:
        stored = shape
    projection_from = None
    axis = _channel_axis(len(stored))
    if storage.projection_dim is not None and storage.projection_dim >= stored[axis]:
        log.info(
            "tap %s: stored without projection, because its %d channels are not more than "
            "precompute.storage.projection_dim %d",
            name,
            stored[axis],
            storage.projection_dim,
        )
    elif storage.projection_dim is not None:
        projection_from = stored[axis]
        stored = stored[:axis] + (storage.projection_dim,) + stored[axis + 1 :]
    return LayerSpec(
        name=name,
        dtype=storage.activation_dtype,
        shape=stored,
        reduce=storage.activations,
        projection_from=projection_from,
        projection_seed=storage.projection_seed,
    )


def reduce_activation(output: torch.Tensor | tuple, spec: LayerSpec) -> torch.Tensor:
    """Pool and project a batch of raw module outputs as `spec` describes; keeps autograd."""
    x = output[0] if isinstance(output, tuple) else output
    if spec.reduce == "mean" and x.ndim == 4:
        x = x.mean(dim=(2, 3))
    elif spec.reduce == "mean" and x.ndim == 3:
        x = x.mean(dim=1)
    elif spec.reduce == "cls" and x.ndim == 3:
        x = x[:, 0]
    if spec.projection_from is not None:
        dim = spec.shape[_channel_axis(len(spec.shape))]
        matrix = projection_matrix(spec.projection_from, dim, spec.projection_seed)
        matrix = torch.tensor(matrix, device=x.device, dtype=x.dtype)
        x = torch.einsum("bchw,cd->bdhw", x, matrix) if x.ndim == 4 else x @ matrix
    if tuple(x.shape[1:]) != spec.shape:
        raise ValueError(
            f"tap {spec.name!r}: reduced output has shape {tuple(x.shape[1:])}, but the layout "
            f"stores {spec.shape}; the model differs from the one the layout was made with"
        )
    return x


class OutputTaps(LayerTaps):
    """Record the raw, unpooled outputs of named submodules of `root` during a forward pass."""

    def __init__(self, root: nn.Module, names: Sequence[str]):
        super().__init__(root, names, pool=False)
