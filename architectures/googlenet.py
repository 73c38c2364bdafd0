"""GoogLeNet / Inception v1 (Szegedy et al. 2014, "Going Deeper with Convolutions",
https://arxiv.org/abs/1409.4842) with its two auxiliary classifiers.

Module names and structure are torchvision's ``googlenet`` (every conv is conv -> BatchNorm ->
ReLU, which the paper predates), so state dicts load both ways with ``aux_logits`` True or False:
13,004,888 parameters with the aux heads, 6,624,904 without, at 1000 classes. Two torchvision
details are kept for that compatibility and exposed or noted here: the "5x5" branch uses a 3x3
conv (pytorch/vision#906; ``branch3_kernel=5`` restores the paper's) and the pool after 4e is
2x2/2 (the paper's 3x3/2 gives the same 7x7 map at 224x224).

Auxiliary heads (section 5) sit after 4a and 4d: a 4x4 average pool (torchvision's adaptive
pool; the paper's 5x5/3 pool also gives 4x4 on the 14x14 map), 1x1 conv 128, FC 1024 + ReLU,
dropout 0.7, linear. A network built with them returns ``AuxOutputs(logits, (aux_4a, aux_4d))``
in train mode and ``AuxOutputs(logits, ())`` in eval; their loss weight (0.3 in the paper)
belongs to the training objective.

``googlenet_cifar`` swaps the ImageNet stem (7x7/2 conv, pool, 1x1, 3x3, pool: 224 -> 28) for a
single 3x3 conv to 192 maps without downsampling, as in the widely used CIFAR port of kuangliu
(https://github.com/kuangliu/pytorch-cifar/blob/master/models/googlenet.py): inception 3a sees
32x32, 4a-4e 16x16 (so the aux heads see 16x16) and 5a-5b 8x8.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from architectures.common import AuxOutputs
from architectures.registry import register_model

PAPER = "https://arxiv.org/abs/1409.4842"


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU, torchvision's building block."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int | tuple[int, int] = 1, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_chs, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Four branches concatenated: 1x1 | 1x1 -> 3x3 | 1x1 -> "5x5" | 3x3 max-pool -> 1x1 (Fig. 2b).

    Args:
        in_chs: Input channels.
        ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj: The columns of the paper's Table 1.
        branch3_kernel: Kernel of the "5x5" branch (torchvision: 3, paper: 5).
    """

    def __init__(
        self,
        in_chs: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        branch3_kernel: int = 3,
    ) -> None:
        super().__init__()
        self.out_chs = ch1x1 + ch3x3 + ch5x5 + pool_proj
        self.branch1 = BasicConv2d(in_chs, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_chs, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_chs, ch5x5red, kernel_size=1),
            BasicConv2d(ch5x5red, ch5x5, kernel_size=branch3_kernel, padding=branch3_kernel // 2),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_chs, pool_proj, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: 4x4 avg pool -> 1x1 conv 128 -> FC 1024 -> ReLU -> dropout -> linear.

    Args:
        in_chs: Channels of the inception output it reads.
        num_classes: Output classes.
        dropout: Dropout before the last layer (the paper's 0.7).
    """

    def __init__(self, in_chs: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_chs, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))
        return self.fc2(self.dropout(F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)))


def imagenet_stem(in_chans: int) -> OrderedDict[str, nn.Module]:
    """Table 1's stem: 7x7/2 conv 64, 3x3/2 pool, 1x1 conv 64, 3x3 conv 192, 3x3/2 pool (224 -> 28)."""
    return OrderedDict(
        conv1=BasicConv2d(in_chans, 64, kernel_size=7, stride=2, padding=3),
        maxpool1=nn.MaxPool2d(3, stride=2, ceil_mode=True),
        conv2=BasicConv2d(64, 64, kernel_size=1),
        conv3=BasicConv2d(64, 192, kernel_size=3, padding=1),
        maxpool2=nn.MaxPool2d(3, stride=2, ceil_mode=True),
    )


def cifar_stem(in_chans: int) -> OrderedDict[str, nn.Module]:
    """One 3x3 conv to the 192 maps inception 3a expects, no downsampling (32 -> 32)."""
    return OrderedDict(conv1=BasicConv2d(in_chans, 192, kernel_size=3, padding=1))


STEMS = {"imagenet": imagenet_stem, "cifar": cifar_stem}

# Table 1 of the paper after the stem: inception rows (#1x1, #3x3 reduce, #3x3, #5x5 reduce,
# #5x5, pool proj) and the pools between them, under torchvision's module names.
TRUNK: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("inception3a", (64, 96, 128, 16, 32, 32)),
    ("inception3b", (128, 128, 192, 32, 96, 64)),
    ("maxpool3", (3, 2)),
    ("inception4a", (192, 96, 208, 16, 48, 64)),
    ("inception4b", (160, 112, 224, 24, 64, 64)),
    ("inception4c", (128, 128, 256, 24, 64, 64)),
    ("inception4d", (112, 144, 288, 32, 64, 64)),
    ("inception4e", (256, 160, 320, 32, 128, 128)),
    ("maxpool4", (2, 2)),
    ("inception5a", (256, 160, 320, 32, 128, 128)),
    ("inception5b", (384, 192, 384, 48, 128, 128)),
)
AUX_AFTER = {"inception4a": "aux1", "inception4d": "aux2"}


class GoogLeNet(nn.Module):
    """GoogLeNet: stem, nine inception modules, global average pooling, dropout, linear.

    Args:
        num_classes: Output classes.
        in_chans: Input channels.
        aux_logits: Build the two auxiliary classifiers (then ``forward`` returns ``AuxOutputs``).
        stem: ``"imagenet"`` (Table 1, 224 -> 28) or ``"cifar"`` (3x3 conv, no downsampling).
        dropout: Dropout before the final linear layer (Table 1: 40%; torchvision uses 20%).
        dropout_aux: Dropout inside the auxiliary classifiers (section 5: 70%).
        branch3_kernel: Kernel of the "5x5" branch: 3 as torchvision (and its weights), 5 as the paper.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        stem: Literal["imagenet", "cifar"] = "imagenet",
        dropout: float = 0.4,
        dropout_aux: float = 0.7,
        branch3_kernel: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.aux_logits = aux_logits
        # Stem and trunk modules are attributes under torchvision's names (conv1, inception3a, ...)
        # so state dicts match; ``self.layer_names`` keeps their order for forward.
        layers = STEMS[stem](in_chans)
        chs = 192
        for name, row in TRUNK:
            if name.startswith("maxpool"):
                layers[name] = nn.MaxPool2d(*row, ceil_mode=True)
            else:
                layers[name] = Inception(chs, *row, branch3_kernel=branch3_kernel)
                chs = layers[name].out_chs
                if aux_logits and name in AUX_AFTER:
                    layers[AUX_AFTER[name]] = InceptionAux(chs, num_classes, dropout_aux)
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.layer_names = tuple(name for name in layers if not name.startswith("aux"))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(chs, num_classes)
        self.init_weights()

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        aux: list[torch.Tensor] = []
        for name in self.layer_names:
            x = getattr(self, name)(x)
            # Aux heads only run in training: in eval they cost time and feed nothing.
            if self.aux_logits and self.training and name in AUX_AFTER:
                aux.append(getattr(self, AUX_AFTER[name])(x))
        return x, tuple(aux)  # (N, 1024, 7, 7) at 224x224

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x)[0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(features), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor | AuxOutputs:
        features, aux = self._trunk(x)
        logits = self.forward_head(features)
        return AuxOutputs(logits, aux) if self.aux_logits else logits

    def init_weights(self) -> None:
        """Truncated N(0, 0.01^2) conv and linear weights, unit BatchNorm, as torchvision does.

        The paper (trained with DistBelief) states no initialisation.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=0.01, a=-2, b=2)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


