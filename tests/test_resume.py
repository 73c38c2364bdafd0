"""Resume after a kill: `ablate fit --ckpt_path last` continues the run, exactly at an epoch
boundary; SIGTERM and SIGUSR1 save `last.ckpt` at the next batch and exit 143 / 138.

Every run here is the real `ablate fit` in a subprocess (tests/fit_processes.py): LeNet-5 on 500
synthetic MNIST digits, 10 batches an epoch, 3 epochs, `--trainer.deterministic true`, seed 0.
"""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning import Trainer
from pytorch_lightning.plugins.environments import SLURMEnvironment

from datamodules.base import seeded_split
from lightning_modules.preemption import CheckpointOnSignal
from lightning_modules.run_folders import find_last_checkpoint
from tests.fit_processes import (
    BATCHES,
    EPOCHS,
    TOTAL_STEPS,
    assert_same_weights,
    batch_log,
    finish,
    last_checkpoint,
    metric_rows,
    run_dir,
    start,
    tiny_config,
    wait_for,
)
from tests.support import write_synthetic_mnist


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory) -> Path:
    """The uninterrupted 3-epoch run."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    code, stderr = finish(start(workdir, tiny_config(data_dir)))
    assert code == 0, stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def killed_at_epoch_end(data_dir: Path, tmp_path_factory) -> tuple[Path, int]:
    """A run SIGKILLed once epoch 0's last.ckpt exists; returns its folder and the checkpoint's step."""
    workdir = tmp_path_factory.mktemp("killed")
    first = start(workdir, tiny_config(data_dir))
    last = workdir / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    wait_for(last.is_file, first)  # written atomically (write, then rename) at the end of epoch 0
    first.kill()
    assert finish(first)[0] == -signal.SIGKILL
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert killed_at < TOTAL_STEPS and killed_at % BATCHES == 0
    return workdir, killed_at


@pytest.mark.end_to_end
def test_resume_after_sigkill_at_an_epoch_boundary_is_exact(
    killed_at_epoch_end, reference: Path, data_dir: Path, tmp_path: Path
) -> None:
    shutil.copytree(killed_at_epoch_end[0], tmp_path, dirs_exist_ok=True)
    killed_at = killed_at_epoch_end[1]
    code, stderr = finish(start(tmp_path, tiny_config(data_dir), "--ckpt_path", "last"))
    assert code == 0, stderr[-3000:]
    assert f"resuming from {Path('runs/tiny/version_0/checkpoints/last.ckpt')}" in stderr
    assert_same_weights(last_checkpoint(tmp_path), last_checkpoint(reference))
    # The history is kept and the rest logged identically. The one row a SIGKILL can take with it:
    # epoch 0's training averages, logged after the epoch's checkpoint and flushed when epoch 1 starts.
    expected_rows = metric_rows(reference)
    lossy = [row for row in expected_rows if row["step"] == str(killed_at - 1) and row["train/acc"]]
    assert metric_rows(tmp_path) in (expected_rows, [row for row in expected_rows if row not in lossy])
    (expected,) = batch_log(reference)
    first, resumed = batch_log(tmp_path)
    assert first[:killed_at] == expected[:killed_at]
    assert resumed == expected[killed_at:], "the resumed epochs draw the same shuffles as the uninterrupted run"


@pytest.mark.end_to_end
def test_best_validation_accuracy_counts_the_epochs_before_a_resume(
    killed_at_epoch_end, data_dir: Path, tmp_path: Path
) -> None:
    """Resumed against a copy of the data whose validation labels are all wrong, val/acc drops to
    about 0, but val/acc_best is the run's maximum: the accuracy epoch 0 reached before the kill."""
    shutil.copytree(killed_at_epoch_end[0], tmp_path, dirs_exist_ok=True)
    before = max(float(row["val/acc"]) for row in metric_rows(tmp_path) if row.get("val/acc"))
    assert before > 0.3, "epoch 0 learned something"
    wrong = tmp_path / "wrong_val_labels"
    shutil.copytree(data_dir, wrong)
    labels_file = wrong / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    raw = bytearray(labels_file.read_bytes())
    _, val_index = seeded_split(len(raw) - 8, 100, seed=0)  # the data module's split (val_size 100, seed 0)
    for index in val_index.tolist():
        raw[8 + index] = (raw[8 + index] + 1) % 10
    labels_file.write_bytes(bytes(raw))
    code, stderr = finish(start(tmp_path, tiny_config(wrong), "--ckpt_path", "last"))
    assert code == 0, stderr[-3000:]
    after = [row for row in metric_rows(tmp_path) if row.get("val/acc") and int(row["epoch"]) > 0]
    assert after and all(float(row["val/acc"]) < 0.2 for row in after)
    assert all(float(row["val/acc_best"]) == pytest.approx(before) for row in after)


