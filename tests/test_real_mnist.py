"""One epoch of the lecture's Inception network on the real MNIST, through the real `ablate`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import QUICK, REPO, run_ablate


@pytest.mark.end_to_end
def test_one_epoch_reaches_97_percent(real_mnist: Path, tmp_path: Path) -> None:
    result = run_ablate(
        "fit",
        "--config",
        str(REPO / "experiments" / "quickstart_fast.yaml"),
        *QUICK,
        f"--data.data_dir={real_mnist}",
        "--data.init_args.download=false",
        "--test_after_fit=true",
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(result.stdout.split("test accuracy:")[1].split("%")[0])
    assert accuracy >= 97.0, result.stdout[-2000:]
