"""Network in Network (Lin, Chen & Yan 2013, https://arxiv.org/abs/1312.4400), CIFAR-10 model.

Three mlpconv blocks (a spatial convolution followed by two 1x1 convolutions, the paper's
"micro network", section 3.1), each with ReLU; 3x3/2 pooling and 50% dropout between blocks
(section 4.1: "dropout is applied on the outputs of all but the last mlpconv layers"); the last
1x1 convolution has one map per class and global average pooling turns the maps into logits, with
no fully connected layer (section 3.2). Widths, kernels, paddings and pooling kinds are those of
the CIFAR-10 model the authors released with the paper (Caffe model zoo, gist
mavenlin/e56253735ef32c3c296d): 192-160-96 (5x5), 192-192-192 (5x5), 192-192-classes (3x3), max
then average pooling, rounding up as Caffe does, and a ReLU on the class maps too.
966,986 parameters at 10 classes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

from architectures.registry import register_model


class MLPConv(nn.Sequential):
    """kxk conv -> ReLU -> (1x1 conv -> ReLU) per further width: a conv with an MLP per pixel.

    Args:
        in_chs: Input channels.
        widths: Output channels of the kxk convolution and then of each 1x1 convolution.
        kernel: Size of the first (spatial) convolution, padded to keep the map size.
    """

    def __init__(self, in_chs: int, widths: tuple[int, ...], kernel: int) -> None:
        layers: list[nn.Module] = []
        for index, out_chs in enumerate(widths):
            size = kernel if index == 0 else 1
            layers += [nn.Conv2d(in_chs, out_chs, size, padding=size // 2), nn.ReLU(inplace=True)]
            in_chs = out_chs
        super().__init__(*layers)


POOLS = {
    "max": lambda: nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
    "avg": lambda: nn.AvgPool2d(kernel_size=3, stride=2, ceil_mode=True),
}


class NIN(nn.Module):
    """Network in Network: mlpconv blocks, pooling + dropout between them, global average pooling.

    Args:
        num_classes: Output classes (the width of the last 1x1 convolution).
        in_chans: Input channels.
        widths: Per block, the widths of its convolutions; the last block's class layer is
            appended from ``num_classes``.
        kernels: Per block, the size of its spatial convolution.
        pools: Pooling between consecutive blocks, ``"max"`` or ``"avg"`` (3x3/2).
        dropout: Dropout after each pooling layer (the paper's 0.5).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[tuple[int, ...], ...] = ((192, 160, 96), (192, 192, 192), (192, 192)),
        kernels: tuple[int, ...] = (5, 5, 3),
        pools: tuple[Literal["max", "avg"], ...] = ("max", "avg"),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not len(widths) == len(kernels) == len(pools) + 1:
            raise ValueError("need one kernel per block and one pooling between consecutive blocks")
        self.num_classes = num_classes
        self.in_chans = in_chans
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_chs = in_chans
        for index, (block_widths, kernel) in enumerate(zip(widths, kernels, strict=True), start=1):
            if index == len(widths):
                block_widths = (*block_widths, num_classes)
            layers[f"mlpconv{index}"] = MLPConv(in_chs, block_widths, kernel)
            in_chs = block_widths[-1]
            if index < len(widths):
                layers[f"pool{index}"] = POOLS[pools[index - 1]]()
                layers[f"dropout{index}"] = nn.Dropout(dropout)
        self.features = nn.Sequential(layers)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, num_classes, 8, 8) at 32x32: one confidence map per class

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.global_pool(features), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def init_weights(self) -> None:
        """He et al. (2015, https://arxiv.org/abs/1502.01852) normal weights, zero biases.

        The NIN paper states no initialisation; He init keeps this 9-layer ReLU stack trainable
        from scratch at the usual learning rates.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)


# Variant table: the paper's CIFAR-10 model (CIFAR-100 differs only in num_classes).
NIN_VARIANTS: dict[str, dict] = {
    "nin_cifar": dict(
        widths=((192, 160, 96), (192, 192, 192), (192, 192)),
        kernels=(5, 5, 3),
        pools=("max", "avg"),
    ),
}


@register_model(
    family="nin",
    paper="https://arxiv.org/abs/1312.4400",
    params=966_986,  # the released CIFAR-10 model's layers, with biases
    input_size=(3, 32, 32),
    num_classes=10,
)
def nin_cifar(**overrides) -> NIN:
    return NIN(**{**NIN_VARIANTS["nin_cifar"], **overrides})
