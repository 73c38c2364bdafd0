"""VGG (Simonyan & Zisserman 2014, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", https://arxiv.org/abs/1409.1556): configurations A, A-LRN, B, C, D, E of Table 1.

Each configuration is one row of ``VGG_CONFIGS``, spelled as Table 1 spells it ("conv3-64",
"conv1-256", "LRN", "maxpool"). Config C is D with 1x1 convolutions as the third layer of the
last three stages. The ImageNet head is torchvision's (adaptive 7x7 pool, FC 4096 - 4096 -
classes with dropout 0.5), so vgg11/13/16/19 and their ``_bn`` versions load torchvision state
dicts (132,863,336 / 133,047,848 / 138,357,544 / 143,667,240 parameters at 1000 classes).

``vgg16_cifar`` is config D with BatchNorm and the head most CIFAR ports use (kuangliu's
pytorch-cifar, https://github.com/kuangliu/pytorch-cifar/blob/master/models/vgg.py): the 32x32
input is 1x1x512 after the five pools, and a single linear layer 512 -> classes follows
(14,728,266 parameters at 10 classes). ``hidden=(512, 512)`` gives the other common head.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from architectures.registry import register_model

PAPER = "https://arxiv.org/abs/1409.1556"


def make_layer(token: str, in_chs: int, batch_norm: bool) -> tuple[list[nn.Module], int]:
    """Modules for one Table 1 entry and the channels they output.

    ``"conv3-64"`` is a 3x3 convolution with 64 outputs, padded to keep the size (section 2.1),
    followed by BatchNorm (when asked) and ReLU; ``"maxpool"`` is the paper's 2x2/2 max-pooling;
    ``"LRN"`` is Krizhevsky et al.'s local response normalisation (n=5, alpha=1e-4, beta=0.75,
    k=2; PyTorch divides alpha by n, hence 5e-4).
    """
    if token == "maxpool":
        return [nn.MaxPool2d(kernel_size=2, stride=2)], in_chs
    if token == "LRN":
        return [nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)], in_chs
    kind, width = token.split("-")
    kernel, out_chs = int(kind.removeprefix("conv")), int(width)
    conv = nn.Conv2d(in_chs, out_chs, kernel_size=kernel, padding=kernel // 2)
    norm = [nn.BatchNorm2d(out_chs)] if batch_norm else []
    return [conv, *norm, nn.ReLU(inplace=True)], out_chs


class VGG(nn.Module):
    """VGG: the conv stack of one Table 1 configuration, adaptive pooling, an MLP head.

    Args:
        num_classes: Output classes.
        in_chans: Input channels.
        config: Table 1 column: ``"A"``, ``"A-LRN"``, ``"B"``, ``"C"``, ``"D"`` or ``"E"``.
        batch_norm: BatchNorm after every convolution (not in the paper; torchvision's ``_bn``).
        hidden: Widths of the hidden FC layers (the paper's 4096, 4096; ``()`` for a linear head).
        pool_size: Side of the adaptive average pool before the head (7 at 224x224 is the
            identity; 1 is global average pooling).
        dropout: Dropout after each hidden FC layer (section 3.1: 0.5 on the first two FC layers).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        config: Literal["A", "A-LRN", "B", "C", "D", "E"] = "D",
        batch_norm: bool = False,
        hidden: tuple[int, ...] = (4096, 4096),
        pool_size: int = 7,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        layers: list[nn.Module] = []
        chs = in_chans
        for token in VGG_CONFIGS[config]:
            modules, chs = make_layer(token, chs, batch_norm)
            layers += modules
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        head: list[nn.Module] = []
        in_features = chs * pool_size**2
        for width in hidden:
            head += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            in_features = width
        head.append(nn.Linear(in_features, num_classes))
        self.classifier = nn.Sequential(*head)
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, 512, H/32, W/32)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def init_weights(self) -> None:
        """Glorot & Bengio (2010) uniform weights and zero biases.

        Section 3.1 trains A from N(0, 10^-2) and deeper nets from A's layers, then notes that
        Glorot initialisation trains them all without that pre-training; we follow the latter.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


# Table 1 of the paper, one column per row, written out in full.
VGG_CONFIGS: dict[str, tuple[str, ...]] = {
    "A": (
        "conv3-64", "maxpool",
        "conv3-128", "maxpool",
        "conv3-256", "conv3-256", "maxpool",
        "conv3-512", "conv3-512", "maxpool",
        "conv3-512", "conv3-512", "maxpool",
    ),
    "A-LRN": (
        "conv3-64", "LRN", "maxpool",
        "conv3-128", "maxpool",
        "conv3-256", "conv3-256", "maxpool",
        "conv3-512", "conv3-512", "maxpool",
        "conv3-512", "conv3-512", "maxpool",
    ),
    "B": (
        "conv3-64", "conv3-64", "maxpool",
        "conv3-128", "conv3-128", "maxpool",
        "conv3-256", "conv3-256", "maxpool",
        "conv3-512", "conv3-512", "maxpool",
        "conv3-512", "conv3-512", "maxpool",
    ),
    "C": (
        "conv3-64", "conv3-64", "maxpool",
        "conv3-128", "conv3-128", "maxpool",
        "conv3-256", "conv3-256", "conv1-256", "maxpool",
        "conv3-512", "conv3-512", "conv1-512", "maxpool",
        "conv3-512", "conv3-512", "conv1-512", "maxpool",
    ),
    "D": (
        "conv3-64", "conv3-64", "maxpool",
        "conv3-128", "conv3-128", "maxpool",
        "conv3-256", "conv3-256", "conv3-256", "maxpool",
        "conv3-512", "conv3-512", "conv3-512", "maxpool",
        "conv3-512", "conv3-512", "conv3-512", "maxpool",
    ),
    "E": (
        "conv3-64", "conv3-64", "maxpool",
        "conv3-128", "conv3-128", "maxpool",
        "conv3-256", "conv3-256", "conv3-256", "conv3-256", "maxpool",
        "conv3-512", "conv3-512", "conv3-512", "conv3-512", "maxpool",
        "conv3-512", "conv3-512", "conv3-512", "conv3-512", "maxpool",
    ),
}  # fmt: skip


@register_model(family="vgg", paper=PAPER, params=132_863_336, torchvision="vgg11")
def vgg11(**overrides) -> VGG:
    return VGG(**{**dict(config="A"), **overrides})


@register_model(family="vgg", paper=PAPER, params=132_863_336)  # LRN has no parameters
def vgg11_lrn(**overrides) -> VGG:
    return VGG(**{**dict(config="A-LRN"), **overrides})


@register_model(family="vgg", paper=PAPER, params=133_047_848, torchvision="vgg13")
def vgg13(**overrides) -> VGG:
    return VGG(**{**dict(config="B"), **overrides})


@register_model(family="vgg", paper=PAPER, params=133_638_952)  # Table 2 rounds it to 134M
def vgg16_c(**overrides) -> VGG:
    return VGG(**{**dict(config="C"), **overrides})


@register_model(family="vgg", paper=PAPER, params=138_357_544, torchvision="vgg16")
def vgg16(**overrides) -> VGG:
    return VGG(**{**dict(config="D"), **overrides})


@register_model(family="vgg", paper=PAPER, params=143_667_240, torchvision="vgg19")
def vgg19(**overrides) -> VGG:
    return VGG(**{**dict(config="E"), **overrides})


@register_model(family="vgg", paper=PAPER, params=132_868_840, torchvision="vgg11_bn")
def vgg11_bn(**overrides) -> VGG:
    return VGG(**{**dict(config="A", batch_norm=True), **overrides})


@register_model(family="vgg", paper=PAPER, params=133_053_736, torchvision="vgg13_bn")
def vgg13_bn(**overrides) -> VGG:
    return VGG(**{**dict(config="B", batch_norm=True), **overrides})


@register_model(family="vgg", paper=PAPER, params=138_365_992, torchvision="vgg16_bn")
def vgg16_bn(**overrides) -> VGG:
    return VGG(**{**dict(config="D", batch_norm=True), **overrides})


@register_model(family="vgg", paper=PAPER, params=143_678_248, torchvision="vgg19_bn")
def vgg19_bn(**overrides) -> VGG:
    return VGG(**{**dict(config="E", batch_norm=True), **overrides})


@register_model(
    family="vgg",
    paper=PAPER,
    params=14_728_266,  # kuangliu/pytorch-cifar's VGG16 count
    input_size=(3, 32, 32),
    num_classes=10,
)
def vgg16_cifar(**overrides) -> VGG:
    return VGG(**{**dict(config="D", batch_norm=True, hidden=(), pool_size=1), **overrides})
