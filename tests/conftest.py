"""Shared fixtures: real data when ../shared/data is present, synthetic files in the real formats."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from datamodules.synthetic import write_mnist_idx

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ABLATE_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_synthetic_mnist(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """A learnable MNIST stand-in in the real IDX layout: each class is a bright bar at its own row."""
    return write_mnist_idx(root, num_train=n_train, num_test=n_test, seed=seed)


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


def run_ablate(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real ``ablate`` entry point in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                "NO_COLOR": "1", **(env or {})}
    full_env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "experiments.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Trainer flags that keep an end-to-end run to a few seconds.
QUICK = (
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
)
