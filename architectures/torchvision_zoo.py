"""torchvision's small ImageNet nets, reached through our registry by wrapping its builders.

SqueezeNet 1.0/1.1 (Iandola et al. 2016, https://arxiv.org/abs/1602.07360), ShuffleNet v2
(Ma et al. 2018, https://arxiv.org/abs/1807.11164), MobileNet v2 (Sandler et al. 2018,
https://arxiv.org/abs/1801.04381) and MNASNet (Tan et al. 2019, https://arxiv.org/abs/1807.11626)
are built by ``torchvision.models.get_model`` itself, not rewritten. Each instance is then given
our surface by switching its class to a subclass that only adds methods
(``forward_features``/``forward_head``), so its state-dict keys, and hence torchvision's weights,
stay exactly torchvision's. Parameter counts are from torchvision's documentation.
"""

from __future__ import annotations

import torch
import torchvision.models as tvm
from torch import nn

from architectures.pretrained import pretrainable
from architectures.registry import register_model

# ---------------------------------------------------------------------------------------------
# Subclasses adding the zoo's surface; torchvision's own forward is kept as the reference.
# ---------------------------------------------------------------------------------------------


class SqueezeNet(tvm.SqueezeNet):
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        # The classifier is a 1x1 conv followed by global pooling (dropout, conv, ReLU, avg-pool).
        return torch.flatten(self.classifier(features), 1)


class ShuffleNetV2(tvm.ShuffleNetV2):
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
        return self.conv5(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features.mean([2, 3]))


class MobileNetV2(tvm.MobileNetV2):
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))


class MNASNet(tvm.MNASNet):
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features.mean([2, 3]))


ZOO_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    tvm.SqueezeNet: SqueezeNet,
    tvm.ShuffleNetV2: ShuffleNetV2,
    tvm.MobileNetV2: MobileNetV2,
    tvm.MNASNet: MNASNet,
}


def _replace_first_conv(net: nn.Module, in_chans: int) -> None:
    """Swap the stem conv for one reading ``in_chans`` channels (same kernel, stride, padding)."""
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    if conv.groups != 1:
        raise ValueError(f"cannot adapt the grouped first conv {name!r} of {type(net).__name__} to {in_chans} inputs")
    parent_name, _, child = name.rpartition(".")
    replacement = nn.Conv2d(
        in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        dilation=conv.dilation, bias=conv.bias is not None,
    )  # fmt: skip
    net.get_submodule(parent_name).register_module(child, replacement)


def from_torchvision(name: str, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> nn.Module:
    """``torchvision.models.get_model(name)`` with random weights and the zoo's surface.

    Args:
        name: torchvision builder name, e.g. ``"mobilenet_v2"``.
        num_classes: Output classes.
        in_chans: Input channels; other than 3 replaces the stem conv (random init).
        kwargs: Further arguments of torchvision's builder (e.g. ``dropout``).
    """
    net = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    net.__class__ = ZOO_CLASSES[type(net)]  # adds methods only: same attributes, same state dict
    if in_chans != 3:
        _replace_first_conv(net, in_chans)
    net.num_classes = num_classes
    net.in_chans = in_chans
    return net


# ---------------------------------------------------------------------------------------------
# Registered builders (torchvision's names; counts from its documentation, 1000 classes)
# ---------------------------------------------------------------------------------------------


@register_model(
    family="squeezenet",
    paper="https://arxiv.org/abs/1602.07360",
    params=1_248_424,
    torchvision="squeezenet1_0",
)
@pretrainable
def squeezenet1_0(**overrides) -> nn.Module:
    return from_torchvision("squeezenet1_0", **overrides)


@register_model(
    family="squeezenet",
    paper="https://arxiv.org/abs/1602.07360",
    params=1_235_496,
    torchvision="squeezenet1_1",
)
@pretrainable
def squeezenet1_1(**overrides) -> nn.Module:
    return from_torchvision("squeezenet1_1", **overrides)


@register_model(
    family="shufflenet",
    paper="https://arxiv.org/abs/1807.11164",
    params=2_278_604,
    torchvision="shufflenet_v2_x1_0",
)
@pretrainable
def shufflenet_v2_x1_0(**overrides) -> nn.Module:
    return from_torchvision("shufflenet_v2_x1_0", **overrides)


@register_model(
    family="mobilenet", paper="https://arxiv.org/abs/1801.04381", params=3_504_872, torchvision="mobilenet_v2"
)
@pretrainable
def mobilenet_v2(**overrides) -> nn.Module:
    return from_torchvision("mobilenet_v2", **overrides)


@register_model(family="mnasnet", paper="https://arxiv.org/abs/1807.11626", params=4_383_312, torchvision="mnasnet1_0")
@pretrainable
def mnasnet1_0(**overrides) -> nn.Module:
    return from_torchvision("mnasnet1_0", **overrides)
