"""DenseNet (Huang, Liu, van der Maaten & Weinberger 2017, "Densely Connected Convolutional
Networks", https://arxiv.org/abs/1608.06993).

Every layer of a dense block sees the concatenation of all earlier maps of the block and adds
``growth_rate`` (k) maps; transitions (BN-ReLU-1x1 conv-2x2 avg-pool) between blocks shrink the
channels by the ``compression`` factor θ. The paper's ablation knobs are independent here:
``block`` ("basic" H_l = BN-ReLU-3x3 conv, or DenseNet-B's "bottleneck" with a 1x1 conv to
``bn_size * k`` channels first), ``compression`` (θ < 1 makes DenseNet-C; both make DenseNet-BC),
``growth_rate`` and ``block_config``. Module names follow torchvision
(``features.denseblock1.denselayer1.norm1``, ``features.transition1.conv``, ``classifier``) so
its state dicts and weights load unchanged; ``memory_efficient`` recomputes the concatenation and
its bottleneck in backward (Pleiss et al. 2017, https://arxiv.org/abs/1707.06990).

Counts: torchvision's documentation for DenseNet-121/161/169/201; the paper's Table 2 for the
CIFAR nets (1.0M for L=40, k=12; 0.8M for DenseNet-BC L=100, k=12), whose exact counts at 10
classes are 1,019,722 and 769,162.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from architectures.pretrained import pretrainable
from architectures.registry import register_model


def _conv_stem(in_chans: int, width: int) -> list[tuple[str, nn.Module]]:
    # CIFAR: one 3x3 conv; the first dense layer's BN-ReLU follows it (the paper's Lua code).
    return [("conv0", nn.Conv2d(in_chans, width, kernel_size=3, padding=1, bias=False))]


def _imagenet_stem(in_chans: int, width: int) -> list[tuple[str, nn.Module]]:
    # ImageNet (Table 1): 7x7/2 conv, BN, ReLU, 3x3/2 max-pool; 224 -> 56.
    return [
        ("conv0", nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)),
        ("norm0", nn.BatchNorm2d(width)),
        ("relu0", nn.ReLU(inplace=True)),
        ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
    ]


STEMS = {"imagenet": _imagenet_stem, "cifar": _conv_stem}


class DenseLayer(nn.Module):
    """H_l on the list of all earlier maps: BN-ReLU-3x3 conv adding k maps (Sec. 3, "Composite
    function"), preceded in DenseNet-B by BN-ReLU-1x1 conv to ``bn_size * k`` maps (Sec. 3, "Bottleneck
    layers"). Module names are torchvision's: ``norm1``/``conv1`` is the first convolution, the 1x1 of a
    bottleneck layer or the 3x3 of a basic one; ``norm2``/``conv2`` the bottleneck's 3x3.

    ``concat_and_first_conv`` is the part whose activations ``memory_efficient`` recomputes: the
    concatenation it starts from grows with depth and would otherwise be stored once per layer.

    Args:
        in_chs: Channels of the concatenated input.
        growth_rate: Channels the layer adds (k).
        bottleneck: DenseNet-B's 1x1 bottleneck before the 3x3 conv.
        bn_size: Bottleneck width as a multiple of k (DenseNet-B's 4).
        drop_rate: Dropout on the new maps (the paper's 0.2 on CIFAR without augmentation).
        memory_efficient: Recompute the concatenation in backward instead of storing it.
    """

    def __init__(
        self,
        in_chs: int,
        growth_rate: int,
        bottleneck: bool = True,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        self.drop_rate = drop_rate
        self.memory_efficient = memory_efficient
        self.norm1 = nn.BatchNorm2d(in_chs)
        self.relu1 = nn.ReLU(inplace=True)
        if bottleneck:
            self.conv1 = nn.Conv2d(in_chs, bn_size * growth_rate, kernel_size=1, bias=False)
            self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chs, growth_rate, kernel_size=3, padding=1, bias=False)

    def concat_and_first_conv(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and any(t.requires_grad for t in inputs):
            out = cp.checkpoint(self.concat_and_first_conv, *inputs, use_reentrant=False)
        else:
            out = self.concat_and_first_conv(*inputs)
        if self.bottleneck:
            out = self.conv2(self.relu2(self.norm2(out)))
        return F.dropout(out, p=self.drop_rate, training=self.training)


# ``block`` names the layer kind: whether it has DenseNet-B's bottleneck.
BOTTLENECK = {"basic": False, "bottleneck": True}


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers, each fed every earlier output; returns all of them concatenated."""

    def __init__(self, num_layers: int, in_chs: int, growth_rate: int, **layer_args: Any) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(in_chs + i * growth_rate, growth_rate, **layer_args))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv-2x2 average pool between dense blocks (Sec. 3, "Pooling layers")."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chs)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """Stem, dense blocks separated by transitions, BN-ReLU, global average pool, linear classifier.
    Defaults give DenseNet-121.

    Args:
        num_classes: Output classes.
        in_chans: Input channels.
        growth_rate: Maps each dense layer adds (k).
        block_config: Dense layers per block.
        stem: ``"imagenet"`` (7x7/2 conv, BN, ReLU, max-pool) or ``"cifar"`` (one 3x3 conv).
        stem_width: Output channels of the stem conv (2k in DenseNet-BC, 16 in plain DenseNet).
        block: ``"bottleneck"`` (DenseNet-B layers) or ``"basic"`` (BN-ReLU-3x3 conv).
        bn_size: Bottleneck width as a multiple of k.
        compression: Transition output = floor(compression * input channels) (θ; 1 = none).
        drop_rate: Dropout after every dense layer.
        memory_efficient: Trade compute for memory by recomputing concatenations in backward.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        stem: Literal["imagenet", "cifar"] = "imagenet",
        stem_width: int = 64,
        block: Literal["basic", "bottleneck"] = "bottleneck",
        bn_size: int = 4,
        compression: float = 0.5,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.features = nn.Sequential(OrderedDict(STEMS[stem](in_chans, stem_width)))
        chs = stem_width
        for i, num_layers in enumerate(block_config):
            dense_block = DenseBlock(
                num_layers, chs, growth_rate, bottleneck=BOTTLENECK[block],
                bn_size=bn_size, drop_rate=drop_rate, memory_efficient=memory_efficient,
            )  # fmt: skip
            self.features.add_module(f"denseblock{i + 1}", dense_block)
            chs += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(chs, int(compression * chs)))
                chs = int(compression * chs)
        # torchvision calls the final BN "norm5" whatever the number of blocks; kept for its state dicts.
        self.features.add_module("norm5", nn.BatchNorm2d(chs))
        self.num_features = chs
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(chs, num_classes)
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.features(x))  # (N, num_features, H/32, W/32) on ImageNet

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def init_weights(self) -> None:
        """He et al. 2015 ("Delving Deep into Rectifiers") normal convs, as the paper (Sec. 4.2,
        following fb.resnet.torch) and torchvision; BN scale 1, shift 0; zero classifier bias."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)


def fix_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's DenseNet weight files predate its module names: ``denselayer1.norm.1.weight``
    is today's ``denselayer1.norm1.weight`` (as torchvision's own ``_load_state_dict`` renames)."""
    legacy = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
    )
    return {legacy.sub(r"\1\2", key): value for key, value in state.items()}


