"""The `ablate` command as a user runs it, through the CLI's `main(argv)` in this process; a closed output pipe
in a subprocess, where only a process shows it."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import pytest
import yaml

from experiments.cli import main
from tests.support import QUICK, REPO

QUICKSTART = str(REPO / "experiments" / "quickstart_fast.yaml")


def _data_args(data_dir: Path) -> list[str]:
    return [f"--data.data_dir={data_dir}", "--data.init_args.val_size=100", "--data.init_args.batch_size=50"]


def _run_dir(workdir: Path, name: str = "quickstart_fast") -> Path:
    versions = sorted((workdir / "runs" / name).glob("version_*"))
    assert versions, f"no run directory under {workdir / 'runs' / name}"
    return versions[-1]


def _ablate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``ablate <args>`` in this process; a usage error leaves ``main``
    as jsonargparse's ``SystemExit``, as it leaves the real ``ablate``."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fit_then_test_from_checkpoint(synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    # A constant rate: the one-cycle warm-up of a run this short is stretched to a crawl (the warm-up
    # floor), and this test needs weights that learned something.
    constant = ("--model.lr_scheduler=null", "--model.optimizer.init_args.lr=0.05")
    code, fit_out, err = _ablate(
        capsys, "fit", "--config", QUICKSTART, *QUICK, *_data_args(synthetic_mnist), *constant, "--test_after_fit=true"
    )
    assert code == 0, err[-3000:]
    assert "test accuracy:" in fit_out
    run = _run_dir(tmp_path)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["network"]["init_args"]["name"] == "inception_mnist"
    assert saved["model"]["optimizer"]["init_args"]["nesterov"] is True
    assert (run / "tensorboard").is_dir(), "TensorBoard shares the CSV logger's run folder"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(row.get("val/acc") for row in rows) and any(row.get("test/err") for row in rows)
    assert (run / "checkpoints" / "last.ckpt").is_file()

    code, test_out, err = _ablate(
        capsys,
        "test",
        "--config",
        QUICKSTART,
        *QUICK,
        *_data_args(synthetic_mnist),
        *constant,
        "--ckpt_path",
        str(run / "checkpoints" / "last.ckpt"),
    )
    assert code == 0, err[-3000:]
    # One epoch, so the best checkpoint is the last one: the same weights give the same numbers,
    # which a freshly initialised network would not.
    accuracy = float(test_out.split("test accuracy:")[1].split("%")[0])
    assert accuracy == float(fit_out.split("test accuracy:")[1].split("%")[0])
    assert accuracy > 20, "well above chance (10%) on the bar-per-class synthetic digits"


def test_print_config_is_complete_and_rerunnable(synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, printed, err = _ablate(capsys, "fit", "--config", QUICKSTART, *_data_args(synthetic_mnist), "--print_config")
    assert code == 0, err[-2000:]
    config = yaml.safe_load(printed)
    for key in ("trainer", "model", "data", "seed_everything"):
        assert key in config
    assert config["model"]["lr_scheduler"]["class_path"] == "torch.optim.lr_scheduler.OneCycleLR"
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    code, _, err = _ablate(
        capsys, "fit", "--config", str(saved), "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"
    )
    assert code == 0, err[-3000:]


def test_validate_and_predict(synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import torch

    from architectures import create_model

    monkeypatch.chdir(tmp_path)
    # Evaluating randomly initialised weights is refused (tests/test_run_guards.py); plain weights do.
    weights = tmp_path / "weights.pt"
    torch.save(create_model("inception_mnist", num_classes=10, in_chans=1).state_dict(), weights)
    for command in ("validate", "predict"):
        code, _, err = _ablate(
            capsys,
            command,
            "--config",
            QUICKSTART,
            *QUICK,
            *_data_args(synthetic_mnist),
            f"--fine_tune.weights={weights}",
        )
        assert code == 0, err[-3000:]


def test_network_class_path_with_linked_num_classes(synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _ablate(
        capsys,
        "fit",
        "--config",
        QUICKSTART,
        *_data_args(synthetic_mnist),
        "--trainer.fast_dev_run=true",
        "--trainer.enable_progress_bar=false",
        '--model.network={"class_path": "architectures.lenet.LeNet5", "init_args": {"pooling": "max"}}',
    )
    assert code == 0, err[-3000:]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (['--model.network={"class_path": "architectures.NoSuchNet"}'], "NoSuchNet"),
        (["--model.network.init_args.name=resnet2000"], "unknown architecture 'resnet2000'"),
        (["--model.optimizer.init_args.lr=-0.1"], "Invalid learning rate: -0.1"),
        (["--data.init_args.batch_size=0"], "batch_size must be positive"),
    ],
    ids=["wrong-class-path", "unknown-registry-name", "negative-lr", "zero-batch"],
)
def test_bad_config_fails_with_a_message(
    args: list[str], message: str, synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _ablate(capsys, "fit", "--config", QUICKSTART, *QUICK, *_data_args(synthetic_mnist), *args)
    assert code != 0
    assert message in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))


def test_missing_dataset_fails_with_the_expected_layout(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _ablate(
        capsys,
        "fit",
        "--config",
        QUICKSTART,
        *QUICK,
        f"--data.data_dir={tmp_path / 'absent'}",
        "--data.init_args.download=false",
    )
    assert code == 2  # a run that could not start
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("ablate: error: DataNotFoundError: MNIST not found")
    assert "train-images-idx3-ubyte" in last_line


@pytest.mark.end_to_end
def test_output_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    """`ablate zoo | head -1`: once the reader has gone, no traceback and no "Exception ignored"."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        result = subprocess.run(
            [sys.executable, "-m", "experiments.cli", "zoo", "--no-macs"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


def test_default_progress_bar_updates_twice_a_second(synthetic_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    """Lightning's rich bar reads the metrics after every batch and redraws 100 times a second."""
    from experiments.cli import run_lightning_cli
    from lightning_modules.progress import ThrottledRichProgressBar

    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(["--config", QUICKSTART, *_data_args(synthetic_mnist)], run=False)
    (bar,) = [callback for callback in cli.trainer.callbacks if isinstance(callback, ThrottledRichProgressBar)]
    assert bar.refresh_rate == 2


def test_throttled_bar_skips_updates_within_its_interval_but_never_the_epochs_last(monkeypatch) -> None:
    from pytorch_lightning.callbacks import RichProgressBar

    from lightning_modules.progress import ThrottledRichProgressBar

    updated = []
    monkeypatch.setattr(RichProgressBar, "on_train_batch_end", lambda self, *args: updated.append(args[-1]))
    monkeypatch.setattr(ThrottledRichProgressBar, "total_train_batches", 6)
    clock = iter([0.0, 0.1, 0.2, 0.6, 0.7, 0.8])  # seconds at the end of batches 0..5
    monkeypatch.setattr("lightning_modules.progress.time.monotonic", lambda: next(clock))
    bar = ThrottledRichProgressBar(refresh_rate=2)
    for batch_idx in range(6):
        bar.on_train_batch_end(None, None, None, None, batch_idx)
    assert updated == [0, 3, 5], "the first batch, the first after 0.5 s, and the epoch's last"


def test_a_finished_run_leaves_nothing_alive_in_the_process(synthetic_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    """jsonargparse keeps its last sub-parser in a ContextVar, and through it the whole CLI (trainer,
    model, data tensors): a second run in one process (a notebook, `ablate bench`) held both."""
    import gc
    import weakref

    from experiments.cli import run_lightning_cli

    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(
        [
            "--config",
            QUICKSTART,
            *QUICK,
            *_data_args(synthetic_mnist),
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    alive = [weakref.ref(thing) for thing in (cli, cli.trainer, cli.model, cli.datamodule, cli.datamodule.train_set)]
    del cli
    gc.collect()
    assert [ref() for ref in alive] == [None] * len(alive)


def test_help_lists_every_subcommand_and_tool(monkeypatch, capsys) -> None:
    """`ablate --help` names Lightning's four subcommands and every experiment tool, one line each."""
    from experiments.cli import TOOL_SUMMARIES, TOOLS, main

    assert TOOL_SUMMARIES.keys() == TOOLS.keys(), "a tool without a line in --help is a tool nobody finds"
    monkeypatch.setattr(sys, "argv", ["ablate"])
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.MULTILINE), command
    for tool, summary in TOOL_SUMMARIES.items():
        assert re.search(rf"^  {tool}\s+{re.escape(summary)}$", out, re.MULTILINE), tool
