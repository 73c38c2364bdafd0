"""The Inception network of Sung Kim's "Advanced CNN" lecture (PyTorch Zero to All, lecture 11).

A GoogLeNet-style ``InceptionA`` block (Szegedy et al. 2014, https://arxiv.org/abs/1409.4842)
shrunk for MNIST: two 5x5 convolutions, each followed by max-pooling and an InceptionA block of
88 channels, then one fully connected layer 1408 -> 10. 97,298 parameters, as the lecture
writes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from architectures.registry import register_model


class InceptionA(nn.Module):
    """Four parallel branches concatenated: 1x1 (16), 1x1->5x5 (24), 1x1->3x3->3x3 (24), pool->1x1 (24).

    Args:
        in_chs: Input channels.
    """

    out_chs = 16 + 24 + 24 + 24

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.branch1x1 = nn.Conv2d(in_chs, 16, kernel_size=1)
        self.branch5x5_1 = nn.Conv2d(in_chs, 16, kernel_size=1)
        self.branch5x5_2 = nn.Conv2d(16, 24, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = nn.Conv2d(in_chs, 16, kernel_size=1)
        self.branch3x3dbl_2 = nn.Conv2d(16, 24, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = nn.Conv2d(24, 24, kernel_size=3, padding=1)
        self.branch_pool = nn.Conv2d(in_chs, 24, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        # The lecture's block has no non-linearity inside the branches; kept as written.
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], dim=1)


class InceptionMNIST(nn.Module):
    """conv5x5(10) -> maxpool -> ReLU -> InceptionA -> conv5x5(20) -> maxpool -> ReLU -> InceptionA -> fc.

    Args:
        num_classes: Output classes.
        in_chans: Input channels (1 for MNIST).
        width: Output channels of the first convolution (the lecture's 10).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=5)
        self.incept1 = InceptionA(width)
        self.conv2 = nn.Conv2d(InceptionA.out_chs, 20, kernel_size=5)
        self.incept2 = InceptionA(20)
        # 28x28 input -> 4x4 maps here, so this pool is the identity at the lecture's size and
        # only frees the input size; the head stays the lecture's 88*4*4 = 1408 -> 10.
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.fc = nn.Linear(InceptionA.out_chs * 4 * 4, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = self.incept1(x)
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.incept2(x)  # (N, 88, 4, 4) at 28x28

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def init_weights(self) -> None:
        """PyTorch's default (Kaiming-uniform) initialisation, which the lecture relies on."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.reset_parameters()


@register_model(
    family="inception_mnist",
    paper="https://github.com/hunkim/PyTorchZeroToAll/blob/master/11_1_toy_inception_mnist.py",
    params=97_298,
    input_size=(1, 28, 28),
    num_classes=10,
)
def inception_mnist(**overrides) -> InceptionMNIST:
    return InceptionMNIST(**overrides)