# Variant table: aux heads on/off (torchvision) and the CIFAR stem.
GOOGLENET_VARIANTS: dict[str, dict] = {
    "googlenet": dict(aux_logits=True, stem="imagenet"),
    "googlenet_noaux": dict(aux_logits=False, stem="imagenet"),
    "googlenet_cifar": dict(aux_logits=True, stem="cifar"),
}


@register_model(family="googlenet", paper=PAPER, params=13_004_888, torchvision="googlenet")
def googlenet(**overrides) -> GoogLeNet:
    return GoogLeNet(**{**GOOGLENET_VARIANTS["googlenet"], **overrides})


@register_model(family="googlenet", paper=PAPER, params=6_624_904, torchvision="googlenet")
def googlenet_noaux(**overrides) -> GoogLeNet:
    return GoogLeNet(**{**GOOGLENET_VARIANTS["googlenet_noaux"], **overrides})


@register_model(
    family="googlenet",
    paper=PAPER,
    params=9_841_470,  # counted from the layers: 5,490,986 trunk and head + 2 x ~2.18M aux heads
    input_size=(3, 32, 32),
    num_classes=10,
)
def googlenet_cifar(**overrides) -> GoogLeNet:
    return GoogLeNet(**{**GOOGLENET_VARIANTS["googlenet_cifar"], **overrides})
