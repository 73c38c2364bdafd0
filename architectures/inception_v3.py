"""Inception v3 (Szegedy et al. 2015, "Rethinking the Inception Architecture for Computer Vision",
https://arxiv.org/abs/1512.00567) with its auxiliary classifier.

Module names and structure are torchvision's ``inception_v3`` (with ``transform_input=False``), so
state dicts load both ways: 27,161,264 parameters with the auxiliary head, 23,834,568 without, at
1000 classes. The stem and the three grid sizes follow Table 1 of the paper (299 -> 35 -> 17 -> 8):
three Fig. 5 modules (``InceptionA``) at 35x35, a grid reduction (``InceptionB``, Fig. 10), four
factorised 7x7 modules (``InceptionC``, Fig. 6) at 17x17, a second reduction (``InceptionD``) and
two expanded-filter-bank modules (``InceptionE``, Fig. 7) at 8x8.

The auxiliary classifier (section 4, with BatchNorm as in the paper's "BN-auxiliary") reads the
last 17x17 map. A network built with it returns ``AuxOutputs(logits, (aux,))`` in train mode and
``AuxOutputs(logits, ())`` in eval; its loss weight belongs to the training objective.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from architectures.common import AuxOutputs
from architectures.googlenet import BasicConv2d
from architectures.registry import register_model

PAPER = "https://arxiv.org/abs/1512.00567"


class InceptionA(nn.Module):
    """Fig. 5 at 35x35: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1 (``pool_features``)."""

    def __init__(self, in_chs: int, pool_features: int) -> None:
        super().__init__()
        self.out_chs = 64 + 64 + 96 + pool_features
        self.branch1x1 = BasicConv2d(in_chs, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_chs, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_chs, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_chs, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Fig. 10): 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | 3x3/2 max pool."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.out_chs = 384 + 96 + in_chs
        self.branch3x3 = BasicConv2d(in_chs, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_chs, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """Fig. 6 at 17x17, 7x7 factorised into 1x7 and 7x1 convs of ``channels_7x7`` maps."""

    def __init__(self, in_chs: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.out_chs = 4 * 192
        self.branch1x1 = BasicConv2d(in_chs, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_chs, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_chs, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_chs, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | 3x3/2 max pool."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.out_chs = 320 + 192 + in_chs
        self.branch3x3_1 = BasicConv2d(in_chs, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_chs, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = conv(branch7x7x3)
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Fig. 7 at 8x8: 3x3 convs split into parallel 1x3 and 3x1 outputs (expanded filter bank)."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.out_chs = 320 + 2 * 384 + 2 * 384 + 192
        self.branch1x1 = BasicConv2d(in_chs, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_chs, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_chs, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_chs, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 map: 5x5/3 avg pool -> 1x1 conv 128 -> 5x5 conv 768 -> linear."""

    def __init__(self, in_chs: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_chs, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))  # (N, 768, 1, 1) at 17x17
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


def stem(in_chans: int) -> OrderedDict[str, nn.Module]:
    """Table 1's stem, 299 -> 35: three 3x3 convs (the first /2), pool, 1x1 80, 3x3 192, pool."""
    return OrderedDict(
        Conv2d_1a_3x3=BasicConv2d(in_chans, 32, kernel_size=3, stride=2),
        Conv2d_2a_3x3=BasicConv2d(32, 32, kernel_size=3),
        Conv2d_2b_3x3=BasicConv2d(32, 64, kernel_size=3, padding=1),
        maxpool1=nn.MaxPool2d(kernel_size=3, stride=2),
        Conv2d_3b_1x1=BasicConv2d(64, 80, kernel_size=1),
        Conv2d_4a_3x3=BasicConv2d(80, 192, kernel_size=3),
        maxpool2=nn.MaxPool2d(kernel_size=3, stride=2),
    )


# The mixed modules after the stem under torchvision's names: (name, block, its extra argument).
MIXED: tuple[tuple[str, type[nn.Module], dict], ...] = (
    ("Mixed_5b", InceptionA, dict(pool_features=32)),
    ("Mixed_5c", InceptionA, dict(pool_features=64)),
    ("Mixed_5d", InceptionA, dict(pool_features=64)),
    ("Mixed_6a", InceptionB, dict()),
    ("Mixed_6b", InceptionC, dict(channels_7x7=128)),
    ("Mixed_6c", InceptionC, dict(channels_7x7=160)),
    ("Mixed_6d", InceptionC, dict(channels_7x7=160)),
    ("Mixed_6e", InceptionC, dict(channels_7x7=192)),
    ("Mixed_7a", InceptionD, dict()),
    ("Mixed_7b", InceptionE, dict()),
    ("Mixed_7c", InceptionE, dict()),
)
AUX_AFTER = "Mixed_6e"


class Inception3(nn.Module):
    """Inception v3: stem, eleven mixed modules, global average pooling, dropout, linear.

    Args:
        num_classes: Output classes.
        in_chans: Input channels.
        aux_logits: Build the auxiliary classifier (then ``forward`` returns ``AuxOutputs``).
        dropout: Dropout before the final linear layer (torchvision's 0.5).
    """

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = True, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.aux_logits = aux_logits
        # Attributes under torchvision's names so state dicts match; layer_names orders forward.
        layers = stem(in_chans)
        chs = 192
        for name, block, kwargs in MIXED:
            layers[name] = block(chs, **kwargs)
            chs = layers[name].out_chs
            if aux_logits and name == AUX_AFTER:
                layers["AuxLogits"] = InceptionAux(chs, num_classes)
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.layer_names = tuple(name for name in layers if name != "AuxLogits")
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(chs, num_classes)
        self.init_weights()

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        aux: tuple[torch.Tensor, ...] = ()
        for name in self.layer_names:
            x = getattr(self, name)(x)
            # The aux head only runs in training: in eval it costs time and feeds nothing.
            if self.aux_logits and self.training and name == AUX_AFTER:
                aux = (self.AuxLogits(x),)
        return x, aux  # (N, 2048, 8, 8) at 299x299

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x)[0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(features), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor | AuxOutputs:
        features, aux = self._trunk(x)
        logits = self.forward_head(features)
        return AuxOutputs(logits, aux) if self.aux_logits else logits

    def init_weights(self) -> None:
        """Truncated normal weights, std 0.1 (0.01 for the aux 5x5 conv, 0.001 for the aux linear),
        unit BatchNorm: torchvision's scheme, taken from TF-slim's Inception v3; the paper gives none.
        """
        small_std = {"AuxLogits.conv1.conv": 0.01, "AuxLogits.fc": 0.001}
        for name, module in self.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=small_std.get(name, 0.1), a=-2, b=2)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


@register_model(
    family="inception_v3",
    paper=PAPER,
    params=27_161_264,  # torchvision.models.inception_v3(aux_logits=True)
    input_size=(3, 299, 299),
    torchvision="inception_v3",
)
def inception_v3(**overrides) -> Inception3:
    return Inception3(**{**dict(aux_logits=True), **overrides})


@register_model(
    family="inception_v3",
    paper=PAPER,
    params=23_834_568,  # torchvision.models.inception_v3(aux_logits=False)
    input_size=(3, 299, 299),
    torchvision="inception_v3",
)
def inception_v3_noaux(**overrides) -> Inception3:
    return Inception3(**{**dict(aux_logits=False), **overrides})
