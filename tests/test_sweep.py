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
from experiments.studies import report as report_module
from experiments.studies.study import StudyError, list_studies, load_study
from experiments.studies.sweep import command, plan, sweep_lock
from tests.support import REPO, run_ablate

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
    return [
        "--set",
        f"data.init_args.data_dir={cifar_dir}",
        "--set",
        "data.init_args.val_size=20",
        "--set",
        "data.init_args.batch_size=16",
    ]


def _sweep(study: str, out: Path, cifar_dir: Path, *args: str):
    return run_ablate(
        "sweep", study, "--tier", "smoke", "--out", str(out), *_data_set(cifar_dir), *args, cwd=out.parent, timeout=1500
    )


@pytest.mark.parametrize("study", sorted(SMOKE_ARMS))
@pytest.mark.end_to_end
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
    meta["arms"] = {"broken": {"paper": 5.0, "label": "broken"}, "resnet20": meta["arms"]["resnet20"]}
    (root / "study.yaml").write_text(yaml.safe_dump(meta))
    (root / "arms" / "broken.yaml").write_text("model:\n  network:\n    init_args:\n      name: resnet21\n")
    return root


@pytest.mark.end_to_end
def test_a_setup_error_stops_the_sweep_and_records_nothing(cifar_dir: Path, tmp_path: Path) -> None:
    """A bad config is the user's to fix, not the arm's result: the sweep stops before the next run,
    exits 2, writes no result.json, and the next sweep plans the run afresh."""
    study = _tiny_study(tmp_path)
    out = tmp_path / "runs"
    result = _sweep(str(study), out, cifar_dir, "--only", "broken,resnet20")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "ablate: error: SetupError: tiny/smoke/broken/seed_0 could not start: KeyError: unknown architecture 'resnet21'"
    ), last
    assert not list(out.rglob("result.json")), "a setup error is not a result"
    assert not (out / "tiny" / "smoke" / "resnet20").exists(), "no run starts after a setup error"
    assert not (out / "tiny" / "smoke" / "broken" / "seed_0" / "fingerprint.json").exists()


def test_unfinished_runs_are_missing_and_resume_from_last_checkpoint(tmp_path: Path) -> None:
    study = load_study("resnet_depth")
    (run,) = plan(study, "smoke", 1, tmp_path, only=["resnet20"])
    assert "--ckpt_path" not in command(run, [])
    (run.directory / "checkpoints").mkdir(parents=True)
    (run.directory / "checkpoints" / "last.ckpt").write_bytes(b"placeholder")
    assert command(run, [])[-2:] == ["--ckpt_path", str(run.directory / "checkpoints" / "last.ckpt")]
    rows = {row["arm"]: row for row in report_module.collect(study, "smoke", tmp_path)}
    assert rows["resnet20"]["n"] == 0 and rows["resnet20"]["unfinished"] == 1
    (run.directory / "result.json").write_text('{"status": "comp')  # not a result: named, counted, no number
    rows = {row["arm"]: row for row in report_module.collect(study, "smoke", tmp_path)}
    assert rows["resnet20"]["n"] == 0 and rows["resnet20"]["failed"] == 1
    assert "result.json is corrupt" in rows["resnet20"]["failures"][0]


def test_a_second_sweep_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    with sweep_lock(tmp_path / "study"):
        with pytest.raises(StudyError, match="another sweep .* is running"):
            with sweep_lock(tmp_path / "study"):
                pass


@pytest.mark.end_to_end
def test_sigterm_to_the_sweep_alone_checkpoints_its_run_and_the_next_sweep_resumes_it(
    cifar_dir: Path, tmp_path: Path
) -> None:
    """``kill <sweep pid>`` reaches the ``ablate fit`` child: it saves last.ckpt and exits, the run is
    not recorded, the sweep exits 143, and the same command resumes the run from that checkpoint."""
    out, batches = tmp_path / "runs", tmp_path / "batches.log"
    slow = {"class_path": "tests.fit_processes.BatchRecorder", "init_args": {"path": str(batches), "seconds": 0.5}}
    args = [
        sys.executable,
        "-m",
        "experiments.cli",
        "sweep",
        "resnet_depth",
        "--tier",
        "smoke",
        "--only",
        "resnet20",
        "--out",
        str(out),
        *_data_set(cifar_dir),
        "--set",
        "trainer.max_steps=40",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "WANDB_MODE": "offline"}
    args += ["--set", f"trainer.callbacks+={json.dumps(slow)}"]  # part of the fingerprint: the resume repeats it
    sweep_process = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
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
        (seed_dir / "result.json").write_text(
            json.dumps({"status": "completed", "seed": 0, "metrics": {"val/acc_best": val, "test/err": test}})
        )
    row = next(r for r in report_module.collect(study, "full", tmp_path) if r["arm"] == "all_cnn_c")
    assert row["selected"] == "lr=0.1" and row["mean"] == 9.0


