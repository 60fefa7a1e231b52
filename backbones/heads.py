"""Teacher heads: a linear probe on frozen features, CLIP zero-shot prompts, or the own head.

Every head is an `nn.Linear` over the backbone's pooled features, so the student can start from
it and the teacher fingerprint can hash it. Heads are stored as safetensors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from backbones.base import Backbone
from backbones.fingerprint import module_sha256

__all__ = [
    "fit_linear_probe",
    "head_sha256",
    "load_head",
    "own_head",
    "save_head",
    "zero_shot_head",
]

log = logging.getLogger(__name__)


def fit_linear_probe(
    features: np.ndarray, labels: np.ndarray, num_classes: int, c: float = 1.0, max_iter: int = 1000
) -> nn.Linear:
    """Fit multinomial logistic regression on frozen features and return it as `nn.Linear`.

    Features are standardised for the solver; the scaling is folded back into the weights so
    that the head takes raw features.
    """
    from sklearn.linear_model import LogisticRegression

    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError(
            f"a linear probe needs at least 2 classes in the training labels, got {present}"
        )
    mean = features.mean(axis=0)
    std = features.std(axis=0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=max_iter)
    clf.fit((features - mean) / std, labels)
    weight = np.zeros((num_classes, features.shape[1]), dtype=np.float64)
    # Classes absent from the training labels keep a bias far below the others.
    bias = np.full(num_classes, -1e4, dtype=np.float64)
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:
        # With two classes scikit-learn stores one row for logit(class 1) − logit(class 0);
        # split it symmetrically so that each class gets its own logit.
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight[clf.classes_] = coef / std
    bias[clf.classes_] = intercept - (coef / std) @ mean
    head = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    accuracy = clf.score((features - mean) / std, labels)
    log.info("linear probe fitted on %d samples: train accuracy %.4f", len(labels), accuracy)
    return head


def zero_shot_head(
    backbone: Backbone, class_names: Sequence[str], template: str, tokenizer=None
) -> nn.Linear:
    """Build CLIP zero-shot logits as a linear head from class-name prompts.

    The backbone's features are L2-normalised image embeddings, so logits are
    `logit_scale * cos(image, text)`, as CLIP computes them.
    """
    clip = getattr(backbone, "clip_model", None)
    if clip is None:
        raise ValueError(f"zero-shot heads need a CLIP backbone, got arch {backbone.arch!r}")
    if tokenizer is None:
        from transformers import AutoTokenizer

        if not backbone.weights_folder:
            raise ValueError(
                "zero-shot head: no tokenizer given and no CLIP folder to load one from"
            )
        tokenizer = AutoTokenizer.from_pretrained(backbone.weights_folder, local_files_only=True)
    prompts = [template.format(name) for name in class_names]
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        text = clip.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        if not isinstance(text, torch.Tensor):
            text = text.pooler_output
        text = text / text.norm(dim=-1, keepdim=True)
        scale = clip.logit_scale.exp()
    head = nn.Linear(text.shape[1], len(class_names))
    with torch.no_grad():
        head.weight.copy_(text * scale)
        head.bias.zero_()
    return head


def own_head(backbone: Backbone, num_classes: int) -> nn.Linear:
    """Return a copy of the backbone's own task head, checking its class count."""
    head = getattr(backbone, "own_head", None)
    if head is None:
        raise ValueError(f"{backbone.arch} has no task head of its own; use head: linear_probe")
    if head.out_features != num_classes:
        raise ValueError(
            f"{backbone.arch}'s own head has {head.out_features} classes but the data set has "
            f"{num_classes}; use head: linear_probe"
        )
    copy = nn.Linear(head.in_features, head.out_features)
    copy.load_state_dict(head.state_dict())
    return copy


def head_sha256(head: nn.Linear) -> str:
    return module_sha256(head)


def save_head(head: nn.Linear, path: str | Path, kind: str) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tensors = {"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()}
    save_file(tensors, str(tmp), metadata={"kind": kind})
    # safetensors creates the file readable by its owner only; shard sets are shared.
    tmp.chmod(0o644)
    tmp.replace(path)


def load_head(path: str | Path) -> nn.Linear:
    tensors = load_file(str(path))
    head = nn.Linear(tensors["weight"].shape[1], tensors["weight"].shape[0])
    head.load_state_dict(tensors)
    return head
