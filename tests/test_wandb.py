"""The real wandb client, offline: the run directory holds what was logged."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_modules.loggers import wandb_credentials_available
from tests.support import QUICK, REPO, run_ablate
from tests.wandb_runs import read_wandb_run


@pytest.mark.end_to_end
def test_offline_run_holds_metrics_and_config(synthetic_mnist: Path, tmp_path: Path) -> None:
    result = run_ablate(
        "fit",
        "--config",
        str(REPO / "experiments" / "quickstart_fast.yaml"),
        "--config",
        str(REPO / "experiments" / "presets" / "wandb.yaml"),
        *QUICK,
        f"--data.data_dir={synthetic_mnist}",
        "--data.init_args.val_size=100",
        "--test_after_fit=true",
        cwd=tmp_path,
        env={"WANDB_MODE": "", "HOME": str(tmp_path)},  # no key, no netrc: offline by itself
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "no key configured, so the logger must have gone offline"
    logged = read_wandb_run(runs[0])
    logged_keys = {key for row in logged["history"] for key in row}
    assert {"train/loss_epoch", "val/acc", "val/acc_best", "test/acc", "test/err"} <= logged_keys
    assert 0.0 <= logged["summary"]["test/err"] <= 100.0
    assert logged["config"]["model/params"] == 97_298
    assert logged["run"]["group"] == "quickstart_fast", "grouped by the experiment, as presets/wandb.yaml says"


def test_credentials_detection(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_credentials_available()
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_credentials_available()
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_credentials_available()