def test_grid_selection_uses_the_final_models_validation_accuracy(tmp_path: Path) -> None:
    """The rate is chosen on the validation accuracy of the model that is tested (the final one),
    not on the best accuracy some earlier checkpoint reached."""
    study = load_study("all_cnn")
    arm_dir = tmp_path / "all_cnn" / "full" / "all_cnn_c"
    for lr, final, best, test in (
        (0.25, 0.70, 0.95, 5.0),
        (0.1, 0.90, 0.91, 9.0),
        (0.05, 0.85, 0.86, 7.0),
        (0.01, 0.60, 0.70, 12.0),
    ):
        seed_dir = arm_dir / f"lr={lr}" / "seed_0"
        seed_dir.mkdir(parents=True)
        (seed_dir / "result.json").write_text(
            json.dumps(
                {
                    "status": "completed",
                    "seed": 0,
                    "metrics": {"val/acc": final, "val/acc_best": best, "test/err": test},
                }
            )
        )
    row = next(r for r in report_module.collect(study, "full", tmp_path) if r["arm"] == "all_cnn_c")
    assert row["selected"] == "lr=0.1" and row["mean"] == 9.0


def test_unknown_study_and_arm_are_clear_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    from experiments.cli import main

    with pytest.raises(StudyError, match="unknown study 'nope'.*resnet_shortcuts"):
        load_study("nope")
    with pytest.raises(StudyError, match="has no arm 'nope'"):
        plan(load_study("resnet_depth"), "smoke", 1, tmp_path, only=["nope"])
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["sweep", "nope"]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err.strip().splitlines()[-1]
    assert set(list_studies()) >= set(SMOKE_ARMS)


def _results(root: Path, study: str, tier: str, errors: dict[str, float]) -> None:
    for arm, err in errors.items():
        seed_dir = root / study / tier / arm / "seed_0"
        seed_dir.mkdir(parents=True)
        (seed_dir / "result.json").write_text(
            json.dumps(
                {
                    "status": "completed",
                    "seed": 0,
                    "metrics": {"test/err": err},
                    "extra_args": ["--model.network.init_args.name=resnet20"],
                }
            )
        )


def test_a_compressed_tier_is_compared_by_the_order_of_the_arms(tmp_path: Path) -> None:
    study = load_study("resnet_shortcuts")
    # Paper: original 6.61 < shortcut gating b_g=-6 6.91 < exclusive gating b_g=-6 8.70 < dropout (fail).
    _results(
        tmp_path,
        "resnet_shortcuts",
        "short",
        {"original": 25.0, "shortcut_gating_bg6": 26.0, "exclusive_gating_bg6": 28.0, "dropout": 60.0},
    )
    rows = report_module.collect(study, "short", tmp_path)
    assert report_module.rank_agreement(rows) == (pytest.approx(1.0), 4)
    assert not any(row["fail"] for row in rows) and all(row["diff"] is None for row in rows), (
        "the paper's 20% rule and differences belong to its full schedule"
    )
    text = report_module.markdown(study, "short", rows)
    assert "Spearman's rho over 4 arms, 'fail' tied last): **+1.00**" in text
    assert "changed the paper's protocol: `--model.network.init_args.name=resnet20`" in text
    _results(
        tmp_path,
        "resnet_shortcuts",
        "full",
        {"original": 60.0, "shortcut_gating_bg6": 28.0, "exclusive_gating_bg6": 26.0, "dropout": 25.0},
    )
    rows = report_module.collect(study, "full", tmp_path)
    assert report_module.rank_agreement(rows)[0] == pytest.approx(-1.0)
    original = next(row for row in rows if row["arm"] == "original")
    assert original["fail"] and original["diff"] == pytest.approx(60.0 - 6.61)


