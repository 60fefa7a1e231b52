"""Weight fingerprints: a sha256 that identifies a teacher's or a student's base weights."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["module_sha256"]


def module_sha256(module: nn.Module) -> str:
    """Return a sha256 over every parameter and persistent buffer of `module`.

    Tensors are hashed in name order as name, dtype, shape and raw bytes, so the digest does not
    depend on device or on the order in which modules were registered.
    """
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
