"""Every YAML under experiments/ parses and instantiates, so none goes stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.cli import run_lightning_cli
from tests.conftest import REPO

CONFIGS = sorted(p for p in (REPO / "experiments").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO / "experiments")) for p in CONFIGS])
def test_config_parses_and_builds(path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr("sys.argv", ["ablate"])
    cli = run_lightning_cli(["--config", str(path), "--trainer.accelerator=cpu"], run=False)
    assert cli.model.network.num_classes == cli.datamodule.num_classes
    assert cli.model.network.in_chans == cli.datamodule.in_chans
