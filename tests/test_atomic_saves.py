"""Saves are whole or absent on any file system, a failed save keeps the previous file, and a diverged
run never overwrites its last good checkpoint (docs/reliability.md, "Saves" and "Divergence")."""

from __future__ import annotations

import builtins
import errno
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning.callbacks import Callback

import lightning_modules.files as files
from experiments import cli
from lightning_modules.checkpoint_io import AtomicCheckpointIO
from lightning_modules.checkpoint_loading import load_checkpoint
from lightning_modules.config_parser import ConfigErrorParser
from lightning_modules.divergence import DivergenceError
from lightning_modules.errors import CheckpointError
from lightning_modules.run_folders import MetricsHistoryWriter, _newest_last
from tests.support import QUICK, write_synthetic_mnist

CHECKPOINTS = Path("runs/default/version_0/checkpoints")


def _checkpoint(size: int = 50_000, epoch: int = 0, step: int = 2) -> dict:
    return {"state_dict": {"w": torch.linspace(0, 1, size // 4)}, "epoch": epoch, "global_step": step}


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if files.is_temporary(path.name))


class _FillsUp:
    """A file that takes ``room`` bytes and then fails as a full disk does (the bytes stay written)."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room, self.written = handle, room, 0

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if self.written + len(data) > self.room:
            self.handle.write(data[: self.room - self.written])
            self.handle.flush()
            _FillsUp.partial = Path(self.handle.name).stat().st_size  # what a kill would have left
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self.handle, name)


# ----- a save that fails keeps the previous file ------------------------------------------------------


@pytest.mark.parametrize("where", ["write", "fsync", "rename"])
def test_a_checkpoint_save_that_fails_keeps_the_previous_file(where: str, tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(epoch=3, step=1200), target)
    before = target.read_bytes()

    if where == "write":  # the disk fills half-way through the new checkpoint
        monkeypatch.setattr(files, "open", lambda *a, **k: _FillsUp(builtins.open(*a, **k), 10_000), raising=False)
        cause = "No space left on device"
    elif where == "fsync":

        def fails(descriptor: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(files.os, "fsync", fails)
        cause = "Input/output error"
    else:

        def refused(source, destination) -> None:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(files.os, "replace", refused)
        cause = "Permission denied"
    with pytest.raises(CheckpointError) as raised:
        AtomicCheckpointIO().save_checkpoint(_checkpoint(size=400_000, epoch=4, step=1500), target)
    monkeypatch.undo()

    assert str(raised.value) == f"could not save {target}: {cause}; the previous last.ckpt is intact"
    if where == "write":
        assert _FillsUp.partial == 10_000, "the failure came half-way through the write"
    assert target.read_bytes() == before
    assert load_checkpoint(target)["global_step"] == 1200
    assert _leftovers(target.parent) == [], "no temporary file left behind"


def test_a_first_save_that_fails_says_nothing_was_written(tmp_path: Path) -> None:
    target = tmp_path / "a_file" / "last.ckpt"
    (tmp_path / "a_file").write_text("a file where the folder should be")
    with pytest.raises(CheckpointError) as raised:
        AtomicCheckpointIO().save_checkpoint(_checkpoint(), target)
    assert str(raised.value) == f"could not save {target}: {target.parent} is a file, not a folder; nothing was written"
    with pytest.raises(CheckpointError) as raised:
        AtomicCheckpointIO().save_checkpoint(_checkpoint(), target.parent / "checkpoints" / "last.ckpt")
    assert str(raised.value).endswith("a_file/checkpoints/last.ckpt: Not a directory; nothing was written")


def test_a_killed_save_leaves_a_temporary_that_is_never_a_checkpoint_and_is_removed(tmp_path: Path) -> None:
    """A SIGKILL during a save leaves the temporary file; it is hidden, ends in .tmp (so `--ckpt_path
    last` and the run-folder checks never take it for a checkpoint) and the next save removes it."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = folder / f".last.ckpt.{dead.pid}.0123abcd.tmp"
    orphan.write_bytes(b"half a checkpoint")
    live = folder / f".last.ckpt.{os.getppid()}.89abcdef.tmp"  # a writer that still runs
    live.write_bytes(b"being written")
    assert files.is_temporary(orphan.name) and files.is_temporary(live.name)
    assert _newest_last(folder) is None

    AtomicCheckpointIO().save_checkpoint(_checkpoint(), folder / "last.ckpt")
    assert not orphan.exists(), "a dead writer's temporary file is removed"
    assert live.exists(), "a live writer's temporary file is left alone"
    assert _newest_last(folder) == folder / "last.ckpt"


def test_records_and_configs_are_written_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    parser = ConfigErrorParser()
    parser.add_argument("--lr", type=float)
    config = tmp_path / "config.yaml"
    parser.save(parser.parse_args(["--lr=0.1"]), config, multifile=False, overwrite=True)

    def full(descriptor: int) -> None:  # jsonargparse wrote the new config; the disk refuses it at the sync
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(files.SaveError, match="config.yaml: No space left on device; the previous config.yaml is"):
        parser.save(parser.parse_args(["--lr=0.2"]), config, multifile=False, overwrite=True)
    monkeypatch.undo()
    assert config.read_text() == "lr: 0.1\n"
    assert _leftovers(tmp_path) == []


def test_hparams_yaml_is_written_whole_and_a_damaged_one_is_kept_aside(tmp_path: Path, monkeypatch, capsys) -> None:
    """Lightning rewrites hparams.yaml in place, and a resume or evaluation of the run reads it back."""
    writer = MetricsHistoryWriter(str(tmp_path))
    writer.log_hparams({"lr": 0.1})
    hparams = tmp_path / "hparams.yaml"
    assert yaml.safe_load(hparams.read_text()) == {"lr": 0.1}

    def full(descriptor: int) -> None:  # the new file is written; the disk refuses it at the sync
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(files.SaveError, match="hparams.yaml: No space left on device"):
        writer.log_hparams({"lr": 0.2})
    monkeypatch.undo()
    assert yaml.safe_load(hparams.read_text()) == {"lr": 0.1} and _leftovers(tmp_path) == []

    hparams.write_text("lr: [0.1\n")  # half a file, as a kill inside an in-place write leaves it
    capsys.readouterr()
    resumed = MetricsHistoryWriter(str(tmp_path))
    assert resumed.hparams == {}
    assert (tmp_path / "hparams.yaml.unreadable").read_text() == "lr: [0.1\n"
    assert "hparams.yaml could not be read; kept as hparams.yaml.unreadable" in capsys.readouterr().err
    resumed.log_hparams({"lr": 0.1})
    assert yaml.safe_load(hparams.read_text()) == {"lr": 0.1}


def test_predictions_of_a_failed_predict_leave_no_partial_csv(tmp_path: Path) -> None:
    from lightning_modules.prediction_writer import CSVPredictionWriter

    target = tmp_path / "predictions.csv"
    target.write_text("index,file,class_index,class,probability\n0,,3,3,0.9\n")
    writer = CSVPredictionWriter(str(target))
    writer._file = files.AtomicFile(target, "w", newline="")
    writer._file.handle.write("index,file,class_index,class,probability\n")
    writer.on_exception(None, None, RuntimeError("a batch failed"))
    assert target.read_text().endswith("0,,3,3,0.9\n"), "the previous predictions stand"
    assert _leftovers(tmp_path) == []


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(epoch=3, step=1200), folder / "last.ckpt")
    before = (folder / "last.ckpt").read_bytes()
    diverged = _checkpoint(epoch=4, step=1500)
    diverged["state_dict"]["w"][7] = float("nan")
    with pytest.raises(DivergenceError) as raised:
        AtomicCheckpointIO().save_checkpoint(diverged, folder / "last.ckpt")
    assert str(raised.value) == (
        f"refusing to save {folder / 'last.ckpt'}: weight w holds NaN or infinity (the run diverged); the last good "
        f"checkpoint is {folder / 'last.ckpt'} (epoch 3, step 1200); start a new run from its weights "
        "with --fine_tune.weights <that file> and a lower learning rate"
    )
    assert (folder / "last.ckpt").read_bytes() == before
    AtomicCheckpointIO(refuse_non_finite=False).save_checkpoint(diverged, folder / "nan.ckpt")  # check_finite=False


# ----- real file systems: a full one, and one other than $TMPDIR's --------------------------------------


@pytest.fixture
def mount_tmpfs(tmp_path: Path):
    """``mount_tmpfs(folder, size)`` mounts a tmpfs of ``size`` there (root only); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, mount_tmpfs) -> None:
    folder = mount_tmpfs(tmp_path / "small", "300k") / "checkpoints"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(size=100_000, epoch=3, step=1200), folder / "last.ckpt")
    before = (folder / "last.ckpt").read_bytes()
    with pytest.raises(CheckpointError, match=r"last.ckpt: No space left on device; the previous last.ckpt is intact$"):
        AtomicCheckpointIO().save_checkpoint(_checkpoint(size=250_000, epoch=4, step=1500), folder / "last.ckpt")
    assert (folder / "last.ckpt").read_bytes() == before
    assert _leftovers(folder) == []


def _fit(tmp_path: Path, monkeypatch, *extra: str) -> int:
    """``ablate fit`` in this process: LeNet-5 on synthetic MNIST, 2 batches an epoch, runs in ./runs."""
    data = write_synthetic_mnist(tmp_path / "data", n_train=300, n_test=50)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABLATE_CACHE_DIR", str(tmp_path / "cache"))
    return cli.main(
        [
            "fit",
            "--model.network=architectures.ZooModel",
            "--model.network.init_args.name=lenet5",
            "--data=datamodules.MNISTDataModule",
            f"--data.data_dir={data}",
            "--data.download=false",
            "--data.batch_size=32",
            "--data.val_size=64",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            *QUICK,
            *extra,
        ]
    )


def _last_error(capsys) -> str:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()][-1]


def test_a_run_whose_disk_fills_stops_with_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch, capsys, mount_tmpfs
) -> None:
    # Room for the logs and epoch 0's two checkpoints (~530 kB each), not for a third.
    mount_tmpfs(tmp_path / "runs", "1300k")
    status = _fit(tmp_path, monkeypatch, "--trainer.max_epochs=2")
    last = _last_error(capsys)
    assert status == cli.EXIT_SETUP_ERROR, last  # a full disk says nothing about the arm
    assert last.startswith(f"ablate: error: CheckpointError: could not save {CHECKPOINTS}/"), last
    assert last.endswith(".ckpt: No space left on device; the previous last.ckpt is intact") or last.endswith(
        ".ckpt: No space left on device; nothing was written"
    ), last
    checkpoint = load_checkpoint(tmp_path / CHECKPOINTS / "last.ckpt")
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 2)
    assert _leftovers(tmp_path / CHECKPOINTS) == []


def test_runs_on_another_file_system_than_tmpdir_save_in_place(tmp_path: Path, monkeypatch, capsys) -> None:
    """Lightning's own save writes to $TMPDIR and copies across file systems; ours renames in the folder."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system other than the test folder's")
    other = Path(tempfile.mkdtemp(dir=shm, prefix="ablate-tmpdir-"))
    monkeypatch.setenv("TMPDIR", str(other))
    monkeypatch.setattr(tempfile, "tempdir", str(other))
    renames: list[tuple[Path, Path, list[str]]] = []
    replace = os.replace

    def spy(source, destination) -> None:
        renames.append((Path(source), Path(destination), os.listdir(other)))
        replace(source, destination)

    monkeypatch.setattr(files.os, "replace", spy)
    try:
        assert _fit(tmp_path, monkeypatch) == 0, capsys.readouterr().err[-3000:]
        assert os.listdir(other) == [], "nothing was written to $TMPDIR"
    finally:
        for leftover in other.iterdir():
            leftover.unlink()
        other.rmdir()
    saved = [(source, destination, seen) for source, destination, seen in renames if destination.suffix == ".ckpt"]
    assert {destination.name for _, destination, _ in saved} >= {"last.ckpt"}
    for source, destination, seen in saved:
        assert source.parent == destination.parent and seen == [], "renamed within its folder, nothing in $TMPDIR"
    assert load_checkpoint(tmp_path / CHECKPOINTS / "last.ckpt")["global_step"] == 2


# ----- divergence -----------------------------------------------------------------------------------------


class PoisonInSecondEpoch(Callback):
    """Epoch 1 diverges: before its validation the output layer's biases become +-3e38 (finite, but
    the log-probabilities overflow, so val/loss is not), or before its training its weights become NaN
    (the training loss is NaN). Keeps the checkpoints' bytes as they were then."""

    kept: dict[str, bytes] = {}

    def __init__(self, when: str = "validation") -> None:
        self.when = when

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.when == "validation" and not trainer.sanity_checking and trainer.current_epoch == 1:
            self._poison(trainer, pl_module, "bias", 3e38)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.when == "training" and trainer.current_epoch == 1:
            self._poison(trainer, pl_module, "weight", float("nan"))

    @staticmethod
    def _poison(trainer, pl_module, name: str, value: float) -> None:
        folder = Path(trainer.checkpoint_callback.dirpath)
        PoisonInSecondEpoch.kept = {path.name: path.read_bytes() for path in folder.glob("*.ckpt")}
        output = [module for module in pl_module.modules() if isinstance(module, torch.nn.Linear)][-1]
        with torch.no_grad():
            getattr(output, name).fill_(value)[::2] *= -1  # classes 6e38 apart: exp() and the sums overflow


@pytest.mark.parametrize("when", ["validation", "training"])
def test_a_diverged_run_keeps_its_last_good_checkpoint_and_names_it(
    when: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    status = _fit(
        tmp_path,
        monkeypatch,
        "--trainer.max_epochs=3",
        f"--trainer.callbacks+={__name__}.PoisonInSecondEpoch",
        f"--trainer.callbacks.when={when}",
    )
    last = _last_error(capsys)
    assert status == cli.EXIT_TRAINING_FAILED, last
    good = f"the last good checkpoint is {CHECKPOINTS / 'last.ckpt'} (epoch 0, step 2); start a new run from its"
    if when == "validation":
        assert re.match(
            r"ablate: error: DivergenceError: val/loss is (nan|inf) at epoch 1 \(global step 4\): "
            "the run diverged and these weights were not saved; ",
            last,
        ), last
        assert last.endswith(good + " weights with --fine_tune.weights <that file> and a lower learning rate"), last
    else:
        assert last.startswith("ablate: error: NonFiniteLossError: non-finite training loss (nan) at global step 2"), (
            last
        )
        assert f"Nothing of this step was saved; {good}" in last, last
    kept = PoisonInSecondEpoch.kept
    assert "last.ckpt" in kept and len(kept) == 2, "epoch 0 saved last.ckpt and the best checkpoint"
    now = {path.name: path.read_bytes() for path in (tmp_path / CHECKPOINTS).glob("*.ckpt")}
    assert now == kept, "the diverged weights were saved as neither last nor best, and nothing was deleted"


# ----- every ablate trainer saves through the plugin ------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--trainer.strategy=ddp", "--trainer.devices=2"]], ids=["single", "ddp"])
def test_ablate_trainers_save_through_the_atomic_plugin(extra: list[str], synthetic_mnist: Path) -> None:
    from experiments.cli import run_lightning_cli

    args = [
        "--model.network=architectures.ZooModel",
        "--model.network.init_args.name=lenet5",
        "--data=datamodules.MNISTDataModule",
        f"--data.data_dir={synthetic_mnist}",
        "--data.download=false",
        "--trainer.accelerator=cpu",
        *extra,
    ]
    assert isinstance(run_lightning_cli(args, run=False).trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    off = run_lightning_cli([*args, "--model.check_finite=false"], run=False).trainer.strategy.checkpoint_io
    assert off.refuse_non_finite is False
    own = run_lightning_cli([*args, "--trainer.plugins=lightning_fabric.plugins.TorchCheckpointIO"], run=False)
    assert type(own.trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO", "the user's own is kept"
