"""Every YAML under experiments/ parses and instantiates, so none goes stale.

Plain configs are parsed on their own (after the defaults); a study's arms are parsed as the
sweep runs them: the study's base, then the arm, then the smoke tier.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from architectures import count_params
from experiments.cli import run_lightning_cli
from experiments.studies.study import list_studies, load_study
from tests.support import REPO

EXPERIMENTS = REPO / "experiments"
STUDIES = EXPERIMENTS / "studies"
PRESETS = EXPERIMENTS / "presets"
PLAIN = sorted(p for p in EXPERIMENTS.rglob("*.yaml") if STUDIES not in p.parents)
QUICKSTART = EXPERIMENTS / "quickstart.yaml"
ARMS = [(name, arm) for name in list_studies() for arm in load_study(name).arms]


def _build(args: list[str], tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr("sys.argv", ["ablate"])
    cli = run_lightning_cli([*args, "--trainer.accelerator=cpu"], run=False)
    assert cli.model.network.num_classes == cli.datamodule.num_classes
    assert cli.model.network.in_chans == cli.datamodule.in_chans
    return cli


@pytest.mark.parametrize("path", PLAIN, ids=[str(p.relative_to(EXPERIMENTS)) for p in PLAIN])
def test_config_parses_and_builds(path: Path, tmp_path: Path, monkeypatch) -> None:
    # A preset adds to an experiment's config, so it is parsed after one.
    before = ["--config", str(QUICKSTART)] if path.parent == PRESETS else []
    _build([*before, "--config", str(path)], tmp_path, monkeypatch)


@pytest.mark.parametrize(("study", "arm"), ARMS, ids=[f"{s}/{a}" for s, a in ARMS])
def test_study_arm_builds_the_network_it_names(study: str, arm: str, tmp_path: Path, monkeypatch) -> None:
    loaded = load_study(study)
    smoke = tmp_path / "smoke.yaml"
    smoke.write_text(yaml.safe_dump(loaded.tiers["smoke"]))
    cli = _build(
        ["--config", str(loaded.base), "--config", str(loaded.arms[arm].config), "--config", str(smoke)],
        tmp_path,
        monkeypatch,
    )
    assert cli.trainer.max_steps == loaded.tiers["smoke"]["trainer"]["max_steps"]
    assert count_params(cli.model.network) > 0


def test_every_study_has_three_tiers_and_all_arm_files() -> None:
    assert set(list_studies()) >= {"all_cnn", "resnet_shortcuts", "resnet_units", "resnet_depth", "googlenet_aux"}
    for name in list_studies():
        study = load_study(name)  # raises on a listed arm without a file, or a missing tier
        on_disk = {p.stem for p in (study.root / "arms").glob("*.yaml")}
        assert on_disk == set(study.arms), f"{name}: arm files and study.yaml disagree"