def test_arms_are_ranked_within_the_group_the_paper_compares_them_in(tmp_path: Path) -> None:
    """Table 2 compares units within a depth: deeper nets that train worse in a short tier must not
    turn a within-depth agreement into a disagreement."""
    study = load_study("resnet_units")
    # Within each depth our order is the paper's; across depths it is reversed (ResNet-164 worse here).
    ours = {
        "full_preact_110": 25.0,
        "original_110": 26.0,
        "relu_preact_110": 27.0,
        "full_preact_164": 30.0,
        "relu_preact_164": 31.0,
        "original_164": 32.0,
    }
    _results(tmp_path, "resnet_units", "short", ours)
    rows = report_module.collect(study, "short", tmp_path)
    assert report_module.rank_agreements(rows) == {
        "ResNet-110": (pytest.approx(1.0), 3),
        "ResNet-164": (pytest.approx(1.0), 3),
    }
    ranks = {row["arm"]: (row["rank_paper"], row["rank_ours"]) for row in rows if "rank_ours" in row}
    # Pooled, original_164 would rank 3rd in the paper and 6th in ours.
    assert ranks["original_164"] == (3, 3) and ranks["full_preact_110"] == (1, 1)
    text = report_module.markdown(study, "short", rows)
    assert "ResNet-110: **+1.00** over 3 arms; ResNet-164: **+1.00** over 3 arms." in text
    assert "Spearman's rho over" not in text, "no rho pooled across the groups"

    all_cnn = load_study("all_cnn")
    assert {arm.group for arm in all_cnn.arms.values()} == {"Table 3", "Table 4", "Table 5"}


# ----- numbers a researcher can trust ------------------------------------------------------------