@pytest.fixture(scope="module")
def sigterm_run(data_dir: Path, tmp_path_factory) -> dict:
    """A run told to stop (SIGTERM) in the middle of epoch 0: its folder, exit status, stderr and
    the step its last.ckpt holds."""
    workdir = tmp_path_factory.mktemp("sigterm")
    process = start(workdir, tiny_config(data_dir, seconds=0.4))
    log = workdir / "batches.log"
    wait_for(lambda: log.is_file() and log.read_text().count(" ") >= 3 * 3, process)  # 3 batches started
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    last = run_dir(workdir) / "checkpoints" / "last.ckpt"
    stopped_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"] if last.is_file() else None
    epochs_done = sorted(p.name for p in (run_dir(workdir) / "checkpoints").glob("epoch*"))
    return {"workdir": workdir, "code": code, "stderr": stderr, "stopped_at": stopped_at, "epochs": epochs_done}


@pytest.fixture(scope="module")
def sigterm_resumed(sigterm_run: dict, data_dir: Path) -> Path:
    """The SIGTERM run resumed with `--ckpt_path last` to the end."""
    workdir = sigterm_run["workdir"]
    assert sigterm_run["stopped_at"] is not None, sigterm_run["stderr"][-3000:]
    # The same config as the interrupted run (its slowed-down BatchRecorder too): a resume that changes
    # a callback that may change training is refused (tests/test_run_guards.py).
    code, stderr = finish(start(workdir, tiny_config(data_dir, seconds=0.4), "--ckpt_path", "last"))
    assert code == 0, stderr[-3000:]
    return workdir


@pytest.mark.end_to_end
def test_sigterm_saves_last_checkpoint_mid_epoch_and_exits_143(sigterm_run: dict) -> None:
    workdir, stopped_at = sigterm_run["workdir"], sigterm_run["stopped_at"]
    assert sigterm_run["code"] == 143, sigterm_run["stderr"][-3000:]
    assert stopped_at is not None and 3 <= stopped_at < BATCHES, "saved at the batch after the signal, in epoch 0"
    assert sigterm_run["stderr"].strip().splitlines()[-1] == (
        f"ablate: interrupted by SIGTERM: saved {(run_dir(workdir) / 'checkpoints' / 'last.ckpt').resolve()} "
        f"at step {stopped_at} (epoch 0); resume with --ckpt_path last"
    )
    assert sigterm_run["epochs"] == [], "no epoch ended, so no epoch checkpoint"


@pytest.mark.end_to_end
def test_resume_mid_epoch_continues_the_steps_and_the_epoch(
    sigterm_run: dict, sigterm_resumed: Path, reference: Path
) -> None:
    """What holds after a mid-epoch resume: the run continues at the step it stopped, finishes the
    interrupted epoch with the number of batches it had left and ends after exactly as many
    optimiser steps and validations as the uninterrupted run. The batches differ: next test."""
    workdir, stopped_at = sigterm_resumed, sigterm_run["stopped_at"]
    final = last_checkpoint(workdir)
    assert final["global_step"] == TOTAL_STEPS and final["epoch"] == EPOCHS - 1
    (expected,) = batch_log(reference)
    first, resumed = batch_log(workdir)
    assert first[:stopped_at] == expected[:stopped_at], "before the signal: the same run"
    assert [step for step, _ in resumed] == list(range(stopped_at, TOTAL_STEPS))
    rows = metric_rows(workdir)
    assert [int(r["epoch"]) for r in rows if r.get("val/acc")] == list(range(EPOCHS)), "one validation per epoch"


