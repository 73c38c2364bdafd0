"""AlexNet (Krizhevsky, Sutskever & Hinton 2012), ZFNet (Zeiler & Fergus 2013) and a CIFAR AlexNet.

Papers:
- AlexNet: https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks
- torchvision's single-tower layout (64-192-384-256-256, no LRN), from "One weird trick for
  parallelizing convolutional neural networks" (Krizhevsky 2014): https://arxiv.org/abs/1404.5997
- ZFNet: https://arxiv.org/abs/1311.2901, Fig. 3
- CIFAR AlexNet: Zhang et al. 2017, "Understanding deep learning requires rethinking
  generalization", https://arxiv.org/abs/1611.03530, Appendix A ("small Alexnet")

``alexnet`` is torchvision's layout, so its state dict loads into ``torchvision.models.alexnet``
and back (61,100,840 parameters at 1000 classes). ``zfnet`` follows Fig. 3 of Zeiler & Fergus:
a 7x7/2 first layer instead of 11x11/4, a 5x5/2 second layer, the dense 96-256-384-384-256 widths,
3x3/2 max-pooling and contrast normalisation after pooling in layers 1 and 2. Its pooling rounds
up (Caffe's convention) so the maps are Fig. 3's 110 -> 55 -> 26 -> 13 -> 13 -> 6 at 224x224.
``alexnet_cifar`` is the "small Alexnet" of Zhang et al. (the TensorFlow CIFAR-10 tutorial model):
two (5x5 conv 64 -> 3x3/2 max-pool -> LRN) modules, then FC 384 -> FC 192 -> linear, without
dropout; at 32x32 the flattened map is 8x8x64 (the tutorial's SAME pooling = ceil mode here).
We follow the paper's wording where the tutorial code differs (it normalises before pooling in
the second module).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn

from architectures.registry import register_model


class ConvRow(NamedTuple):
    """One convolution of a layout; a ReLU always follows it, then the ops named in ``after``."""

    out_chs: int
    kernel: int
    stride: int
    padding: int
    after: tuple[Literal["pool", "lrn"], ...] = ()


class LRNSpec(NamedTuple):
    """``nn.LocalResponseNorm`` arguments. PyTorch divides ``alpha`` by ``size``; the values here
    are already multiplied back so the sum is scaled as the source paper writes it."""

    size: int
    alpha: float
    beta: float
    k: float


class AlexNet(nn.Module):
    """AlexNet-style network: a conv stack from the layout table, adaptive pooling, an MLP head.

    Args:
        num_classes: Output classes.
        in_chans: Input channels.
        layout: Row of ``ALEXNET_LAYOUTS``: ``"alexnet"`` (torchvision), ``"zfnet"`` (Zeiler &
            Fergus Fig. 3) or ``"cifar"`` (Zhang et al. 2017's small AlexNet).
        dropout: Dropout before each hidden FC layer (AlexNet section 4.2 uses 0.5).
        positive_bias: Start the biases of conv layers 2, 4, 5 and of the hidden FC layers at 1
            (AlexNet section 5, so their ReLUs start in the linear regime); False starts every
            bias at 0, as ZFNet does (section 3); the ``zfnet`` and ``alexnet_cifar`` builders
            pass False.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        layout: Literal["alexnet", "zfnet", "cifar"] = "alexnet",
        dropout: float = 0.5,
        positive_bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.positive_bias = positive_bias
        spec = ALEXNET_LAYOUTS[layout]
        layers: list[nn.Module] = []
        in_chs = in_chans
        for row in spec["convs"]:
            conv = nn.Conv2d(in_chs, row.out_chs, row.kernel, row.stride, row.padding)
            layers += [conv, nn.ReLU(inplace=True)]
            for op in row.after:
                if op == "pool":  # overlapping 3x3/2 pooling, AlexNet section 3.4
                    layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=spec["ceil_mode"]))
                else:
                    layers.append(nn.LocalResponseNorm(*spec["lrn"]))
            in_chs = row.out_chs
        self.features = nn.Sequential(*layers)
        # Identity at the native input size (6x6 at 224, 8x8 at 32 for "cifar"); frees the input size.
        self.avgpool = nn.AdaptiveAvgPool2d(spec["pool_size"])
        head: list[nn.Module] = []
        in_features = in_chs * spec["pool_size"] ** 2
        for width in spec["hidden"]:
            # Dropout modules are kept at p=0 too, so state-dict keys do not depend on the knob.
            head += [nn.Dropout(dropout), nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        head.append(nn.Linear(in_features, num_classes))
        self.classifier = nn.Sequential(*head)
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def init_weights(self) -> None:
        """N(0, 0.01^2) weights (AlexNet section 5; ZFNet section 3 uses the same 10^-2)."""
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        for index, conv in enumerate(convs):
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.constant_(conv.bias, 1.0 if self.positive_bias and index in (1, 3, 4) else 0.0)
        for index, linear in enumerate(linears):
            nn.init.normal_(linear.weight, 0.0, 0.01)
            hidden = index < len(linears) - 1
            nn.init.constant_(linear.bias, 1.0 if self.positive_bias and hidden else 0.0)


# Variant table: conv rows (out_chs, kernel, stride, padding, ops after the ReLU) and the head.
ALEXNET_LAYOUTS: dict[str, dict] = {
    # torchvision.models.alexnet: "One weird trick" widths, no LRN, floor-mode pooling.
    "alexnet": dict(
        convs=(
            ConvRow(64, 11, 4, 2, ("pool",)),
            ConvRow(192, 5, 1, 2, ("pool",)),
            ConvRow(384, 3, 1, 1),
            ConvRow(256, 3, 1, 1),
            ConvRow(256, 3, 1, 1, ("pool",)),
        ),
        lrn=None,
        ceil_mode=False,
        pool_size=6,
        hidden=(4096, 4096),
    ),
    # Zeiler & Fergus Fig. 3: 7x7/2 first layer, 5x5/2 second, contrast normalisation after pooling.
    # The LRN constants are AlexNet's (section 3.3: k=2, n=5, alpha=1e-4, beta=0.75).
    "zfnet": dict(
        convs=(
            ConvRow(96, 7, 2, 1, ("pool", "lrn")),
            ConvRow(256, 5, 2, 0, ("pool", "lrn")),
            ConvRow(384, 3, 1, 1),
            ConvRow(384, 3, 1, 1),
            ConvRow(256, 3, 1, 1, ("pool",)),
        ),
        lrn=LRNSpec(size=5, alpha=5e-4, beta=0.75, k=2.0),  # alpha = 5 x 1e-4, see LRNSpec
        ceil_mode=True,
        pool_size=6,
        hidden=(4096, 4096),
    ),
    # Zhang et al. 2017 Appendix A; LRN as in the TensorFlow tutorial's tf.nn.lrn(depth_radius=4,
    # bias=1, alpha=0.001/9, beta=0.75), i.e. a window of 9 maps.
    "cifar": dict(
        convs=(
            ConvRow(64, 5, 1, 2, ("pool", "lrn")),
            ConvRow(64, 5, 1, 2, ("pool", "lrn")),
        ),
        lrn=LRNSpec(size=9, alpha=0.001, beta=0.75, k=1.0),  # alpha = 9 x 0.001/9
        ceil_mode=True,
        pool_size=8,
        hidden=(384, 192),
    ),
}


@register_model(
    family="alexnet",
    paper="https://arxiv.org/abs/1404.5997",
    params=61_100_840,  # torchvision.models.alexnet
    torchvision="alexnet",
)
def alexnet(**overrides) -> AlexNet:
    return AlexNet(**{**dict(layout="alexnet"), **overrides})


@register_model(
    family="alexnet",
    paper="https://arxiv.org/abs/1311.2901",
    params=62_357_608,  # Fig. 3's layer table, with biases
)
def zfnet(**overrides) -> AlexNet:
    return AlexNet(**{**dict(layout="zfnet", positive_bias=False), **overrides})


@register_model(
    family="alexnet",
    paper="https://arxiv.org/abs/1611.03530",
    params=1_756_426,  # Appendix A's layers at 32x32 input (8x8x64 = 4096 inputs to FC 384)
    input_size=(3, 32, 32),
    num_classes=10,
)
def alexnet_cifar(**overrides) -> AlexNet:
    return AlexNet(**{**dict(layout="cifar", dropout=0.0, positive_bias=False), **overrides})
