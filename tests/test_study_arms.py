"""Every arm of every study differs from its reference arm in the row it stands for and nothing else.

Each study's ``study.yaml`` names the keys its table varies (``varies``) and its reference arm; an arm
that changes more declares each extra key with its source (``differs``: the paper's section, the
authors' released code). The arms are resolved exactly as ``ablate sweep`` resolves them (base, arm,
the tier's per-run config) and compared on what decides a result (``experiments.studies.fingerprint``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml

from experiments.studies.fingerprint import resolve_fit_config, result_config
from experiments.studies.study import TIERS, list_studies, load_study
from experiments.studies.sweep import fit_args, plan, run_config


def _resolved(run) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        run_yaml = Path(folder) / "run.yaml"
        run_yaml.write_text(yaml.safe_dump(run_config(run, False)))
        return result_config(resolve_fit_config(fit_args(run, run_yaml, [])))


def _covered(key: str, prefixes) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("name", list_studies())
def test_every_arm_differs_from_the_reference_in_what_its_table_varies(name: str, tier: str, tmp_path: Path) -> None:
    study = load_study(name)
    assert study.varies, f"{name}: study.yaml must say which keys its table varies"
    runs = {run.arm.name: run for run in plan(study, tier, 1, tmp_path)}  # one grid point per arm is enough
    reference = _resolved(runs[study.reference])
    for arm in study.arms.values():
        resolved = _resolved(runs[arm.name])
        differing = {
            key
            for key in set(resolved) | set(reference)
            if resolved.get(key, "<unset>") != reference.get(key, "<unset>")
        }
        undeclared = sorted(key for key in differing if not _covered(key, (*study.varies, *arm.differs)))
        assert not undeclared, (
            f"{name}/{arm.name} [{tier}] also changes {undeclared}: vary it in the table or "
            "declare it under the arm's `differs` with its source"
        )
        unused = [key for key in arm.differs if not any(_covered(d, [key]) for d in differing)]
        assert not unused, f"{name}/{arm.name}: declares {unused} but does not change them"
        assert all(arm.differs.values()), f"{name}/{arm.name}: every declared difference names its source"


def test_a_hidden_difference_is_caught(tmp_path: Path) -> None:
    """The check itself fails on an arm that changes a key its table does not vary."""
    import shutil

    from experiments.studies.study import STUDIES_DIR

    root = tmp_path / "resnet_shortcuts"
    shutil.copytree(STUDIES_DIR / "resnet_shortcuts", root)
    (root / "arms" / "conv1x1.yaml").write_text(
        "model:\n  network:\n    init_args:\n      overrides: {shortcut: conv1x1}\n"
        "  optimizer:\n    init_args: {lr: 0.05}\n"
    )
    study = load_study(root)
    runs = {run.arm.name: run for run in plan(study, "smoke", 1, tmp_path / "runs")}
    reference, changed = _resolved(runs["original"]), _resolved(runs["conv1x1"])
    differing = {key for key in changed if changed[key] != reference.get(key)}
    assert differing == {"model.network.init_args.overrides.shortcut", "model.optimizer.init_args.lr"}
    assert [key for key in differing if not _covered(key, study.varies)] == ["model.optimizer.init_args.lr"]