@pytest.mark.end_to_end
def test_resume_mid_epoch_trains_on_the_uninterrupted_batches(sigterm_resumed: Path, reference: Path) -> None:
    (expected,) = batch_log(reference)
    _, resumed = batch_log(sigterm_resumed)
    assert resumed == expected[resumed[0][0] :]
    assert_same_weights(last_checkpoint(sigterm_resumed), last_checkpoint(reference))


@pytest.mark.end_to_end
def test_sigusr1_saves_last_checkpoint_and_exits_138(data_dir: Path, tmp_path: Path) -> None:
    process = start(tmp_path, tiny_config(data_dir, seconds=0.4))
    log = tmp_path / "batches.log"
    wait_for(lambda: log.is_file() and log.read_text().count(" ") >= 2 * 3, process)  # 2 batches started
    process.send_signal(signal.SIGUSR1)
    code, stderr = finish(process)
    assert code == 138, stderr[-3000:]
    assert "ablate: interrupted by SIGUSR1: saved" in stderr.strip().splitlines()[-1]
    assert 2 <= last_checkpoint(tmp_path)["global_step"] < BATCHES


@pytest.mark.parametrize("auto_requeue", [True, False])
def test_sigusr1_is_left_to_lightning_under_slurm_auto_requeue(auto_requeue: bool) -> None:
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        plugins=[SLURMEnvironment(auto_requeue=auto_requeue)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    callback = CheckpointOnSignal()
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1)}
    callback.setup(trainer, None, "fit")
    try:
        assert signal.getsignal(signal.SIGTERM) == callback._on_signal
        assert (signal.getsignal(signal.SIGUSR1) == callback._on_signal) is not auto_requeue
    finally:
        callback.teardown(trainer, None, "fit")
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_ckpt_path_last_finds_the_newest_version_with_a_last_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "exp"
    for version, has_last in ((0, True), (2, True), (3, False), (10, True)):
        folder = root / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        if has_last:
            (folder / "last.ckpt").write_bytes(b"x")
    (root / "version_10" / "checkpoints" / "last.ckpt").unlink()
    (root / "version_10" / "checkpoints" / "epoch000.ckpt").write_bytes(b"x")

    def trainer(**logger_args) -> dict:
        args = {"save_dir": str(tmp_path / "runs"), "name": "exp", **logger_args}
        return {"logger": [{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": args}]}

    assert find_last_checkpoint(trainer()) == (root / "version_2" / "checkpoints" / "last.ckpt", 2)
    assert find_last_checkpoint(trainer(version=0)) == (root / "version_0" / "checkpoints" / "last.ckpt", None)
    assert find_last_checkpoint(trainer(name="other")) == (None, None)
    sweep_style = tmp_path / "sweep" / "checkpoints"  # ablate sweep: name "" and version "" (the run folder)
    sweep_style.mkdir(parents=True)
    (sweep_style / "last.ckpt").write_bytes(b"x")
    assert find_last_checkpoint(
        {
            "logger": [
                {
                    "class_path": "pytorch_lightning.loggers.CSVLogger",
                    "init_args": {"save_dir": str(tmp_path / "sweep"), "name": "", "version": ""},
                }
            ]
        }
    ) == (sweep_style / "last.ckpt", None)
    explicit = {
        "callbacks": [
            {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {"dirpath": str(sweep_style)}}
        ],
        **trainer(),
    }
    assert find_last_checkpoint(explicit) == (sweep_style / "last.ckpt", None)


@pytest.mark.parametrize("code", [143, 130, 138])
def test_the_sweep_resumes_a_run_stopped_by_a_signal_later(code: int, tmp_path: Path, monkeypatch) -> None:
    """`ablate fit` stopped by SIGTERM exits 143 (SIGUSR1: 138, Ctrl-C: 130): no result is recorded,
    so the next `ablate sweep` runs it again from its last.ckpt."""
    from experiments.studies import sweep
    from experiments.studies.study import load_study

    (run,) = sweep.plan(load_study("resnet_depth"), "smoke", 1, tmp_path, only=["resnet20"])
    monkeypatch.setattr(sweep, "command", lambda run, extra: [sys.executable, "-c", f"raise SystemExit({code})"])
    fingerprint = sweep.Fingerprint("0123456789ab", {"code": "test"}, "commit")
    assert sweep.execute(run, [], wandb=False, fingerprint=fingerprint) is None
    assert not (run.directory / "result.json").exists()
