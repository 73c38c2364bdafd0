"""A run runs what its config says, one process per run folder, and runs that cannot mean anything
are refused (docs/reliability.md, "A run runs what its config says"): lightning_modules/run_guards.py and run_lock.py.

The runs are `experiments.cli.main` in this process (LeNet-5 on 300 synthetic digits, 3 batches
an epoch); the lock is held by another process, or by a second open file in this one (``flock``
treats two opens of one file as two holders).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from experiments.cli import main
from lightning_modules import run_lock
from lightning_modules.errors import ConfigError
from lightning_modules.run_guards import config_changes
from lightning_modules.run_lock import lock_run_folder
from tests.support import REPO, write_synthetic_mnist


def tiny_config(data_dir: Path, **trainer: object) -> dict:
    """One epoch of three batches that logs to runs/tiny/version_N (the defaults' callbacks)."""
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
            "logger": [
                {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "tiny"}}
            ],
            **trainer,
        },
        "model": {
            "network": {"class_path": "architectures.ZooModel", "init_args": {"name": "lenet5"}},
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}},
        },
        "data": {
            "class_path": "datamodules.MNISTDataModule",
            "init_args": {"data_dir": str(data_dir), "batch_size": 64, "val_size": 100, "download": False},
        },
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("mnist"), n_train=300, n_test=50)


@pytest.fixture
def workdir(tmp_path: Path, data_dir: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the runs go to ./runs
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(data_dir)))
    return tmp_path


def ablate(capsys, *args: str) -> tuple[int, str]:
    """`ablate ARGS` in this process: the exit status and the last line on stderr."""
    capsys.readouterr()
    code = main(list(args))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines[-1] if lines else ""


def fit(capsys, *args: str) -> tuple[int, str]:
    return ablate(capsys, "fit", "--config", "tiny.yaml", *args)


# ----- resuming runs what the config says --------------------------------------------------------------


