"""Shortcuts and residual units of the ResNet family, each chosen by name.

A residual unit computes ``y = f(h(x) ⊕ F(x))``. Two independent choices, as in He et al. 2016b
("Identity Mappings in Deep Residual Networks", https://arxiv.org/abs/1603.05027):

- the *shortcut* ``h`` and how it meets ``F`` (its Table 1 / Fig. 2: identity, constant scaling,
  exclusive and shortcut-only gating, 1x1 conv, dropout; plus "none" for the plain nets of
  He et al. 2015, https://arxiv.org/abs/1512.03385). Every shortcut is a module with the signature
  ``shortcut(x, residual) -> merged``, so the unit never knows which one it holds;
- the *unit*, i.e. where BN and ReLU sit around the convolutions and the addition (Fig. 4 /
  Table 2: original, BN after addition, ReLU before addition, ReLU-only pre-activation, full
  pre-activation). Each is a class with the same constructor.

Where a unit changes the shape (stride 2 or more channels) the identity cannot be added as is;
``downsample`` picks the path that reshapes it: He et al. 2015's option A (zero-padded strided
identity) or B (1x1 projection + BN), or a bare 1x1 conv (pre-activation nets, whose next unit
normalises anyway). Module names follow torchvision (``conv1``, ``bn1``, ``downsample.0``/``.1``)
so the ImageNet nets load its state dicts unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------------------------


class ConvSpec(NamedTuple):
    """One convolution of a residual branch; BN and ReLU placement is the unit's business."""

    in_chs: int
    out_chs: int
    kernel_size: int
    stride: int = 1
    groups: int = 1


def conv_from_spec(spec: ConvSpec) -> nn.Conv2d:
    # No bias: every convolution is followed (or preceded, in pre-activation units) by BN.
    return nn.Conv2d(
        spec.in_chs, spec.out_chs, spec.kernel_size, spec.stride, spec.kernel_size // 2,
        groups=spec.groups, bias=False,
    )  # fmt: skip


def basic_layout(in_chs: int, planes: int, stride: int, groups: int = 1, base_width: int = 64) -> list[ConvSpec]:
    """Two 3x3 convolutions (He et al. 2015, Fig. 5 left); the stride sits on the first."""
    if groups != 1 or base_width != 64:
        raise ValueError("the basic block has no grouped or widened bottleneck; use block='bottleneck'")
    return [ConvSpec(in_chs, planes, 3, stride), ConvSpec(planes, planes, 3)]


def bottleneck_layout(in_chs: int, planes: int, stride: int, groups: int = 1, base_width: int = 64) -> list[ConvSpec]:
    """1x1 reduce, 3x3, 1x1 expand to ``4 * planes`` (He et al. 2015, Fig. 5 right).

    The stride sits on the 3x3 ("ResNet v1.5", as torchvision); ``groups`` and ``base_width``
    give ResNeXt's grouped 3x3 (Xie et al. 2017) and Wide ResNet-50-2's doubled bottleneck.
    """
    width = int(planes * (base_width / 64.0)) * groups
    return [
        ConvSpec(in_chs, width, 1),
        ConvSpec(width, width, 3, stride, groups),
        ConvSpec(width, planes * 4, 1),
    ]


BLOCKS: dict[str, Callable[..., list[ConvSpec]]] = {"basic": basic_layout, "bottleneck": bottleneck_layout}


class ZeroPadIdentity(nn.Module):
    """Option A of He et al. 2015: strided identity, new channels filled with zeros (no parameters)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_chs = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_chs))


def projection(in_chs: int, out_chs: int, stride: int) -> list[nn.Module]:
    """Option B/C of He et al. 2015: strided 1x1 conv + BN."""
    return [nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs)]


def conv_projection(in_chs: int, out_chs: int, stride: int) -> list[nn.Module]:
    """Strided 1x1 conv alone: pre-activation nets (He et al. 2016b's code, Wide ResNets) leave
    normalisation to the next unit's pre-activation."""
    return [nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)]


# Reshaping paths for units that change the shape; layers of an ``nn.Sequential`` so that option B
# keeps torchvision's ``downsample.0`` / ``downsample.1`` names.
DOWNSAMPLES: dict[str, Callable[[int, int, int], list[nn.Module]]] = {
    "A": lambda in_chs, out_chs, stride: [ZeroPadIdentity(in_chs, out_chs, stride)],
    "B": projection,
    "conv": conv_projection,
}

