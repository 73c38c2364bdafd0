"""Bad-input cases. Data files: CIFAR pickles, image trees, IDX files, caches."""

from __future__ import annotations

from pathlib import Path

from tests.bad_inputs.case import CIFAR, FIT, TEST, Case  # noqa: F401

CASES: list[Case] = []


def write_inputs(root: Path) -> dict[str, Path]:
    """Create the inputs this family's cases name under ``root``; returns ``{placeholder: path}``."""
    return {}
