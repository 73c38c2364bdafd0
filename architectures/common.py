"""Pieces every family shares: the auxiliary-output tuple and weight initialisers."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class AuxOutputs(NamedTuple):
    """What a network built with auxiliary heads returns, in train and eval alike.

    ``aux`` holds one logits tensor per auxiliary head while training and is empty in eval,
    so callers never branch on the mode, only on how the network was built.
    """

    logits: torch.Tensor
    aux: tuple[torch.Tensor, ...] = ()


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
