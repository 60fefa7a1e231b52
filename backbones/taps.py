"""Named layer taps: forward hooks that record pooled outputs of chosen modules."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LayerTaps", "pool_activation"]


def pool_activation(output: torch.Tensor) -> torch.Tensor:
    """Pool a module output to (B, C).

    (B, C, H, W) feature maps are averaged over H and W. (B, T, C) token sequences (ViT, CLIP)
    are averaged over tokens. (B, C) outputs are returned unchanged.
    """
    if isinstance(output, tuple):
        output = output[0]
    if output.ndim == 4:
        return output.mean(dim=(2, 3))
    if output.ndim == 3:
        return output.mean(dim=1)
    if output.ndim == 2:
        return output
    raise ValueError(f"cannot pool a module output of shape {tuple(output.shape)}")


class LayerTaps:
    """Record the pooled outputs of named submodules of `root` during a forward pass.

        with LayerTaps(backbone.encoder, ["_blocks.4", "_blocks.10"]) as taps:
            logits = backbone(x)
        acts = taps.outputs  # {"_blocks.4": (B, C4), "_blocks.10": (B, C10)}

    Outputs keep their autograd graph, so the trainer can backpropagate through them. With
    `pool=False` the raw outputs are kept (the first element of a tuple output).
    """

    def __init__(self, root: nn.Module, names: Sequence[str], pool: bool = True):
        modules = dict(root.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            sample = ", ".join(n for n in list(modules)[1:30])
            raise ValueError(
                f"layer taps {missing} not found in {type(root).__name__}; "
                f"module names start with: {sample}, ..."
            )
        self.pool = pool
        self.names = list(names)
        self._modules = [modules[n] for n in self.names]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.outputs: dict[str, torch.Tensor] = {}

    def _hook(self, name: str):
        def record(_module, _inputs, output):
            if self.pool:
                self.outputs[name] = pool_activation(output)
            else:
                self.outputs[name] = output[0] if isinstance(output, tuple) else output

        return record

    def __enter__(self) -> LayerTaps:
        self.outputs = {}
        for name, module in zip(self.names, self._modules, strict=True):
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
