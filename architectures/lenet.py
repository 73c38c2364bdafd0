"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document
recognition", http://yann.lecun.com/exdb/publis/pdf/lecun-01a.pdf), section II.B.

Layer by layer as the paper counts it: C1 6@5x5 (156 params), S2 trainable subsampling (12),
C3 16@5x5 with the partial connection table of Table I (1,516), S4 (32), C5 120@5x5 (48,120),
F6 84 (10,164) and a linear output layer in place of the paper's fixed Euclidean RBF units
(850 at 10 classes): 60,850 trainable parameters. Activations are the paper's scaled tanh,
f(a) = 1.7159 tanh(2a/3) (its Appendix A). The ablation knobs swap C3's table for full
connectivity and the trainable subsampling for plain average or max pooling.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from architectures.registry import register_model

# Table I of the paper: which of S2's 6 maps feed each of C3's 16 maps.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip


class ScaledTanh(nn.Module):
    """f(a) = A tanh(S a) with A = 1.7159, S = 2/3 (LeCun et al. 1998, Appendix A)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class TrainableSubsampling(nn.Module):
    """The paper's S-layers: 2x2 sum times a trainable coefficient plus a trainable bias, per map."""

    def __init__(self, chs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(chs))
        self.bias = nn.Parameter(torch.zeros(chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = F.avg_pool2d(x, 2) * 4
        return summed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class SparseConv(nn.Module):
    """A convolution whose output maps see only the input maps named in a connection table.

    One small convolution per output map, so the parameters are exactly the paper's connections.
    """

    def __init__(self, out_chs: int, kernel_size: int, table: tuple[tuple[int, ...], ...]) -> None:
        super().__init__()
        if len(table) != out_chs:
            raise ValueError(f"connection table has {len(table)} rows for {out_chs} output maps")
        self.table = table
        self.convs = nn.ModuleList(nn.Conv2d(len(in_maps), 1, kernel_size) for in_maps in table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [conv(x[:, list(in_maps)]) for conv, in_maps in zip(self.convs, self.table, strict=True)]
        return torch.cat(maps, dim=1)


POOLS = {
    "trainable": TrainableSubsampling,
    "avg": lambda chs: nn.AvgPool2d(2),
    "max": lambda chs: nn.MaxPool2d(2),
}


class LeNet5(nn.Module):
    """LeNet-5 for 32x32 inputs; 28x28 MNIST digits are padded by 2 pixels, as in the paper.

    Args:
        num_classes: Output classes.
        in_chans: Input channels.
        c3_table: Use Table I's partial C1->C3 connections (False: every map sees every map).
        pooling: ``"trainable"`` (the paper's S-layers), ``"avg"`` or ``"max"``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        c3_table: bool = True,
        pooling: Literal["trainable", "avg", "max"] = "trainable",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        act = ScaledTanh
        c3 = SparseConv(16, 5, C3_TABLE) if c3_table else nn.Conv2d(6, 16, 5)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=2),  # C1; padding 2 turns 28x28 digits into the paper's 32x32
            act(),
            POOLS[pooling](6),  # S2
            act(),
            c3,  # C3
            act(),
            POOLS[pooling](16),  # S4
            act(),
        )
        self.pool = nn.AdaptiveAvgPool2d((5, 5))  # identity at the native size; frees the input size
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.act = act()
        self.fc = nn.Linear(84, num_classes)
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))  # (N, 16, 5, 5)
        return self.act(self.c5(x)).flatten(1)  # (N, 120)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.f6(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def init_weights(self) -> None:
        """Uniform in +-2.4 / fan_in, the paper's Appendix C."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                bound = 2.4 / (module.weight[0].numel())
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)


@register_model(
    family="lenet",
    paper="http://yann.lecun.com/exdb/publis/pdf/lecun-01a.pdf",
    params=60_850,  # section II.B's per-layer counts, with a linear output layer (850) for the RBF
    input_size=(1, 28, 28),
    num_classes=10,
)
def lenet5(**overrides) -> LeNet5:
    return LeNet5(**overrides)
