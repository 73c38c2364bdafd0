"""The twelve CIFAR-10 networks of "Striving for Simplicity: The All Convolutional Net"
(Springenberg, Dosovitskiy, Brox & Riedmiller 2014, https://arxiv.org/abs/1412.6806), Table 3.

Table 1 defines base models A, B, C; Table 2 derives three more from each by what replaces the
two 3x3/2 max-pooling layers: Strided-CNN removes each pool and gives the layer before it
stride 2; ConvPool-CNN keeps each pool and puts a dense 3x3 conv (same width) before it, the
control for the extra parameters; All-CNN replaces each pool by a 3x3/2 conv of the same width.
The twelve are twelve rows of ``ALL_CNN_MODELS`` consumed by the one ``AllCNN`` class.

Section 3.2: dropout of 20% on the input image and 50% after each pooling layer (or the layer
that replaces it). Every convolution, the 1x1 class layer included, is followed by a ReLU
(Table 1), and global average pooling over the final 6x6 maps gives the logits.

Paddings, which the paper leaves implicit, are chosen so that the maps are 32 -> 16 -> 8 and the
first conv after the second downsampling is unpadded, giving the 6x6 maps Table 1 states.

Parameter counts are computed from the layer tables (Tables 1 and 2, with biases, 10 classes).
Table 3's rounded counts disagree with them for some rows: it gives Model C "~1.3M" where its
layers hold 954,730 (only ConvPool-/All-CNN-C reach ~1.4M: 1,369,738), and B "~1M" for 885,610.
We register the layer tables' exact numbers; the builders' comments show Table 3's.
"""

from __future__ import annotations

import torch
from torch import nn

from architectures.registry import register_model

PAPER = "https://arxiv.org/abs/1412.6806"


def make_layer(token: str, in_chs: int, num_classes: int, batch_norm: bool) -> tuple[list[nn.Module], int, bool]:
    """Modules for one table entry, the channels they output and whether they downsample.

    Tokens: ``"conv5-96"`` (5x5 conv, 96 maps, padded to keep the size), ``"conv3-96-s2"``
    (stride 2), ``"conv3-192-valid"`` (unpadded), ``"conv1-classes"`` (one map per class) and
    ``"maxpool3-s2"`` (3x3/2 max-pooling, padded so 32 -> 16 -> 8). A conv is followed by
    BatchNorm (only when asked; not in the paper) and ReLU.
    """
    kind, *options = token.split("-")
    if kind == "maxpool3":
        return [nn.MaxPool2d(kernel_size=3, stride=2, padding=1)], in_chs, True
    kernel = int(kind.removeprefix("conv"))
    width, *flags = options
    out_chs = num_classes if width == "classes" else int(width)
    stride = 2 if "s2" in flags else 1
    padding = 0 if "valid" in flags else kernel // 2
    conv = nn.Conv2d(in_chs, out_chs, kernel, stride=stride, padding=padding, bias=not batch_norm)
    norm = [nn.BatchNorm2d(out_chs)] if batch_norm else []
    return [conv, *norm, nn.ReLU(inplace=True)], out_chs, stride == 2


