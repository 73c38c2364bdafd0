"""Evaluating a run's checkpoint writes into that run's folder, beside its training history.

One tiny real-MNIST run is trained once per module and copied into each test's own folder.
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import pytest

from datamodules.idx import read_idx
from experiments.cli import main
from lightning_modules.run_folders import EVERY_ROW, MetricsHistoryWriter, checkpoint_run_folder
from tests.support import REPO, SHARED_DATA

RUN = Path("runs") / "quickstart" / "version_0"
LAST = RUN / "checkpoints" / "last.ckpt"
FALSE_WARNING = "Previous log files in this directory will be deleted"


def _args(*extra: str) -> list[str]:
    return [
        "--config",
        str(REPO / "experiments" / "quickstart.yaml"),
        f"--data.data_dir={SHARED_DATA}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        "--trainer.limit_predict_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu",
        *extra,
    ]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _versions() -> list[str]:
    return sorted(folder.name for folder in RUN.parent.iterdir())


def _run(capfd: pytest.CaptureFixture[str], *argv: str) -> str:
    """``ablate`` in this process; returns what it printed, with any warning it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = main(list(argv))
    out, err = capfd.readouterr()
    printed = out + err + "\n".join(str(warning.message) for warning in caught)
    assert status == 0, printed[-3000:]
    return printed


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A run folder after `ablate fit` (one epoch of 2 steps and one validation batch), and its warnings."""
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found under {SHARED_DATA}/MNIST/raw")
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        patch.chdir(root)
        warnings.simplefilter("always")
        assert main(["fit", *_args()]) == 0
    return root, "\n".join(str(warning.message) for warning in caught)


@pytest.fixture
def run(trained: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(trained[0] / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    return RUN


def test_a_new_fit_is_not_warned_about_its_own_folder(trained: tuple[Path, str]) -> None:
    root, warned = trained
    assert FALSE_WARNING not in warned
    assert _rows(root / RUN / "metrics.csv"), "the fit logged rows"


def test_test_of_a_checkpoint_writes_into_its_run(run: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = _rows(run / "metrics.csv")
    events = len(list((run / "tensorboard").glob("events.out.tfevents.*")))
    printed = _run(capfd, "test", *_args(f"--ckpt_path={LAST}"))

    assert _versions() == ["version_0"], "no new version folder"
    assert FALSE_WARNING not in printed
    assert f"run: {run}" in printed
    rows = _rows(run / "metrics.csv")
    assert [{key: row.get(key, "") for key in before[0]} for row in rows[: len(before)]] == before
    assert any(row.get("test/acc") for row in rows[len(before) :]), "test rows appended after the fit's"
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == events + 1
    assert (run / "per_class_accuracy.csv").is_file() and (run / "confusion_matrix.csv").is_file()
    recorded = json.loads((run / "test_results.json").read_text())
    assert 0.0 <= recorded["last.ckpt"]["metrics"]["test/acc"] <= 1.0
    assert (run / "config.yaml").is_file() and (run / "config_test.yaml").is_file()


def test_validate_adds_rows_to_its_run(run: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = _rows(run / "metrics.csv")
    printed = _run(capfd, "validate", *_args(f"--ckpt_path={LAST}"))

    assert _versions() == ["version_0"]
    assert FALSE_WARNING not in printed
    assert "exists and is not empty" not in printed, "the checkpoints folder holds the resumed run's own files"
    rows = _rows(run / "metrics.csv")
    assert len(rows) == len(before) + 1 and rows[-1].get("val/acc")


def test_predict_writes_true_labels_into_its_run(run: Path, capfd: pytest.CaptureFixture[str]) -> None:
    printed = _run(
        capfd,
        "predict",
        *_args(f"--ckpt_path={LAST}", "--config", str(REPO / "experiments" / "presets" / "predict_csv.yaml")),
    )

    assert _versions() == ["version_0"]
    assert FALSE_WARNING not in printed
    rows = _rows(run / "predictions.csv")
    labels = read_idx(SHARED_DATA / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")
    assert rows and [int(row["true_class_index"]) for row in rows] == [int(labels[int(row["index"])]) for row in rows]
    assert all(row["true_class"] == row["true_class_index"] for row in rows)  # MNIST's classes are "0".."9"


def test_resumed_fit_keeps_the_rows_before_its_checkpoint(run: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = _rows(run / "metrics.csv")
    printed = _run(capfd, "fit", *_args("--ckpt_path=last", "--trainer.max_epochs=2"))

    assert _versions() == ["version_0"]
    assert FALSE_WARNING not in printed
    assert "exists and is not empty" not in printed, "the checkpoints folder holds the resumed run's own files"
    rows = _rows(run / "metrics.csv")
    assert [{key: row.get(key, "") for key in before[0]} for row in rows[: len(before)]] == before
    assert {row["epoch"] for row in rows} - {""} == {"0", "1"}  # the learning-rate rows have no epoch


def test_a_checkpoint_outside_any_run_gets_a_new_folder(run: Path, capfd: pytest.CaptureFixture[str]) -> None:
    downloaded = Path("downloaded.ckpt")
    shutil.copy(LAST, downloaded)
    assert checkpoint_run_folder(downloaded) is None and checkpoint_run_folder(LAST) == RUN
    _run(capfd, "test", *_args(f"--ckpt_path={downloaded}"))

    assert _versions() == ["version_0", "version_1"]
    assert "downloaded.ckpt" in json.loads((RUN.parent / "version_1" / "test_results.json").read_text())
    assert not (RUN / "test_results.json").exists()


def test_metrics_writer_keeps_rows_and_widens_the_header(tmp_path: Path) -> None:
    """Lightning's own writer deletes metrics.csv (with a warning) in any folder holding a file."""
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,0,2.5\n0,5,2.0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        writer = MetricsHistoryWriter(str(tmp_path), EVERY_ROW)
    writer.log_metrics({"test/acc": 0.5}, step=5)
    writer.save()
    rows = _rows(tmp_path / "metrics.csv")
    assert [(row["step"], row["train/loss"], row["test/acc"]) for row in rows] == [
        ("0", "2.5", ""),
        ("5", "2.0", ""),
        ("5", "", "0.5"),
    ]

    MetricsHistoryWriter(str(tmp_path), resume_step=5)  # a run resumed at step 5 logs steps 5.. again
    assert [row["step"] for row in _rows(tmp_path / "metrics.csv")] == ["0"]