def test_a_resume_that_changes_a_setting_is_refused_and_the_saved_config_kept(workdir: Path, capsys) -> None:
    code, last = fit(capsys)
    assert code == 0, last
    saved = workdir / "runs" / "tiny" / "version_0" / "config.yaml"
    before = saved.read_bytes()
    code, last = fit(capsys, "--ckpt_path", "last", "--model.optimizer.init_args.lr=0.5")
    assert code == 2
    assert last.startswith("ablate: error: ConfigError: resuming "), last
    assert "model.optimizer.init_args.lr: 0.05 -> 0.5" in last and "resume without changing them" in last
    assert saved.read_bytes() == before, "config.yaml still says what ran"
    assert sorted(path.name for path in (workdir / "runs" / "tiny").iterdir()) == ["version_0"]

    # Where and how it runs may change, and so may its length when no schedule is restored.
    code, last = fit(capsys, "--ckpt_path", "last", "--trainer.max_epochs=2", "--data.init_args.num_workers=0")
    assert code == 0, last
    assert yaml.safe_load(saved.read_text())["trainer"]["max_epochs"] == 2, "the saved config is the one that ran"
    assert torch.load(saved.parent / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_a_run_saved_before_settings_left_the_model_resumes(workdir: Path, capsys) -> None:
    """Its config.yaml names model.ema_decay ... model.channels_last; compared where they are now, nothing
    changed, and a setting that did change is still refused."""
    code, last = fit(capsys)
    assert code == 0, last
    saved = workdir / "runs" / "tiny" / "version_0" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    for group in ("ema", "fine_tune", "test_time", "channels_last", "compile"):
        config.pop(group, None)
    config["model"].update(
        ema_decay=0.0, ema_eval=False, weights=None, skip_mismatched_head=True, freeze=None, freeze_bn_stats=True,
        head_lr_multiplier=1.0, tta_flip=True, confusion_matrix=True, channels_last=False, compile=False,
    )  # fmt: skip
    saved.write_text(yaml.safe_dump(config))
    code, last = fit(capsys, "--ckpt_path", "last", "--trainer.max_epochs=2")
    assert code == 2 and "test_time.flip: true -> false" in last, last
    code, last = fit(capsys, "--ckpt_path", "last", "--trainer.max_epochs=2", "--test_time.flip=true")
    assert code == 0, last


def test_a_setting_the_code_gained_since_the_run_started_is_compared_with_its_default(workdir: Path, capsys) -> None:
    """A run saved before the MNIST data module had `augment` trained without augmentation: resuming
    with it set would change the run without a word; resuming with its default (what ran) goes on."""
    code, last = fit(capsys)
    assert code == 0, last
    saved = workdir / "runs" / "tiny" / "version_0" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    del config["data"]["init_args"]["augment"]
    saved.write_text(yaml.safe_dump(config))
    code, last = fit(capsys, "--ckpt_path", "last", "--trainer.max_epochs=2", "--data.init_args.augment=shift")
    assert code == 2 and "data.init_args.augment: none -> shift" in last, last
    code, last = fit(capsys, "--ckpt_path", "last", "--trainer.max_epochs=2")
    assert code == 0, last


def test_a_model_setting_the_checkpoint_holds_is_never_replaced_silently(workdir: Path, capsys) -> None:
    """Lightning reads a checkpoint's hyper-parameters over the config's: a resume asked to change one
    is refused (it would have trained on with the old value), an evaluation says which value it used."""
    code, last = fit(capsys)
    assert code == 0, last
    code, last = fit(capsys, "--ckpt_path", "last", "--trainer.max_epochs=2", "--model.label_smoothing=0.1")
    assert code == 2, last
    assert "model.label_smoothing: 0.1 given, 0.0 in the checkpoint" in last and "resume without changing" in last
    checkpoint = workdir / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    code = main(["test", "--config", "tiny.yaml", "--ckpt_path", str(checkpoint), "--model.label_smoothing=0.1"])
    assert code == 0
    assert (
        "ablate: test uses the checkpoint's model settings, not the config's: "
        "model.label_smoothing: 0.1 given, 0.0 in the checkpoint" in capsys.readouterr().err
    )


@pytest.mark.parametrize("damage", [b"trainer: [unclosed\n", b"\xff\xfe\x00", b"- a list\n", b""])
def test_a_resume_whose_saved_config_cannot_be_read_is_refused(damage: bytes, workdir: Path, capsys) -> None:
    """Nothing to compare with is no licence to change the run: the user restores the file or moves it aside."""
    code, last = fit(capsys)
    assert code == 0, last
    saved = workdir / "runs" / "tiny" / "version_0" / "config.yaml"
    saved.write_bytes(damage)
    code, last = fit(capsys, "--ckpt_path", "last", "--trainer.max_epochs=2", "--model.optimizer.init_args.lr=0.5")
    assert code == 2 and "cannot check this resume against the run's saved config" in last, last
    assert saved.read_bytes() == damage, "refused before anything is written"
    saved.rename(saved.with_name("config.yaml.damaged"))
    code, last = fit(capsys, "--ckpt_path", "last", "--trainer.max_epochs=2")
    assert code == 0, last


def test_config_changes_name_what_may_not_change_on_resume() -> None:
    def config(lr=0.1, epochs=10, workers=2, schedule=None, callbacks=()) -> dict:
        return {
            "seed_everything": 0,
            "trainer": {"max_epochs": epochs, "devices": 1, "callbacks": list(callbacks)},
            "model": {
                "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": lr}},
                "lr_scheduler": schedule,
            },
            "data": {"class_path": "datamodules.MNISTDataModule", "init_args": {"num_workers": workers}},
        }

    assert config_changes(config(), config(workers=8)) == {}
    assert config_changes(config(), config(lr=0.5)) == {"model.optimizer.init_args.lr": (0.1, 0.5)}
    assert config_changes(config(), config(epochs=20)) == {}, "no schedule: the run may be extended"
    cosine = {"class_path": "lightning_modules.schedules.WarmupCosine"}
    assert config_changes(config(schedule=cosine), config(epochs=20, schedule=cosine)) == {
        "trainer.max_epochs": (10, 20)
    }, "a restored schedule keeps the old length"
    swa = {"class_path": "pytorch_lightning.callbacks.StochasticWeightAveraging", "init_args": {"swa_lrs": 0.01}}
    assert list(config_changes(config(), config(callbacks=[swa]))) == [
        "trainer.callbacks.pytorch_lightning.callbacks.StochasticWeightAveraging"
    ]
    newer = config()
    newer["model"]["label_smoothing"] = 0.0  # a parameter the code gained since the run started
    assert config_changes(config(), newer) == {}
    # Runs saved before the resume callbacks had files of their own name them by their old class paths.
    old = [{"class_path": f"lightning_modules.reliability.{name}"} for name in ("ExactResume", "CheckpointOnSignal")]
    new = [
        {"class_path": "lightning_modules.exact_resume.ExactResume"},
        {"class_path": "lightning_modules.preemption.CheckpointOnSignal"},
    ]
    assert config_changes(config(callbacks=old), config(callbacks=new)) == {}, "the old paths still resolve"


# ----- one process per run folder --------------------------------------------------------------------