class AllCNN(nn.Module):
    """One of Table 3's twelve networks, chosen by name, with the paper's dropout placement.

    Args:
        num_classes: Output classes (width of the final 1x1 conv; 10 or 100 in the paper).
        in_chans: Input channels.
        model: Row of ``ALL_CNN_MODELS``: ``model_a``/``b``/``c`` (Table 1),
            ``strided_cnn_*``, ``convpool_cnn_*`` or ``all_cnn_*`` (Table 2), ``*`` in a, b, c.
        input_dropout: Dropout on the input image (section 3.2: 0.2).
        pool_dropout: Dropout after each pooling layer or the layer replacing it (0.5).
        batch_norm: BatchNorm after every conv (not in the paper; a common reproduction aid).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        model: str = "all_cnn_c",
        input_dropout: float = 0.2,
        pool_dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if model not in ALL_CNN_MODELS:
            raise ValueError(f"unknown All-CNN model {model!r}; Table 3 has {', '.join(ALL_CNN_MODELS)}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.model = model
        # nn.Dropout modules, not F.dropout calls: they switch off in eval mode by themselves
        # (a known reproduction called F.dropout without training=self.training).
        layers: list[nn.Module] = [nn.Dropout(input_dropout)]
        chs = in_chans
        for token in ALL_CNN_MODELS[model]:
            modules, chs, downsamples = make_layer(token, chs, num_classes, batch_norm)
            layers += modules
            if downsamples:
                layers.append(nn.Dropout(pool_dropout))
        self.features = nn.Sequential(*layers)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, num_classes, 6, 6) at 32x32

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.global_pool(features), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def init_weights(self) -> None:
        """He et al. (2015, https://arxiv.org/abs/1502.01852) normal weights, zero biases.

        The All-CNN paper states no initialisation; He init suits its plain ReLU stacks.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


# Table 3's twelve models from the layer lists of Tables 1 and 2, one row each, in full.
ALL_CNN_MODELS: dict[str, tuple[str, ...]] = {
    "model_a": (
        "conv5-96", "maxpool3-s2",
        "conv5-192", "maxpool3-s2",
        "conv3-192-valid", "conv1-192", "conv1-classes",
    ),
    "strided_cnn_a": (
        "conv5-96-s2",
        "conv5-192-s2",
        "conv3-192-valid", "conv1-192", "conv1-classes",
    ),
    "convpool_cnn_a": (
        "conv5-96", "conv3-96", "maxpool3-s2",
        "conv5-192", "conv3-192", "maxpool3-s2",
        "conv3-192-valid", "conv1-192", "conv1-classes",
    ),
    "all_cnn_a": (
        "conv5-96", "conv3-96-s2",
        "conv5-192", "conv3-192-s2",
        "conv3-192-valid", "conv1-192", "conv1-classes",
    ),
    "model_b": (
        "conv5-96", "conv1-96", "maxpool3-s2",
        "conv5-192", "conv1-192", "maxpool3-s2",
        "conv3-192-valid", "conv1-192", "conv1-classes",
    ),
    "strided_cnn_b": (
        "conv5-96", "conv1-96-s2",
        "conv5-192", "conv1-192-s2",
        "conv3-192-valid", "conv1-192", "conv1-classes",
    ),
    "convpool_cnn_b": (
        "conv5-96", "conv1-96", "conv3-96", "maxpool3-s2",
        "conv5-192", "conv1-192", "conv3-192", "maxpool3-s2",
        "conv3-192-valid", "conv1-192", "conv1-classes",
    ),
    "all_cnn_b": (
        "conv5-96", "conv1-96", "conv3-96-s2",
        "conv5-192", "conv1-192", "conv3-192-s2",
        "conv3-192-valid", "conv1-192", "conv1-classes",
    ),
    "model_c": (
        "conv3-96", "conv3-96", "maxpool3-s2",
        "conv3-192", "conv3-192", "maxpool3-s2",
        "conv3-192-valid", "conv1-192", "conv1-classes",
    ),
    "strided_cnn_c": (
        "conv3-96", "conv3-96-s2",
        "conv3-192", "conv3-192-s2",
        "conv3-192-valid", "conv1-192", "conv1-classes",
    ),
    "convpool_cnn_c": (
        "conv3-96", "conv3-96", "conv3-96", "maxpool3-s2",
        "conv3-192", "conv3-192", "conv3-192", "maxpool3-s2",
        "conv3-192-valid", "conv1-192", "conv1-classes",
    ),
    "all_cnn_c": (
        "conv3-96", "conv3-96", "conv3-96-s2",
        "conv3-192", "conv3-192", "conv3-192-s2",
        "conv3-192-valid", "conv1-192", "conv1-classes",
    ),
}  # fmt: skip


def _register(params: int):
    """All twelve share the family, paper, input size and the CIFAR-10 class count of their counts."""
    return register_model(family="all_cnn", paper=PAPER, params=params, input_size=(3, 32, 32), num_classes=10)


@_register(839_242)  # Table 3: ~0.9M
def model_a(**overrides) -> AllCNN:
    return AllCNN(**{**dict(model="model_a"), **overrides})


@_register(839_242)  # Table 3: ~0.9M
def strided_cnn_a(**overrides) -> AllCNN:
    return AllCNN(**{**dict(model="strided_cnn_a"), **overrides})


@_register(1_254_250)  # Table 3: ~1.28M
def convpool_cnn_a(**overrides) -> AllCNN:
    return AllCNN(**{**dict(model="convpool_cnn_a"), **overrides})


@_register(1_254_250)  # Table 3: ~1.28M
def all_cnn_a(**overrides) -> AllCNN:
    return AllCNN(**{**dict(model="all_cnn_a"), **overrides})


@_register(885_610)  # Table 3: ~1M
def model_b(**overrides) -> AllCNN:
    return AllCNN(**{**dict(model="model_b"), **overrides})


@_register(885_610)  # Table 3: ~1M
def strided_cnn_b(**overrides) -> AllCNN:
    return AllCNN(**{**dict(model="strided_cnn_b"), **overrides})


@_register(1_300_618)  # Table 3: ~1.35M
def convpool_cnn_b(**overrides) -> AllCNN:
    return AllCNN(**{**dict(model="convpool_cnn_b"), **overrides})


@_register(1_300_618)  # Table 3: ~1.35M
def all_cnn_b(**overrides) -> AllCNN:
    return AllCNN(**{**dict(model="all_cnn_b"), **overrides})


@_register(954_730)  # Table 3: ~1.3M, which its layer table does not support
def model_c(**overrides) -> AllCNN:
    return AllCNN(**{**dict(model="model_c"), **overrides})


@_register(954_730)  # Table 3: ~1.3M, which its layer table does not support
def strided_cnn_c(**overrides) -> AllCNN:
    return AllCNN(**{**dict(model="strided_cnn_c"), **overrides})


@_register(1_369_738)  # Table 3: ~1.4M
def convpool_cnn_c(**overrides) -> AllCNN:
    return AllCNN(**{**dict(model="convpool_cnn_c"), **overrides})


@_register(1_369_738)  # Table 3: ~1.4M
def all_cnn_c(**overrides) -> AllCNN:
    return AllCNN(**{**dict(model="all_cnn_c"), **overrides})
