"""Loading torchvision's ImageNet weights (or a local file) into zoo networks with its layout.

``@pretrainable`` gives a registered builder a ``pretrained`` argument: a torchvision weights enum
name such as ``"IMAGENET1K_V1"`` or ``"DEFAULT"`` (downloaded through torch.hub into its cache, or
read from there when offline), or the path of a local state-dict file. Every file is read with
``torch.load(..., weights_only=True)``, which cannot execute code from the checkpoint. When the
network was built with another ``num_classes`` the classifier is left freshly initialised, so
``create_model("resnet50", num_classes=10, pretrained="IMAGENET1K_V2")`` is a fine-tuning start.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import urlparse

import torch
from torch import nn

Builder = Callable[..., nn.Module]
StateDictFix = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _from_torchvision(torchvision_name: str, weights_name: str) -> dict[str, torch.Tensor]:
    import torchvision

    enum = torchvision.models.get_model_weights(torchvision_name)
    try:
        weights = enum[weights_name.removeprefix(f"{enum.__name__}.")]
    except KeyError:
        known = ", ".join(enum.__members__)
        raise ValueError(
            f"{weights_name!r} is neither a file nor a weights name of {torchvision_name}; known: {known}, DEFAULT"
        ) from None
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    try:
        # Reads the cached file when present; downloads (and checks the hash) otherwise.
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", check_hash=True, weights_only=True)
    except OSError as err:  # URLError, timeouts and refused connections are all OSErrors
        raise RuntimeError(
            f"could not download {weights} for {torchvision_name} from {weights.url} ({err}). Offline? "
            f"Fetch that file elsewhere and put it at {cached}, or pass pretrained=<path to a .pth file>."
        ) from err


def _keep_metadata(new: dict[str, torch.Tensor], old: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Carry the per-module versions of a saved state dict over to a filtered copy: some modules
    (torchvision's MNASNet, BatchNorm) load differently by version."""
    new = OrderedDict(new)
    if hasattr(old, "_metadata"):
        new._metadata = old._metadata
    return new


def _head_name(net: nn.Module) -> str:
    """The last module owning parameters: the classifier in every torchvision-layout network."""
    return [name for name, module in net.named_modules() if any(True for _ in module.parameters(recurse=False))][-1]


def load_pretrained(net: nn.Module, source: str, torchvision_name: str, remap: StateDictFix | None = None) -> nn.Module:
    """Load ``source`` (weights enum name or local file) into ``net`` in place and return it.

    Args:
        net: A network whose state-dict keys are torchvision's ``torchvision_name``'s.
        source: ``"IMAGENET1K_V1"``-style weights name, or a path to a saved state dict.
        torchvision_name: torchvision builder whose weights enum ``source`` names.
        remap: Renames legacy keys of a checkpoint (torchvision's DenseNet files predate its names).
    """
    if os.path.isfile(source):
        state = torch.load(source, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    elif os.sep in source or source.endswith((".pth", ".pt", ".ckpt")):
        raise FileNotFoundError(f"pretrained weights file {source!r} does not exist")
    else:
        state = _from_torchvision(torchvision_name, source)
    if remap is not None:
        state = _keep_metadata(remap(state), state)

    own = net.state_dict()
    mismatched = [key for key, value in state.items() if key in own and own[key].shape != value.shape]
    head = _head_name(net)
    if any(not key.startswith(f"{head}.") for key in mismatched):
        shapes = ", ".join(f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}" for key in mismatched[:4])
        raise ValueError(
            f"{source} does not fit this network beyond its classifier {head!r} (checkpoint vs network: "
            f"{shapes}); build it with the checkpoint's in_chans and layout"
        )
    # A different num_classes: keep everything but the classifier, which stays freshly initialised.
    kept = _keep_metadata({k: v for k, v in state.items() if k not in mismatched}, state)
    result = net.load_state_dict(kept, strict=False)
    missing = [key for key in result.missing_keys if key not in mismatched]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source} does not match the network: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return net


def pretrainable(builder: Builder | None = None, *, remap: StateDictFix | None = None):
    """Give ``builder`` a ``pretrained: str | None`` argument loading the torchvision weights of the
    same name (our builders are named like torchvision's where the layouts match).

    Use as ``@pretrainable`` or ``@pretrainable(remap=fix_legacy_keys)``.
    """

    def decorate(builder: Builder) -> Builder:
        @functools.wraps(builder)
        def build(pretrained: str | None = None, **overrides) -> nn.Module:
            net = builder(**overrides)
            return net if pretrained is None else load_pretrained(net, pretrained, builder.__name__, remap)

        return build

    return decorate if builder is None else decorate(builder)
