"""The sweep runner and the report, end to end on synthetic CIFAR-10 pickles (smoke tier)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from datamodules.synthetic import write_cifar10_pickles
from experiments import report as report_module
from experiments.study import StudyError, list_studies, load_study
from experiments.sweep import command, plan, sweep_lock
from tests.conftest import REPO, run_ablate

# One representative arm per study for the default suite (each run is a separate process);
# `pytest -m slow` runs every arm of every study.
SMOKE_ARMS = {
    "resnet_shortcuts": "exclusive_gating_bg6",
    "resnet_units": "full_preact_164",
    "resnet_depth": "resnet20,plain20",
    "googlenet_aux": "aux_weight_03",
    "all_cnn": "all_cnn_c",  # x the four learning rates of the paper's grid
}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    return write_cifar10_pickles(tmp_path_factory.mktemp("cifar"), per_batch=20, num_test=30)


def _data_set(cifar_dir: Path) -> list[str]:
    return ["--set", f"data.init_args.data_dir={cifar_dir}", "--set", "data.init_args.val_size=20",
            "--set", "data.init_args.batch_size=16"]


def _sweep(study: str, out: Path, cifar_dir: Path, *args: str):
    return run_ablate("sweep", study, "--tier", "smoke", "--out", str(out), *_data_set(cifar_dir), *args,
                      cwd=out.parent, timeout=1500)


@pytest.mark.parametrize("study", sorted(SMOKE_ARMS))
def test_smoke_sweep_and_report(study: str, cifar_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = _sweep(study, out, cifar_dir, "--only", SMOKE_ARMS[study])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in out.rglob("result.json")]
    expected = len(SMOKE_ARMS[study].split(",")) * max(1, len(load_study(study).grid_points()))
    assert len(records) == expected
    for record in records:
        assert record["status"] == "completed", record
        assert 0 <= record["metrics"]["test/err"] <= 100
        assert record["git_commit"]
        run_dir = out / study / "smoke" / record["arm"]
        assert list(run_dir.rglob("config.yaml")), "the resolved config is stored beside every run"

    if study == "resnet_depth":  # a second invocation finds every run completed
        again = _sweep(study, out, cifar_dir, "--only", SMOKE_ARMS[study])
        assert again.returncode == 0
        assert again.stdout.count("skip ") == expected and "run     " not in again.stdout

    shown = run_ablate("report", study, "--tier", "smoke", "--out", str(out), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    target = out / study / "smoke"
    for name in ("report.md", "report.csv", "report.json", "report.png"):
        assert (target / name).is_file()
    rows = json.loads((target / "report.json").read_text())
    ran = set(SMOKE_ARMS[study].split(","))
    assert {row["arm"] for row in rows if row["n"] > 0} == ran
    assert all(row["mean"] is None for row in rows if row["arm"] not in ran), "unrun arms are missing, not numbers"
    assert "missing" in shown.stdout or len(ran) == len(rows)


@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(SMOKE_ARMS))
def test_smoke_sweep_every_arm(study: str, cifar_dir: Path, tmp_path: Path) -> None:
    exclude = ["--exclude", "all_cnn_c_cifar100"] if study == "all_cnn" else []
    result = _sweep(study, tmp_path / "runs", cifar_dir, *exclude)
    assert result.returncode == 0
    assert "FAILED" not in result.stdout, result.stdout


def _tiny_study(tmp_path: Path) -> Path:
    """A copy of resnet_depth with a broken arm, to watch failures being recorded."""
    root = tmp_path / "tiny"
    shutil.copytree(REPO / "experiments" / "studies" / "resnet_depth", root)
    meta = yaml.safe_load((root / "study.yaml").read_text())
    meta["name"] = "tiny"
    meta["arms"] = {"resnet20": meta["arms"]["resnet20"], "broken": {"paper": 5.0, "label": "broken"}}
    (root / "study.yaml").write_text(yaml.safe_dump(meta))
    (root / "arms" / "broken.yaml").write_text("model:\n  network:\n    init_args:\n      name: resnet21\n")
    return root


def test_failed_run_is_recorded_and_the_sweep_continues(cifar_dir: Path, tmp_path: Path) -> None:
    study = _tiny_study(tmp_path)
    out = tmp_path / "runs"
    result = _sweep(str(study), out, cifar_dir)
    assert result.returncode == 0
    broken = json.loads((out / "tiny" / "smoke" / "broken" / "seed_0" / "result.json").read_text())
    assert broken["status"] == "failed"
    assert "unknown architecture 'resnet21'" in broken["reason"]
    good = json.loads((out / "tiny" / "smoke" / "resnet20" / "seed_0" / "result.json").read_text())
    assert good["status"] == "completed"
    rows = {row["arm"]: row for row in report_module.collect(load_study(study), "smoke", out)}
    assert rows["broken"]["n"] == 0 and rows["broken"]["failed"] == 1 and rows["broken"]["mean"] is None
    text = report_module.markdown(load_study(study), "smoke", list(rows.values()))
    assert "| broken | 5.00 | failed |" in text and "unknown architecture" in text


def test_unfinished_runs_are_missing_and_resume_from_last_checkpoint(tmp_path: Path) -> None:
    study = load_study("resnet_depth")
    (run,) = plan(study, "smoke", 1, tmp_path, only=["resnet20"])
    assert "--ckpt_path" not in command(run, [])
    (run.directory / "checkpoints").mkdir(parents=True)
    (run.directory / "checkpoints" / "last.ckpt").write_bytes(b"placeholder")
    assert command(run, [])[-2:] == ["--ckpt_path", str(run.directory / "checkpoints" / "last.ckpt")]
    (run.directory / "result.json").write_text('{"status": "comp')  # a torn write is not a result
    rows = {row["arm"]: row for row in report_module.collect(study, "smoke", tmp_path)}
    assert rows["resnet20"]["n"] == 0 and rows["resnet20"]["unfinished"] == 1


def test_a_second_sweep_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    with sweep_lock(tmp_path / "study"):
        with pytest.raises(StudyError, match="another sweep .* is running"):
            with sweep_lock(tmp_path / "study"):
                pass


def test_sigterm_to_the_sweep_alone_checkpoints_its_run_and_the_next_sweep_resumes_it(
        cifar_dir: Path, tmp_path: Path) -> None:
    """``kill <sweep pid>`` reaches the ``ablate fit`` child: it saves last.ckpt and exits, the run is
    not recorded, the sweep exits 143, and the same command resumes the run from that checkpoint."""
    out, batches = tmp_path / "runs", tmp_path / "batches.log"
    slow = {"class_path": "tests.test_resume.BatchRecorder", "init_args": {"path": str(batches), "seconds": 0.5}}
    args = [sys.executable, "-m", "experiments.cli", "sweep", "resnet_depth", "--tier", "smoke", "--only", "resnet20",
            "--out", str(out), *_data_set(cifar_dir), "--set", "trainer.max_steps=40"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "WANDB_MODE": "offline"}
    sweep_process = subprocess.Popen([*args, "--set", f"trainer.callbacks+={json.dumps(slow)}"], cwd=tmp_path,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (batches.is_file() and len(batches.read_text().splitlines()) >= 3):  # "run" and two steps
        assert sweep_process.poll() is None and time.monotonic() < deadline, sweep_process.communicate()
        time.sleep(0.2)
    sweep_process.send_signal(signal.SIGTERM)  # the sweep's pid only, not its process group
    stdout, stderr = sweep_process.communicate(timeout=120)
    assert sweep_process.returncode == 143, stderr[-3000:]
    run_dir = out / "resnet_depth" / "smoke" / "resnet20" / "seed_0"
    assert "stopped resnet_depth/smoke/resnet20/seed_0: interrupted" in stdout and "stopped by SIGTERM" in stderr
    assert "interrupted by SIGTERM: saved" in (run_dir / "stderr.log").read_text()
    assert not (run_dir / "result.json").exists(), "an interrupted run is not a result"
    steps_at_stop = len(batches.read_text().splitlines())
    time.sleep(2)
    assert len(batches.read_text().splitlines()) == steps_at_stop, "the fit child went on training"

    resumed = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"--ckpt_path {run_dir / 'checkpoints' / 'last.ckpt'}" in (run_dir / "stdout.log").read_text()
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"


def test_grid_selection_uses_validation_not_test(tmp_path: Path) -> None:
    study = load_study("all_cnn")
    arm_dir = tmp_path / "all_cnn" / "full" / "all_cnn_c"
    for lr, val, test in ((0.25, 0.80, 5.0), (0.1, 0.90, 9.0), (0.05, 0.85, 7.0), (0.01, 0.70, 12.0)):
        seed_dir = arm_dir / f"lr={lr}" / "seed_0"
        seed_dir.mkdir(parents=True)
        (seed_dir / "result.json").write_text(json.dumps(
            {"status": "completed", "seed": 0, "metrics": {"val/acc_best": val, "test/err": test}}))
    row = next(r for r in report_module.collect(study, "full", tmp_path) if r["arm"] == "all_cnn_c")
    assert row["selected"] == "lr=0.1" and row["mean"] == 9.0


def test_unknown_study_and_arm_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="unknown study 'nope'.*resnet_shortcuts"):
        load_study("nope")
    with pytest.raises(StudyError, match="has no arm 'nope'"):
        plan(load_study("resnet_depth"), "smoke", 1, tmp_path, only=["nope"])
    result = run_ablate("sweep", "nope", cwd=tmp_path)
    assert result.returncode == 1 and "unknown study 'nope'" in result.stderr.strip().splitlines()[-1]
    assert set(list_studies()) >= set(SMOKE_ARMS)


def _results(root: Path, study: str, tier: str, errors: dict[str, float]) -> None:
    for arm, err in errors.items():
        seed_dir = root / study / tier / arm / "seed_0"
        seed_dir.mkdir(parents=True)
        (seed_dir / "result.json").write_text(json.dumps(
            {"status": "completed", "seed": 0, "metrics": {"test/err": err},
             "extra_args": ["--model.network.init_args.name=resnet20"]}))


def test_a_compressed_tier_is_compared_by_the_order_of_the_arms(tmp_path: Path) -> None:
    study = load_study("resnet_shortcuts")
    # Paper: original 6.61 < shortcut gating b_g=-6 6.91 < exclusive gating b_g=-6 8.70 < dropout (fail).
    _results(tmp_path, "resnet_shortcuts", "short",
             {"original": 25.0, "shortcut_gating_bg6": 26.0, "exclusive_gating_bg6": 28.0, "dropout": 60.0})
    rows = report_module.collect(study, "short", tmp_path)
    assert report_module.rank_agreement(rows) == (pytest.approx(1.0), 4)
    assert not any(row["fail"] for row in rows) and all(row["diff"] is None for row in rows), \
        "the paper's 20% rule and differences belong to its full schedule"
    text = report_module.markdown(study, "short", rows)
    assert "Spearman's rho over 4 arms, 'fail' tied last): **+1.00**" in text
    assert "changed the paper's protocol: `--model.network.init_args.name=resnet20`" in text
    _results(tmp_path, "resnet_shortcuts", "full", {"original": 60.0, "shortcut_gating_bg6": 28.0,
                                                    "exclusive_gating_bg6": 26.0, "dropout": 25.0})
    rows = report_module.collect(study, "full", tmp_path)
    assert report_module.rank_agreement(rows)[0] == pytest.approx(-1.0)
    original = next(row for row in rows if row["arm"] == "original")
    assert original["fail"] and original["diff"] == pytest.approx(60.0 - 6.61)