# ---------------------------------------------------------------------------------------------
# Shortcuts: shortcut(x, residual) -> merged. ``skip`` is the (possibly reshaping) identity path.
# ---------------------------------------------------------------------------------------------


class AddShortcut(nn.Sequential):
    """``skip(x) + F(x)``: the identity shortcut (an empty ``skip``) or its reshaping version.

    A ``Sequential`` of the skip path's layers rather than a wrapper around it, so that option B
    is stored exactly as torchvision's ``downsample`` (``downsample.0`` conv, ``downsample.1`` BN).
    """

    def __init__(self, skip: nn.Sequential, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__(*skip)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + residual


class ConvShortcut(AddShortcut):
    """1x1 conv + BN on every shortcut: He et al. 2016b Fig. 2(e), i.e. option C of He et al. 2015.

    The paper adopts BN right after every weight layer (Fig. 2's caption), hence BN here too.
    """

    def __init__(self, skip: nn.Sequential, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__(nn.Sequential(*projection(in_chs, out_chs, stride)), in_chs, out_chs, stride)


class NoShortcut(nn.Module):
    """No shortcut at all: the plain nets of He et al. 2015's degradation experiment (Fig. 6)."""

    def __init__(self, skip: nn.Sequential, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return residual


class ScaledShortcut(nn.Module):
    """``λ_s skip(x) + λ_r F(x)``, He et al. 2016b Fig. 2(b).

    Table 1 tries λ_s = 0.5 with λ_r = 1 (fails to converge well) and λ_s = λ_r = 0.5.

    Args:
        shortcut_scale: Constant on the shortcut path (λ_s).
        residual_scale: Constant on the residual path (λ_r).
    """

    def __init__(
        self,
        skip: nn.Sequential,
        in_chs: int,
        out_chs: int,
        stride: int,
        shortcut_scale: float = 0.5,
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.skip = skip
        self.shortcut_scale = shortcut_scale
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.shortcut_scale * self.skip(x) + self.residual_scale * residual


class Gate(nn.Module):
    """``g(x) = sigmoid(W_g x + b_g)`` with a 1x1 conv, He et al. 2016b Sec. 3.1 (Highway-style).

    Its bias keeps its own initial value ``b_g``: the network's ``init_weights`` leaves conv biases
    alone, since Table 1 shows the result hinges on it (b_g = -6 biases the gate towards the
    shortcut, (1 - g) ≈ 1).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, gate_bias: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, stride, bias=True)
        self.gate_bias = gate_bias
        nn.init.constant_(self.conv.bias, gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


class ExclusiveGateShortcut(nn.Module):
    """``(1 - g(x)) skip(x) + g(x) F(x)``, He et al. 2016b Fig. 2(c).

    Args:
        gate_bias: Initial bias b_g of the gate's 1x1 conv (Table 1: 0, -6 and -7 in the paper).
    """

    def __init__(self, skip: nn.Sequential, in_chs: int, out_chs: int, stride: int, gate_bias: float = -6.0) -> None:
        super().__init__()
        self.skip = skip
        self.gate = Gate(in_chs, out_chs, stride, gate_bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        g = self.gate(x)
        return (1 - g) * self.skip(x) + g * residual


class ShortcutGateShortcut(ExclusiveGateShortcut):
    """``(1 - g(x)) skip(x) + F(x)``: gating on the shortcut only, He et al. 2016b Fig. 2(d).

    Args:
        gate_bias: Initial bias b_g of the gate's 1x1 conv (Table 1: 0 and -6 in the paper).
    """

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return (1 - self.gate(x)) * self.skip(x) + residual


class DropoutShortcut(nn.Module):
    """``m * skip(x) + F(x)`` with ``m ~ Bernoulli(1 - p)``, unscaled: He et al. 2016b Fig. 2(f).

    As the paper defines it: dropout "statistically imposes a scale of λ with an expectation of 0.5
    on the shortcut" (Sec. 3.1), so kept values are not rescaled in training, and evaluation uses the
    expectation, ``(1 - p) skip(x) + F(x)`` (the classic dropout of Srivastava et al. 2014). The
    inverted form (``nn.Dropout``: kept values x 1/(1-p), identity in eval) is ``dropout_inverted``.

    Args:
        p: Drop probability on the shortcut (0.5 in Table 1).
    """

    def __init__(self, skip: nn.Sequential, in_chs: int, out_chs: int, stride: int, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout shortcut: p is a drop probability in [0, 1), got {p}")
        self.skip = skip
        self.p = p

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        shortcut = self.skip(x)
        keep = 1.0 - self.p
        if self.training:
            shortcut = shortcut * torch.empty_like(shortcut).bernoulli_(keep)
        else:
            shortcut = shortcut * keep
        return shortcut + residual


class InvertedDropoutShortcut(nn.Module):
    """``dropout(skip(x)) + F(x)`` with ``nn.Dropout``: kept values x 1/(1-p) in training (expectation
    ``skip(x)``), the identity in eval. Not the paper's ablation (see ``DropoutShortcut``).

    Args:
        p: Drop probability on the shortcut.
    """

    def __init__(self, skip: nn.Sequential, in_chs: int, out_chs: int, stride: int, p: float = 0.5) -> None:
        super().__init__()
        self.skip = skip
        self.dropout = nn.Dropout(p)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.skip(x)) + residual


SHORTCUTS: dict[str, type[nn.Module]] = {
    "identity": AddShortcut,
    "none": NoShortcut,
    "scale": ScaledShortcut,
    "exclusive_gate": ExclusiveGateShortcut,
    "shortcut_gate": ShortcutGateShortcut,
    "conv1x1": ConvShortcut,
    "dropout": DropoutShortcut,
    "dropout_inverted": InvertedDropoutShortcut,
}


def register_shortcut(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Decorator adding a shortcut class to ``SHORTCUTS`` under ``name``.

    The class is built as ``cls(skip, in_chs, out_chs, stride, **shortcut_args)`` and called as
    ``shortcut(x, residual) -> merged``; ``skip`` is the identity, or the ``downsample`` path
    where the unit changes shape. A shortcut registered by a module of one's own is chosen as
    ``shortcut: <module>.<name>`` (``my_shortcut.learned_scale``): the module is imported first.
    """

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if name in SHORTCUTS and SHORTCUTS[name] is not cls:
            raise ValueError(f"shortcut {name!r} is registered twice")
        SHORTCUTS[name] = cls
        return cls

    return decorate


def make_shortcut(
    name: str, in_chs: int, out_chs: int, stride: int, downsample: str = "B", **shortcut_args
) -> nn.Module:
    """Build shortcut ``name``; where the unit changes shape its skip path is ``downsample``."""
    given = name
    if name not in SHORTCUTS and "." in name:  # `my_shortcut.learned_scale`: a user module registers it
        module, _, name = name.rpartition(".")
        importlib.import_module(module)
    if name not in SHORTCUTS:
        raise ValueError(
            f"unknown shortcut {given!r}; choose one of {', '.join(SHORTCUTS)}, "
            "or <module>.<name> of one a module registers with register_shortcut"
        )
    if downsample not in DOWNSAMPLES:
        raise ValueError(f"unknown downsample {downsample!r}; choose one of {', '.join(DOWNSAMPLES)}")
    reshapes = stride != 1 or in_chs != out_chs
    skip = nn.Sequential(*DOWNSAMPLES[downsample](in_chs, out_chs, stride)) if reshapes else nn.Sequential()
    return SHORTCUTS[name](skip, in_chs, out_chs, stride, **shortcut_args)


# ---------------------------------------------------------------------------------------------
# Residual units (He et al. 2016b, Fig. 4). Same constructor; only the BN/ReLU placement differs.
# ---------------------------------------------------------------------------------------------


class ResidualUnit(nn.Module):
    """Holds ``conv{i}``/``bn{i}`` for each conv of the branch and the shortcut as ``downsample``.

    Args:
        convs: The residual branch's convolutions (from ``basic_layout``/``bottleneck_layout``).
        shortcut: An already-built shortcut, ``shortcut(x, residual) -> merged``.
        drop_rate: Dropout before the branch's last conv (Wide ResNets' "dropout between
            convolutions", Zagoruyko & Komodakis 2016, Sec. 2.4).
    """

    #: BN normalises a conv's input (pre-activation) rather than its output.
    norm_before_conv: ClassVar[bool] = False
    #: All activations live inside the units: the stem ends at its conv, and the network adds a
    #: final BN-ReLU after the last unit (He et al. 2016b, Sec. 4.1, "extra activation").
    preact: ClassVar[bool] = False

    def __init__(self, convs: Sequence[ConvSpec], shortcut: nn.Module, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.depth = len(convs)
        for i, spec in enumerate(convs, start=1):
            self.add_module(f"conv{i}", conv_from_spec(spec))
            self.add_module(f"bn{i}", nn.BatchNorm2d(spec.in_chs if self.norm_before_conv else spec.out_chs))
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate)
        self.downsample = shortcut  # torchvision's name, so ImageNet state dicts load unchanged

    def conv_bn_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(getattr(self, f"conv{i}"), getattr(self, f"bn{i}")) for i in range(1, self.depth + 1)]


class OriginalUnit(ResidualUnit):
    """Fig. 4(a), He et al. 2015: (conv-BN-ReLU)... conv-BN, add, ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *inner, (conv, bn) = self.conv_bn_pairs()
        out = x
        for inner_conv, inner_bn in inner:
            out = self.relu(inner_bn(inner_conv(out)))
        out = bn(conv(self.dropout(out)))
        return self.relu(self.downsample(x, out))


class BNAfterAddUnit(ResidualUnit):
    """Fig. 4(b): the last BN moves after the addition: ... conv, add, BN, ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *inner, (conv, bn) = self.conv_bn_pairs()
        out = x
        for inner_conv, inner_bn in inner:
            out = self.relu(inner_bn(inner_conv(out)))
        out = conv(self.dropout(out))
        return self.relu(bn(self.downsample(x, out)))


class ReLUBeforeAddUnit(ResidualUnit):
    """Fig. 4(c): the last ReLU moves into the branch: (conv-BN-ReLU)..., add (F(x) >= 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *inner, (conv, bn) = self.conv_bn_pairs()
        out = x
        for inner_conv, inner_bn in inner:
            out = self.relu(inner_bn(inner_conv(out)))
        out = self.relu(bn(conv(self.dropout(out))))
        return self.downsample(x, out)


class ReLUPreactUnit(ResidualUnit):
    """Fig. 4(d), ReLU-only pre-activation: (ReLU-conv-BN)..., add."""

    preact = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *inner, (conv, bn) = self.conv_bn_pairs()
        out = F.relu(x)  # not in place: x still feeds the shortcut
        for inner_conv, inner_bn in inner:
            out = self.relu(inner_bn(inner_conv(out)))
        out = bn(conv(self.dropout(out)))
        return self.downsample(x, out)


class PreactUnit(ResidualUnit):
    """Fig. 4(e), full pre-activation: (BN-ReLU-conv)..., add.

    Where the unit changes shape, the shortcut sees the pre-activated input rather than the raw
    one, as in the pre-activation code of the paper's authors (fb.resnet.torch, "both_preact")
    and Wide ResNets; identity shortcuts keep the clean path ``x``.
    """

    norm_before_conv = True
    preact = True

    def __init__(self, convs: Sequence[ConvSpec], shortcut: nn.Module, drop_rate: float = 0.0) -> None:
        super().__init__(convs, shortcut, drop_rate)
        self.shortcut_sees_preact = any(spec.stride != 1 for spec in convs) or convs[0].in_chs != convs[-1].out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (first_conv, first_bn), *middle, (conv, bn) = self.conv_bn_pairs()
        preact = self.relu(first_bn(x))
        out = first_conv(preact)
        for inner_conv, inner_bn in middle:
            out = inner_conv(self.relu(inner_bn(out)))
        out = conv(self.dropout(self.relu(bn(out))))
        return self.downsample(preact if self.shortcut_sees_preact else x, out)


UNITS: dict[str, type[ResidualUnit]] = {
    "original": OriginalUnit,
    "bn_after_add": BNAfterAddUnit,
    "relu_before_add": ReLUBeforeAddUnit,
    "relu_preact": ReLUPreactUnit,
    "full_preact": PreactUnit,
}
