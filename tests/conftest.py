"""Shared fixtures: real data when ../shared/data is present, synthetic files in the real formats."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ABLATE_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file: magic 0x0000 08 <ndim>, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_synthetic_mnist(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """A learnable MNIST stand-in in the real IDX layout: each class is a bright bar at its own row."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        images = rng.integers(0, 60, size=(count, 28, 28)).astype(np.uint8)
        for index, label in enumerate(labels):
            images[index, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


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