def _hold(folder: Path):
    """The lock as another process would hold it: a separate open file with its own flock."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / run_lock.LOCK_FILE, "a+")  # noqa: SIM115
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    return handle


def test_a_second_process_in_a_run_folder_is_refused(workdir: Path, data_dir: Path, capsys) -> None:
    config = tiny_config(data_dir)
    config["trainer"]["logger"][0]["init_args"]["version"] = 0  # test and validate too write into it
    (workdir / "fixed.yaml").write_text(yaml.safe_dump(config))
    code, last = ablate(capsys, "fit", "--config", "fixed.yaml")
    assert code == 0, last
    run = workdir / "runs" / "tiny" / "version_0"
    metrics = (run / "metrics.csv").read_bytes()
    holder = _hold(run)
    try:
        for command in ("fit", "test"):
            code, last = ablate(capsys, command, "--config", "fixed.yaml", "--ckpt_path", "last")
            assert code == 2
            assert last == (
                f"ablate: error: ConfigError: run folder {run.resolve()} is in use by another ablate "
                f"process (pid {os.getpid()}); wait for it or choose another folder"
            ), last
    finally:
        holder.close()
    assert (run / "metrics.csv").read_bytes() == metrics, "the refused processes wrote nothing"
    assert run_lock.held() == []


def test_new_runs_that_counted_the_same_version_take_the_next_one(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(tmp_path / "runs", name="exp")
    assert logger.version == 0  # counted before the other run created its folder
    holder = _hold(tmp_path / "runs" / "exp" / "version_0")
    try:
        trainer = SimpleNamespace(global_rank=0, loggers=[logger])
        config = {
            "logger": [
                {
                    "class_path": "pytorch_lightning.loggers.CSVLogger",
                    "init_args": {"save_dir": str(tmp_path / "runs"), "name": "exp"},
                }
            ]
        }
        folder = lock_run_folder(trainer, config)
        assert folder == (tmp_path / "runs" / "exp" / "version_1").resolve() and logger.version == 1
        run_lock.release(folder)
        assert not folder.exists(), "a run that wrote nothing leaves no folder"
        with pytest.raises(ConfigError, match="is in use by another ablate process"):
            lock_run_folder(
                trainer,
                {
                    **config,
                    "logger": [
                        {**config["logger"][0], "init_args": {**config["logger"][0]["init_args"], "version": 0}}
                    ],
                },
            )
        assert lock_run_folder(SimpleNamespace(global_rank=1, loggers=[logger]), config) is None, "rank 0 only"
    finally:
        holder.close()


@pytest.mark.end_to_end
def test_a_running_fit_holds_its_folder_and_a_kill_frees_it(workdir: Path, data_dir: Path, capsys) -> None:
    """Two real processes: a slow fit into a fixed folder, and a second fit of the same folder."""
    config = tiny_config(data_dir, max_epochs=3, limit_train_batches=50)
    config["trainer"]["logger"][0]["init_args"]["version"] = "fixed"
    config["trainer"]["callbacks+"] = [
        {"class_path": "tests.fit_processes.BatchRecorder", "init_args": {"seconds": 0.3}}
    ]
    (workdir / "slow.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "experiments.cli", "fit", "--config", "slow.yaml"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while not (workdir / "batches.log").is_file():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline
            time.sleep(0.1)
        code, last = ablate(capsys, "fit", "--config", "slow.yaml")
        assert code == 2
        assert f"is in use by another ablate process (pid {first.pid})" in last, last
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    folder = workdir / "runs" / "tiny" / "fixed"
    assert run_lock.acquire(folder), "the killed process's lock went with it"
    run_lock.release(folder)


# ----- runs that cannot mean anything ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--trainer.max_epochs=-1", "--trainer.max_steps=-1"], "ConfigError: this run has no end: "),
        (
            ["--trainer.max_epochs=0", "--test_after_fit=true"],
            "ConfigError: --test_after_fit with trainer.max_epochs=0",
        ),
        (
            ["--trainer.limit_train_batches=0", "--test_after_fit=true"],
            "ConfigError: --test_after_fit with trainer.limit_train_batches=0 trains nothing",
        ),
    ],
    ids=["no-end", "zero-epochs-tested", "zero-batches-tested"],
)
def test_runs_that_cannot_mean_anything_are_refused(args: list[str], expect: str, workdir: Path, capsys) -> None:
    code, last = fit(capsys, *args)
    assert code == 2 and expect in last, last
    assert not list(workdir.rglob("*.ckpt"))


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_evaluating_without_trained_weights_is_refused(command: str, workdir: Path, capsys) -> None:
    code, last = ablate(capsys, command, "--config", "tiny.yaml")
    assert code == 2
    assert last.startswith(f"ablate: error: ConfigError: {command} needs trained weights: give --ckpt_path"), last


def test_a_checkpoint_of_non_finite_weights_is_refused(workdir: Path, capsys) -> None:
    code, last = fit(capsys, "--trainer.limit_train_batches=1")
    assert code == 0, last
    checkpoint = workdir / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    for value in state["state_dict"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    nan = workdir / "nan.ckpt"
    torch.save(state, nan)
    code, last = ablate(capsys, "test", "--config", "tiny.yaml", f"--ckpt_path={nan}")
    assert code == 2
    assert last.startswith(f"ablate: error: CheckpointError: {nan} holds non-finite weights ("), last
    assert "it is not a trained model" in last


def test_resuming_without_a_last_checkpoint_writer_is_refused_and_a_fit_warned(workdir: Path, capsys) -> None:
    own = {"trainer": {"callbacks": [{"class_path": "pytorch_lightning.callbacks.LearningRateMonitor"}]}}
    (workdir / "own.yaml").write_text(yaml.safe_dump(own))
    code, last = fit(capsys, "--config", "own.yaml", "--ckpt_path", "last")
    assert code == 2
    assert "--ckpt_path last resumes from the run's last.ckpt, but trainer.callbacks configures nothing" in last
    assert "write `callbacks+:` to add to them" in last
    capsys.readouterr()
    assert main(["fit", "--config", "tiny.yaml", "--config", "own.yaml", "--trainer.limit_train_batches=1"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ablate: warning:")]
    assert warnings == [warnings[0]] and "no last.ckpt will be saved" in warnings[0]