def _sweep_in_process(capsys, *args: str) -> tuple[int, str, str]:
    from experiments.cli import main

    capsys.readouterr()
    code = main(["sweep", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.end_to_end
def test_a_changed_setting_is_never_a_silent_skip(cifar_dir: Path, tmp_path: Path, capsys) -> None:
    """A second sweep with one `--set` changed stops before training and names the key; `--changed keep`
    keeps the old result knowingly (the report shows its fingerprint), `--changed rerun` moves it aside."""
    out = tmp_path / "runs"
    base = ["resnet_depth", "--tier", "smoke", "--only", "resnet20", "--out", str(out), *_data_set(cifar_dir)]
    code, stdout, _ = _sweep_in_process(capsys, *base)
    assert code == 0, stdout
    run_dir = out / "resnet_depth" / "smoke" / "resnet20" / "seed_0"
    first = json.loads((run_dir / "result.json").read_text())
    assert first["status"] == "completed" and len(first["fingerprint"]) == 12
    assert stdout.strip().splitlines()[-1] == (
        "resnet_depth [smoke]: 1 completed, 0 failed, 0 skipped (done before), 0 missing of 1 planned runs"
    )
    before = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*") if path.is_file()}

    changed = [*base, "--set", "model.optimizer.init_args.lr=0.05"]
    code, stdout, stderr = _sweep_in_process(capsys, *changed)
    assert code == 2
    assert (
        f"changed resnet_depth/smoke/resnet20/seed_0: fingerprint {first['fingerprint']} -> " in stderr
        and "changed: model.optimizer.init_args.lr" in stderr
    ), stderr
    assert "nothing was trained" in stderr.strip().splitlines()[-1]
    assert {path: path.stat().st_mtime_ns for path in run_dir.rglob("*") if path.is_file()} == before

    # Where the run happens is not what it is: another data folder, more workers, another device.
    code, stdout, _ = _sweep_in_process(
        capsys, *base, "--set", "data.init_args.num_workers=0", "--set", "trainer.accelerator=cpu"
    )
    assert code == 0 and "skip    resnet_depth/smoke/resnet20/seed_0: completed" in stdout

    code, stdout, _ = _sweep_in_process(capsys, *changed, "--changed", "keep")
    assert code == 0 and "keep    resnet_depth/smoke/resnet20/seed_0" in stdout
    assert "skip    resnet_depth/smoke/resnet20/seed_0: completed (another configuration, kept)" in stdout

    code, stdout, _ = _sweep_in_process(capsys, *changed, "--changed", "rerun")
    assert code == 0, stdout
    moved = list((out / "resnet_depth" / "smoke" / "_superseded").glob("*/resnet20/seed_0/result.json"))
    assert len(moved) == 1 and json.loads(moved[0].read_text()) == first, "the old run is kept aside, whole"
    second = json.loads((run_dir / "result.json").read_text())
    assert second["fingerprint"] != first["fingerprint"]
    assert json.loads((run_dir / "fingerprint.json").read_text())["config"]["model.optimizer.init_args.lr"] == 0.05

    # The record says which model was tested: the final one, as the papers; the best checkpoint's beside it.
    assert second["tested"] == "final"
    assert second["metrics"]["test/err"] == second["test_final"]["test/err"]
    assert set(second["test_best"]) >= {"test/err", "test/acc"}
    assert Path(second["best_checkpoint"]).parent == run_dir / "checkpoints"
    assert (run_dir / "checkpoints" / "final.ckpt").is_file(), "the tested final weights are kept"
    tests = json.loads((run_dir / "test_results.json").read_text())
    assert tests["final"]["metrics"] == second["test_final"] and tests["best"]["metrics"] == second["test_best"]

    # A finished run's folder is never trained into again, and evaluating it adds rather than replaces.
    from experiments.cli import main

    rows_before = (run_dir / "metrics.csv").read_text()
    config_before = (run_dir / "config.yaml").read_text()
    checkpoints = {path: path.read_bytes() for path in (run_dir / "checkpoints").iterdir()}
    assert main(["fit", "--config", str(run_dir / "config.yaml")]) == 2
    assert "holds a finished run (result.json)" in capsys.readouterr().err.strip().splitlines()[-1]
    assert {path: path.read_bytes() for path in (run_dir / "checkpoints").iterdir()} == checkpoints
    assert (
        main(
            [
                "test",
                "--config",
                str(run_dir / "config.yaml"),
                "--ckpt_path",
                str(run_dir / "checkpoints" / "last.ckpt"),
            ]
        )
        == 0
    )
    assert (run_dir / "metrics.csv").read_text().startswith(rows_before.strip())
    assert (run_dir / "config.yaml").read_text() == config_before and (run_dir / "config_test.yaml").is_file()

    report = run_ablate("report", "resnet_depth", "--tier", "smoke", "--out", str(out), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert f"| {second['fingerprint']} |" in report.stdout and "test error of the final model" in report.stdout


@pytest.mark.end_to_end
def test_a_sweep_with_failed_or_missing_runs_exits_non_zero(cifar_dir: Path, tmp_path: Path) -> None:
    study = tmp_path / "diverge"
    shutil.copytree(REPO / "experiments" / "studies" / "resnet_depth", study)
    meta = yaml.safe_load((study / "study.yaml").read_text())
    meta["name"] = "diverge"
    meta["arms"], meta["reference"] = {"lr_1e12": {"paper": 5.0, "label": "lr 1e12"}}, "lr_1e12"
    (study / "study.yaml").write_text(yaml.safe_dump(meta))
    (study / "arms" / "lr_1e12.yaml").write_text(  # no batch norm to absorb it: NaN at once
        "model:\n  network:\n    init_args: {name: all_cnn_c}\n  optimizer:\n    init_args: {lr: 1.0e+12}\n"
    )
    out = tmp_path / "runs"
    result = _sweep(str(study), out, cifar_dir)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == (
        "diverge [smoke]: 0 completed, 1 failed, 0 skipped (done before), 0 missing of 1 planned runs"
    )
    record = json.loads((out / "diverge" / "smoke" / "lr_1e12" / "seed_0" / "result.json").read_text())
    assert record["status"] == "failed" and record["diverged"] is True
    again = _sweep(str(study), out, cifar_dir)
    assert again.returncode == 1 and "skip    diverge/smoke/lr_1e12/seed_0: failed; --retry-failed" in again.stdout
    rows = report_module.collect(load_study(study), "smoke", out)
    assert rows[0]["ours"] == "fail" and "diverged (fail)" in report_module.markdown(load_study(study), "smoke", rows)


def test_the_report_never_shows_a_diverged_or_corrupt_result_as_a_number(tmp_path: Path, monkeypatch, capsys) -> None:
    from experiments.cli import main

    study = load_study("resnet_shortcuts")
    _results(
        tmp_path,
        "resnet_shortcuts",
        "short",
        {"original": 25.0, "shortcut_gating_bg6": float("nan"), "exclusive_gating_bg6": 28.0, "conv1x1": 30.0},
    )
    corrupt = tmp_path / "resnet_shortcuts" / "short" / "dropout" / "seed_0"
    corrupt.mkdir(parents=True)
    (corrupt / "result.json").write_text('{"status": "compl')
    rows = {row["arm"]: row for row in report_module.collect(study, "short", tmp_path)}
    nan_row = rows["shortcut_gating_bg6"]
    assert nan_row["n"] == 0 and nan_row["mean"] is None and nan_row["ours"] == "fail" and nan_row["diverged"] == 1
    assert nan_row["rank_ours"] == 4, "a diverged arm ranks last, after every number"
    assert rows["dropout"]["failed"] == 1 and "corrupt" in rows["dropout"]["failures"][0]
    text = report_module.markdown(study, "short", list(rows.values()))
    assert not [line for line in text.splitlines() if line.startswith("|") and "nan" in line.lower()]
    assert "| shortcut-only gating b_g=-6 | 6.91 | diverged (fail) |" in text
    assert "seed_0: " in text and "is corrupt" in text and "seed None" not in text

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["report", "resnet_shortcuts", "--tier", "short", "--out", str(tmp_path / "typo")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"no runs of resnet_shortcuts [short] under {tmp_path / 'typo'}" in last
    assert not (tmp_path / "typo").exists(), "a mistyped --out creates nothing"
