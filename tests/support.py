"""What several test files share: the repository's paths, synthetic MNIST, and ``ablate`` in a subprocess.

Test files never import each other; they import this module (pytest collects no tests from it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from datamodules.synthetic import write_mnist_idx

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ABLATE_SHARED_DATA", REPO.parent / "shared" / "data"))

# Trainer flags that keep an end-to-end run to a few seconds.
QUICK = (
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
)


def write_synthetic_mnist(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """A learnable MNIST stand-in in the real IDX layout: each class is a bright bar at its own row."""
    return write_mnist_idx(root, num_train=n_train, num_test=n_test, seed=seed)


def run_ablate(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real ``ablate`` entry point in a subprocess, as a user would."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "NO_COLOR": "1",
        **(env or {}),
    }
    full_env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "experiments.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