# ---------------------------------------------------------------------------------------------
# Variant table: one row per network, exact parameter count (at the registered num_classes) after it.
# ---------------------------------------------------------------------------------------------

DENSENETS: dict[str, dict[str, Any]] = {
    # ImageNet DenseNet-BC, Table 1 (k = 32, 48 for 161), torchvision's layout (1000 classes)
    "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16), stem_width=64),  # 7,978,856
    "densenet161": dict(growth_rate=48, block_config=(6, 12, 36, 24), stem_width=96),  # 28,681,000
    "densenet169": dict(growth_rate=32, block_config=(6, 12, 32, 32), stem_width=64),  # 14,149,480
    "densenet201": dict(growth_rate=32, block_config=(6, 12, 48, 32), stem_width=64),  # 20,013,928
    # CIFAR-10, Table 2: three blocks of (L - 4) / 3 layers, or (L - 4) / 6 bottleneck layers (10 classes)
    "densenet40_k12": dict(
        num_classes=10, growth_rate=12, block_config=(12, 12, 12), stem="cifar", stem_width=16, block="basic",
        compression=1.0,
    ),  # 1,019,722
    "densenet_bc100_k12": dict(
        num_classes=10, growth_rate=12, block_config=(16, 16, 16), stem="cifar", stem_width=24,
        block="bottleneck", compression=0.5,
    ),  # 769,162
}  # fmt: skip

HUANG2017 = "https://arxiv.org/abs/1608.06993"

# ---------------------------------------------------------------------------------------------
# Registered builders
# ---------------------------------------------------------------------------------------------


@register_model(family="densenet", paper=HUANG2017, params=7_978_856, torchvision="densenet121")
@pretrainable(remap=fix_legacy_keys)
def densenet121(**overrides) -> DenseNet:
    return DenseNet(**{**DENSENETS["densenet121"], **overrides})


@register_model(family="densenet", paper=HUANG2017, params=28_681_000, torchvision="densenet161")
@pretrainable(remap=fix_legacy_keys)
def densenet161(**overrides) -> DenseNet:
    return DenseNet(**{**DENSENETS["densenet161"], **overrides})


@register_model(family="densenet", paper=HUANG2017, params=14_149_480, torchvision="densenet169")
@pretrainable(remap=fix_legacy_keys)
def densenet169(**overrides) -> DenseNet:
    return DenseNet(**{**DENSENETS["densenet169"], **overrides})


@register_model(family="densenet", paper=HUANG2017, params=20_013_928, torchvision="densenet201")
@pretrainable(remap=fix_legacy_keys)
def densenet201(**overrides) -> DenseNet:
    return DenseNet(**{**DENSENETS["densenet201"], **overrides})


@register_model(family="densenet", paper=HUANG2017, params=1_019_722, input_size=(3, 32, 32), num_classes=10)
def densenet40_k12(**overrides) -> DenseNet:
    return DenseNet(**{**DENSENETS["densenet40_k12"], **overrides})


@register_model(family="densenet", paper=HUANG2017, params=769_162, input_size=(3, 32, 32), num_classes=10)
def densenet_bc100_k12(**overrides) -> DenseNet:
    return DenseNet(**{**DENSENETS["densenet_bc100_k12"], **overrides})
