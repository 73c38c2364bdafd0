"""Xception (Chollet 2017, "Xception: Deep Learning with Depthwise Separable Convolutions",
https://arxiv.org/abs/1610.02357), Fig. 5.

Entry flow: 3x3/2 conv 32 and 3x3 conv 64 (both unpadded: 299 -> 149 -> 147), then three
residual blocks of two separable convs and a 3x3/2 max-pool (128, 256, 728 maps; 1x1/2 conv
shortcuts). Middle flow: eight residual blocks of three ReLU -> separable conv 728 (identity
shortcuts). Exit flow: one block (separable 728, separable 1024, pool; 1x1/2 shortcut), separable
convs 1536 and 2048 with ReLU, global average pooling, dropout 0.5 (section 4.4) and a linear
classifier. Every conv and separable conv is followed by BatchNorm (section 4.3); a separable conv
is a depthwise 3x3 then a pointwise 1x1 with no non-linearity between them (section 4.7).

22,855,952 parameters at 1000 classes, the count of Table 3 of the paper, which timm's legacy
``xception`` (Cadene's port of the Keras model) also has. Module names follow that port (conv1,
bn1, block1 ... block12 with ``rep``/``skip``/``skipbn``, conv3, bn3, conv4, bn4, fc), so its
state dicts load here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from architectures.registry import register_model


class SeparableConv2d(nn.Module):
    """Depthwise kxk conv (one filter per channel) followed by a pointwise 1x1 conv, no bias."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, in_chs, kernel_size, padding=padding, groups=in_chs, bias=False)
        self.pointwise = nn.Conv2d(in_chs, out_chs, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    """Residual block of Fig. 5: ``reps`` x (ReLU -> separable conv -> BN), then 3x3 max-pool when
    ``stride`` > 1; shortcut 1x1 conv + BN when the shape changes, identity otherwise.

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        reps: Separable convolutions in the residual branch.
        stride: Stride of the closing max-pool and of the shortcut conv.
        start_with_relu: Open with ReLU (False for the first block, whose input is already ReLU'd).
        grow_first: Widen at the first separable conv (entry flow) or at the last (exit flow).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        reps: int,
        stride: int = 1,
        start_with_relu: bool = True,
        grow_first: bool = True,
    ) -> None:
        super().__init__()
        if out_chs != in_chs or stride != 1:
            self.skip = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(out_chs)
        else:
            self.skip = None
        widths = [out_chs] * reps if grow_first else [in_chs] * (reps - 1) + [out_chs]
        layers: list[nn.Module] = []
        chs = in_chs
        for index, width in enumerate(widths):
            # The first ReLU is not in place: the block input still feeds the shortcut.
            layers += [nn.ReLU(inplace=index > 0), SeparableConv2d(chs, width), nn.BatchNorm2d(width)]
            chs = width
        if not start_with_relu:
            layers = layers[1:]
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, padding=1))
        self.rep = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + shortcut


class Xception(nn.Module):
    """Xception: entry flow, ``middle_blocks`` middle-flow blocks, exit flow, pooling, linear.

    Args:
        num_classes: Output classes.
        in_chans: Input channels.
        entry_widths: Output channels of the entry-flow blocks (Fig. 5: 128, 256, 728).
        middle_blocks: Number of middle-flow blocks (Fig. 5: 8).
        exit_widths: Widths of the exit-flow block's two separable convs (728, 1024).
        head_widths: Widths of the two final separable convs (1536, 2048).
        dropout: Dropout before the classifier (section 4.4: 0.5 on ImageNet).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        entry_widths: tuple[int, ...] = (128, 256, 728),
        middle_blocks: int = 8,
        exit_widths: tuple[int, int] = (728, 1024),
        head_widths: tuple[int, int] = (1536, 2048),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, 32, 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        blocks: list[Block] = []
        chs = 64
        for index, width in enumerate(entry_widths):
            blocks.append(Block(chs, width, reps=2, stride=2, start_with_relu=index > 0))
            chs = width
        blocks += [Block(chs, chs, reps=3) for _ in range(middle_blocks)]
        if exit_widths[0] != chs:
            raise ValueError(f"the exit block keeps its input width first: {exit_widths[0]} != {chs}")
        blocks.append(Block(chs, exit_widths[1], reps=2, stride=2, grow_first=False))
        # Named block1 ... blockN as in the Keras-derived port, so its weights load.
        self.block_names = tuple(f"block{index}" for index in range(1, len(blocks) + 1))
        for name, block in zip(self.block_names, blocks, strict=True):
            self.add_module(name, block)
        self.conv3 = SeparableConv2d(exit_widths[1], head_widths[0])
        self.bn3 = nn.BatchNorm2d(head_widths[0])
        self.conv4 = SeparableConv2d(head_widths[0], head_widths[1])
        self.bn4 = nn.BatchNorm2d(head_widths[1])
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(head_widths[1], num_classes)
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)  # (N, 64, 147, 147) at 299x299
        for name in self.block_names:
            x = getattr(self, name)(x)  # (N, 1024, 10, 10) after the exit block
        x = F.relu(self.bn3(self.conv3(x)), inplace=True)
        return F.relu(self.bn4(self.conv4(x)), inplace=True)  # (N, 2048, 10, 10)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.global_pool(features), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def init_weights(self) -> None:
        """He et al. (2015, https://arxiv.org/abs/1502.01852) fan-out normal convs, unit BatchNorm.

        The paper states no initialisation; this is the scheme of timm's port of the same model.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


# Variant table: Fig. 5 of the paper.
XCEPTION_VARIANTS: dict[str, dict] = {
    "xception": dict(
        entry_widths=(128, 256, 728),
        middle_blocks=8,
        exit_widths=(728, 1024),
        head_widths=(1536, 2048),
    ),
}


@register_model(
    family="xception",
    paper="https://arxiv.org/abs/1610.02357",
    params=22_855_952,  # Table 3 of the paper; timm's legacy xception has the same count
    input_size=(3, 299, 299),
)
def xception(**overrides) -> Xception:
    return Xception(**{**XCEPTION_VARIANTS["xception"], **overrides})
