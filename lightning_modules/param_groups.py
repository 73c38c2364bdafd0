"""Parameter groups for the injected optimiser: per-prefix learning-rate multipliers, no decay on
norm and bias parameters, frozen parameters left out.

"No bias decay" (Jia et al. 2018, arXiv 1807.11205; He et al. 2019 "Bag of Tricks",
arXiv 1812.01187, section 3.1) applies weight decay to conv and linear weights only: biases and the
scale/shift of normalisation layers go into a group with ``weight_decay`` 0. Learning-rate
multipliers give a fine-tuned backbone and a new head different rates (or any name prefix its own).
Each group records its ``lr_multiplier``; ``scale_group_lrs`` multiplies the optimiser's rate by it
once the optimiser is built, so the optimiser's own ``lr`` stays the one number a config states.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

# Layers whose parameters are a scale and a shift of normalised activations.
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*: torch's one base, not public
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)


def matches(name: str, prefix: str) -> bool:
    """True when the dotted ``name`` is ``prefix`` or lies under it (``features`` matches
    ``features.0.weight`` but not ``features_extra.weight``); ``""`` matches everything."""
    return not prefix or name == prefix or name.startswith(prefix + ".")


def multiplier_for(name: str, lr_multipliers: Mapping[str, float]) -> float:
    """The multiplier of the longest prefix in ``lr_multipliers`` matching ``name``, else 1."""
    best = max((prefix for prefix in lr_multipliers if matches(name, prefix)), key=len, default=None)
    return 1.0 if best is None else float(lr_multipliers[best])


def no_decay_names(module: nn.Module) -> set[str]:
    """Names of the biases and normalisation-layer parameters of ``module``."""
    names = set()
    for module_name, child in module.named_modules():
        for param_name, _ in child.named_parameters(recurse=False):
            if isinstance(child, NORM_LAYERS) or param_name == "bias":
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def check_prefixes(module: nn.Module, prefixes: Iterable[str], knob: str) -> None:
    """A clear error for a prefix that names no parameter of ``module`` (a typo would do nothing)."""
    names = [name for name, _ in module.named_parameters()]
    for prefix in prefixes:
        if not any(matches(name, prefix) for name in names):
            top = dict.fromkeys(name.split(".")[0] for name in names)  # in the network's order
            raise ValueError(
                f"{knob}: {prefix!r} matches no parameter of {type(module).__name__}; its top-level "
                f"modules are {', '.join(top)} (see `print(model.network)` for deeper names)"
            )


def build_param_groups(
    module: nn.Module,
    *,
    weight_decay_norm_bias: bool = True,
    lr_multipliers: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Trainable parameters of ``module`` grouped by (lr multiplier, decayed or not).

    Args:
        module: The network; parameters with ``requires_grad=False`` (frozen) are left out.
        weight_decay_norm_bias: False puts biases and norm-layer parameters in groups with
            ``weight_decay`` 0; True leaves the optimiser's weight decay on them.
        lr_multipliers: Parameter-name prefix -> multiplier of the optimiser's learning rate;
            the longest matching prefix wins, unmatched parameters get 1.

    Returns:
        Groups ``{"params": [...], "lr_multiplier": m}`` plus ``"weight_decay": 0.0`` on the
        no-decay ones, in first-seen order (deterministic, so checkpoints of the optimiser load).
    """
    lr_multipliers = dict(lr_multipliers or {})
    check_prefixes(module, lr_multipliers, "lr_multipliers")
    skip_decay = set() if weight_decay_norm_bias else no_decay_names(module)
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        key = (multiplier_for(name, lr_multipliers), name in skip_decay)
        if key not in groups:
            groups[key] = {"params": [], "lr_multiplier": key[0]}
            if key[1]:
                groups[key]["weight_decay"] = 0.0
        groups[key]["params"].append(param)
    if not groups:
        raise ValueError(f"{type(module).__name__} has no trainable parameters: is everything frozen?")
    return list(groups.values())


def scale_group_lrs(optimizer: torch.optim.Optimizer) -> None:
    """Multiply each group's learning rate by its ``lr_multiplier`` (once, right after building)."""
    for group in optimizer.param_groups:
        multiplier = group.get("lr_multiplier", 1.0)
        if multiplier != 1.0:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].mul_(multiplier)
            else:
                group["lr"] *= multiplier
