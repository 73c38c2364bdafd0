"""Shared fixtures: real data when ../shared/data is present, synthetic files in the real formats.

Helpers that test files import live in ``tests/support.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import SHARED_DATA, write_synthetic_mnist


@pytest.fixture(autouse=True)
def _no_inherited_wandb_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that starts W&B in this process sets $WANDB_SERVICE; every ``ablate`` subprocess after it
    would then log through that service instead of its own. Unset after each test."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture
def synthetic_mnist(tmp_path: Path) -> Path:
    return write_synthetic_mnist(tmp_path / "data")


@pytest.fixture
def real_mnist() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found under {SHARED_DATA}/MNIST/raw")
    return SHARED_DATA
