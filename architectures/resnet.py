"""ResNet and its descendants as one class: He et al. 2015 (https://arxiv.org/abs/1512.03385),
pre-activation and the shortcut study of He et al. 2016b (https://arxiv.org/abs/1603.05027),
ResNeXt (Xie et al. 2017, https://arxiv.org/abs/1611.05431) and Wide ResNets (Zagoruyko &
Komodakis 2016, https://arxiv.org/abs/1605.07146).

Independent knobs: ``block`` (basic / bottleneck convolutions), ``layers`` and ``widths`` (units and
planes per stage), ``stem`` (ImageNet 7x7 + max-pool, or CIFAR 3x3), ``unit`` (where BN and ReLU
sit), ``shortcut`` (how the identity meets the residual), ``downsample`` (how it is reshaped),
``groups`` / ``base_width`` (ResNeXt, WRN-50-2) and ``drop_rate`` (WRN). The pieces live in
``architectures.resnet_parts``. ImageNet variants keep torchvision's module names, so its state
dicts (and weights, see ``architectures.pretrained``) load unchanged.

Evidence for the counts in the table below: torchvision's documentation for the ImageNet nets.
The papers give rounded figures; the exact ones are what these layouts count, checked against
them in tests/test_zoo_resnet.py: He et al. 2015 Table 6 (0.27M ... 19.4M, which are option A's:
option B would read 0.47M and 0.86M for ResNet-32/56), Zagoruyko & Komodakis Table 4 (WRN-28-10,
36.5M), and He et al. 2016b Table 3 (1.7M, 10.2M) and Xie et al. Table 7 (34.4M, 68.1M), whose
figures match the conv and fc weights alone (BN adds 0.02-0.15M, e.g. 10.33M for ResNet-1001).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from architectures.pretrained import pretrainable
from architectures.registry import register_model
from architectures.resnet_parts import BLOCKS, UNITS, make_shortcut


class Stem(NamedTuple):
    kernel_size: int
    stride: int
    max_pool: bool


STEMS: dict[str, Stem] = {
    "imagenet": Stem(kernel_size=7, stride=2, max_pool=True),  # 224 -> 56 before the first stage
    "cifar": Stem(kernel_size=3, stride=1, max_pool=False),  # 32x32 inputs keep their resolution
}


class ResNet(nn.Module):
    """A stem, stages of residual units (the first unit of every stage but the first halves the
    resolution), global average pooling and a linear classifier. Defaults give ResNet-50.

    Args:
        num_classes: Output classes.
        in_chans: Input channels.
        block: ``"basic"`` (two 3x3 convs) or ``"bottleneck"`` (1x1-3x3-1x1, 4x expansion).
        layers: Residual units per stage.
        widths: Planes per stage (a bottleneck stage outputs 4x its planes).
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv).
        stem_width: Output channels of the stem conv.
        unit: BN/ReLU placement (He et al. 2016b, Fig. 4): ``"original"``, ``"bn_after_add"``,
            ``"relu_before_add"``, ``"relu_preact"`` or ``"full_preact"``.
        shortcut: He et al. 2016b, Fig. 2: ``"identity"``, ``"scale"``, ``"exclusive_gate"``,
            ``"shortcut_gate"``, ``"conv1x1"`` (option C) or ``"dropout"``; ``"none"`` gives a
            plain net. A shortcut of one's own (``register_shortcut``) is named in a builder's
            overrides, which this list does not check: ``overrides: {shortcut: my_module.name}``.
        downsample: The identity's reshaping path where a unit changes shape: ``"A"`` (zero
            padding), ``"B"`` (1x1 conv + BN) or ``"conv"`` (1x1 conv, for pre-activation).
        shortcut_args: Extra arguments of the shortcut, e.g. ``{"shortcut_scale": 0.5,
            "residual_scale": 0.5}``, ``{"gate_bias": -6.0}`` or ``{"p": 0.5}``.
        groups: Cardinality of the bottleneck's 3x3 conv (ResNeXt).
        base_width: Bottleneck width per group for 64 planes (ResNeXt's ``d``; 128 for WRN-50-2).
        drop_rate: Dropout between a unit's last two convs (Wide ResNets).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        block: Literal["basic", "bottleneck"] = "bottleneck",
        layers: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: Literal["imagenet", "cifar"] = "imagenet",
        stem_width: int = 64,
        unit: Literal["original", "bn_after_add", "relu_before_add", "relu_preact", "full_preact"] = "original",
        shortcut: Literal[
            "identity", "none", "scale", "exclusive_gate", "shortcut_gate", "conv1x1", "dropout"
        ] = "identity",
        downsample: Literal["A", "B", "conv"] = "B",
        shortcut_args: dict[str, Any] | None = None,
        groups: int = 1,
        base_width: int = 64,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"layers {tuple(layers)} and widths {tuple(widths)} must have one entry per stage")
        self.num_classes = num_classes
        self.in_chans = in_chans
        stem_spec, unit_cls, layout = STEMS[stem], UNITS[unit], BLOCKS[block]

        self.conv1 = nn.Conv2d(
            in_chans,
            stem_width,
            stem_spec.kernel_size,
            stem_spec.stride,
            stem_spec.kernel_size // 2,
            bias=False,
        )
        # Pre-activation units normalise their own input, so their stem stops at the conv.
        self.bn1 = nn.Identity() if unit_cls.preact else nn.BatchNorm2d(stem_width)
        self.relu = nn.Identity() if unit_cls.preact else nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem_spec.max_pool else nn.Identity()

        in_chs = stem_width
        self.stage_names: list[str] = []
        for index, (depth, planes) in enumerate(zip(layers, widths, strict=True)):
            units = []
            for position in range(depth):
                stride = 2 if index > 0 and position == 0 else 1
                convs = layout(in_chs, planes, stride, groups, base_width)
                out_chs = convs[-1].out_chs
                unit_shortcut = make_shortcut(shortcut, in_chs, out_chs, stride, downsample, **(shortcut_args or {}))
                units.append(unit_cls(convs, unit_shortcut, drop_rate))
                in_chs = out_chs
            self.stage_names.append(f"layer{index + 1}")
            self.add_module(self.stage_names[-1], nn.Sequential(*units))
        self.num_features = in_chs

        # The last pre-activation unit's sum is neither normalised nor rectified yet (He et al. 2016b,
        # Sec. 4.1: "an extra activation right after its element-wise addition").
        self.final_bn = nn.BatchNorm2d(in_chs) if unit_cls.preact else nn.Identity()
        self.final_relu = nn.ReLU(inplace=True) if unit_cls.preact else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_chs, num_classes)
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = self.get_submodule(name)(x)
        return self.final_relu(self.final_bn(x))  # (N, num_features, H/32, W/32) on ImageNet

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def init_weights(self) -> None:
        """He et al. 2015 (Sec. 3.4, citing "Delving Deep into Rectifiers", arXiv 1502.01852):
        zero-mean normal convs with std sqrt(2 / fan), fan_out as in fb.resnet.torch and torchvision;
        BN scale 1, shift 0. Conv biases (only the gates of He et al. 2016b have one) keep their
        b_g, and the classifier keeps PyTorch's default, as torchvision's."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# Variant table: one row per network, exact parameter count (at the registered num_classes) after it.
# ---------------------------------------------------------------------------------------------

# He et al. 2015, Sec. 4.2: CIFAR-10, a 3x3 stem of 16 maps, stages of 16/32/64 planes on 32x32 inputs.
CIFAR10: dict[str, Any] = dict(num_classes=10, stem="cifar", stem_width=16, widths=(16, 32, 64))

RESNETS: dict[str, dict[str, Any]] = {
    # ImageNet, He et al. 2015 Table 1; option B shortcuts, torchvision's layout (1000 classes)
    "resnet18": dict(block="basic", layers=(2, 2, 2, 2)),  # 11,689,512
    "resnet34": dict(block="basic", layers=(3, 4, 6, 3)),  # 21,797,672
    "resnet50": dict(block="bottleneck", layers=(3, 4, 6, 3)),  # 25,557,032
    "resnet101": dict(block="bottleneck", layers=(3, 4, 23, 3)),  # 44,549,160
    "resnet152": dict(block="bottleneck", layers=(3, 8, 36, 3)),  # 60,192,808
    "resnext50_32x4d": dict(block="bottleneck", layers=(3, 4, 6, 3), groups=32, base_width=4),  # 25,028,904
    "wide_resnet50_2": dict(block="bottleneck", layers=(3, 4, 6, 3), base_width=128),  # 68,883,240
    # CIFAR-10, He et al. 2015 Sec. 4.2: 6n+2 layers, option A (zero-padding) shortcuts (10 classes)
    "resnet20": dict(**CIFAR10, block="basic", layers=(3, 3, 3), downsample="A"),  # 269,722
    "resnet32": dict(**CIFAR10, block="basic", layers=(5, 5, 5), downsample="A"),  # 464,154
    "resnet44": dict(**CIFAR10, block="basic", layers=(7, 7, 7), downsample="A"),  # 658,586
    "resnet56": dict(**CIFAR10, block="basic", layers=(9, 9, 9), downsample="A"),  # 853,018
    "resnet110": dict(**CIFAR10, block="basic", layers=(18, 18, 18), downsample="A"),  # 1,727,962
    "resnet1202": dict(**CIFAR10, block="basic", layers=(200, 200, 200), downsample="A"),  # 19,421,274
    # The same stacks without shortcuts (He et al. 2015 Fig. 6, the degradation problem)
    "plain20": dict(**CIFAR10, block="basic", layers=(3, 3, 3), shortcut="none"),  # 269,722
    "plain32": dict(**CIFAR10, block="basic", layers=(5, 5, 5), shortcut="none"),  # 464,154
    "plain44": dict(**CIFAR10, block="basic", layers=(7, 7, 7), shortcut="none"),  # 658,586
    "plain56": dict(**CIFAR10, block="basic", layers=(9, 9, 9), shortcut="none"),  # 853,018
    "plain110": dict(**CIFAR10, block="basic", layers=(18, 18, 18), shortcut="none"),  # 1,727,962
    "plain1202": dict(**CIFAR10, block="basic", layers=(200, 200, 200), shortcut="none"),  # 19,421,274
    # He et al. 2016b Table 2 / Table 3: 9n+2-layer bottleneck nets, original and pre-activation units
    "resnet164": dict(**CIFAR10, block="bottleneck", layers=(18, 18, 18), downsample="B"),  # 1,704,154
    "preact_resnet110": dict(
        **CIFAR10, block="basic", layers=(18, 18, 18), unit="full_preact", downsample="A"
    ),  # 1,727,962
    "preact_resnet164": dict(
        **CIFAR10, block="bottleneck", layers=(18, 18, 18), unit="full_preact", downsample="conv"
    ),  # 1,703,258
    "preact_resnet1001": dict(
        **CIFAR10, block="bottleneck", layers=(111, 111, 111), unit="full_preact", downsample="conv"
    ),  # 10,327,706
    # Xie et al. 2017 Sec. 5.3 / Table 7: ResNeXt-29, 64-map stem, cardinality x 64d bottlenecks
    "resnext29_8x64d": dict(
        num_classes=10, stem="cifar", stem_width=64, widths=(64, 128, 256), block="bottleneck",
        layers=(3, 3, 3), groups=8,
    ),  # 34,426,698
    "resnext29_16x64d": dict(
        num_classes=10, stem="cifar", stem_width=64, widths=(64, 128, 256), block="bottleneck",
        layers=(3, 3, 3), groups=16,
    ),  # 68,155,210
    # Zagoruyko & Komodakis 2016, Table 1: WRN-28-10, pre-activation basic blocks 10x as wide
    "wide_resnet28_10": dict(
        num_classes=10, stem="cifar", stem_width=16, widths=(160, 320, 640), block="basic", layers=(4, 4, 4),
        unit="full_preact", downsample="conv", drop_rate=0.0,  # the paper's dropout rows use 0.3
    ),  # 36,479,194
}  # fmt: skip

HE2015 = "https://arxiv.org/abs/1512.03385"
HE2016B = "https://arxiv.org/abs/1603.05027"
XIE2017 = "https://arxiv.org/abs/1611.05431"
ZAGORUYKO2016 = "https://arxiv.org/abs/1605.07146"
CIFAR = dict(input_size=(3, 32, 32), num_classes=10)

# ---------------------------------------------------------------------------------------------
# Registered builders
# ---------------------------------------------------------------------------------------------


@register_model(family="resnet", paper=HE2015, params=11_689_512, torchvision="resnet18")
@pretrainable
def resnet18(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnet18"], **overrides})


@register_model(family="resnet", paper=HE2015, params=21_797_672, torchvision="resnet34")
@pretrainable
def resnet34(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnet34"], **overrides})


@register_model(family="resnet", paper=HE2015, params=25_557_032, torchvision="resnet50")
@pretrainable
def resnet50(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnet50"], **overrides})


@register_model(family="resnet", paper=HE2015, params=44_549_160, torchvision="resnet101")
@pretrainable
def resnet101(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnet101"], **overrides})


@register_model(family="resnet", paper=HE2015, params=60_192_808, torchvision="resnet152")
@pretrainable
def resnet152(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnet152"], **overrides})


@register_model(family="resnext", paper=XIE2017, params=25_028_904, torchvision="resnext50_32x4d")
@pretrainable
def resnext50_32x4d(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnext50_32x4d"], **overrides})


@register_model(family="wide_resnet", paper=ZAGORUYKO2016, params=68_883_240, torchvision="wide_resnet50_2")
@pretrainable
def wide_resnet50_2(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["wide_resnet50_2"], **overrides})


@register_model(family="resnet_cifar", paper=HE2015, params=269_722, **CIFAR)
def resnet20(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnet20"], **overrides})


@register_model(family="resnet_cifar", paper=HE2015, params=464_154, **CIFAR)
def resnet32(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnet32"], **overrides})


@register_model(family="resnet_cifar", paper=HE2015, params=658_586, **CIFAR)
def resnet44(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnet44"], **overrides})


@register_model(family="resnet_cifar", paper=HE2015, params=853_018, **CIFAR)
def resnet56(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnet56"], **overrides})


@register_model(family="resnet_cifar", paper=HE2015, params=1_727_962, **CIFAR)
def resnet110(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnet110"], **overrides})


@register_model(family="resnet_cifar", paper=HE2015, params=19_421_274, **CIFAR)
def resnet1202(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnet1202"], **overrides})


@register_model(family="resnet_cifar", paper=HE2015, params=269_722, **CIFAR)
def plain20(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["plain20"], **overrides})


@register_model(family="resnet_cifar", paper=HE2015, params=464_154, **CIFAR)
def plain32(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["plain32"], **overrides})


@register_model(family="resnet_cifar", paper=HE2015, params=658_586, **CIFAR)
def plain44(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["plain44"], **overrides})


@register_model(family="resnet_cifar", paper=HE2015, params=853_018, **CIFAR)
def plain56(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["plain56"], **overrides})


@register_model(family="resnet_cifar", paper=HE2015, params=1_727_962, **CIFAR)
def plain110(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["plain110"], **overrides})


@register_model(family="resnet_cifar", paper=HE2015, params=19_421_274, **CIFAR)
def plain1202(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["plain1202"], **overrides})


@register_model(family="resnet_cifar", paper=HE2016B, params=1_704_154, **CIFAR)
def resnet164(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnet164"], **overrides})


@register_model(family="resnet_cifar", paper=HE2016B, params=1_727_962, **CIFAR)
def preact_resnet110(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["preact_resnet110"], **overrides})


@register_model(family="resnet_cifar", paper=HE2016B, params=1_703_258, **CIFAR)
def preact_resnet164(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["preact_resnet164"], **overrides})


@register_model(family="resnet_cifar", paper=HE2016B, params=10_327_706, **CIFAR)
def preact_resnet1001(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["preact_resnet1001"], **overrides})


@register_model(family="resnext", paper=XIE2017, params=34_426_698, **CIFAR)
def resnext29_8x64d(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnext29_8x64d"], **overrides})


@register_model(family="resnext", paper=XIE2017, params=68_155_210, **CIFAR)
def resnext29_16x64d(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["resnext29_16x64d"], **overrides})


@register_model(family="wide_resnet", paper=ZAGORUYKO2016, params=36_479_194, **CIFAR)
def wide_resnet28_10(**overrides) -> ResNet:
    return ResNet(**{**RESNETS["wide_resnet28_10"], **overrides})
