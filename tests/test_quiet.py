"""What a run prints: its folder and network before training, no Lightning chatter; --verbose shows it all."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.utilities.model_summary import get_human_readable_count

from experiments.cli import main
from tests.support import REPO

QUICKSTART = str(REPO / "experiments" / "quickstart_fast.yaml")
TRAINING_STARTS = "<<training starts>>"
# What Lightning and torch print unasked, and what the template itself caused.
NOISE = (
    "Seed set to",
    "GPU available",
    "TPU available",
    "Tip:",
    "litlogger",
    "Loading `train_dataloader`",
    "Trainer already configured",
    "LeafSpec",
    "FLOPs",
    "MulticlassAccuracy",
    "v_num",
    "Epoch 0/",
    "multiple `ModelCheckpoint`",
)


class UserCallback(pl.Callback):
    """A user's own callback: marks where training starts, and warns as a user's code may."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        print(TRAINING_STARTS, flush=True)
        warnings.warn("the user's own warning", UserWarning, stacklevel=1)


def _fit(data_dir: Path, *extra: str) -> None:
    assert (
        main(
            [
                "fit",
                "--config",
                QUICKSTART,
                f"--data.data_dir={data_dir}",
                "--data.init_args.val_size=100",
                "--data.init_args.batch_size=50",
                "--data.init_args.num_workers=0",
                "--trainer.accelerator=cpu",
                # Steps bound the run (5 steps over two 3-batch epochs, of max_epochs 2): the bar counts steps.
                "--trainer.max_steps=5",
                "--trainer.limit_train_batches=3",
                "--trainer.limit_val_batches=1",
                "--trainer.limit_test_batches=1",
                "--trainer.callbacks+=tests.test_quiet.UserCallback",
                *extra,
            ]
        )
        == 0
    )


def _printed(capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> str:
    # Lightning's logger writes to its own handler, or to the root logger's where one exists (pytest's).
    out, err = capfd.readouterr()
    return out + err + caplog.text


def test_a_run_prints_its_folder_and_network_and_the_users_warnings(
    synthetic_mnist: Path, tmp_path: Path, monkeypatch, capfd, caplog, recwarn
) -> None:
    from architectures import count_params, create_model
    from experiments.analysis.zoo import multiply_adds

    monkeypatch.chdir(tmp_path)
    _fit(synthetic_mnist, "--test_after_fit=true")
    printed = _printed(capfd, caplog)
    before, _, during = printed.partition(TRAINING_STARTS)
    lines = before.strip().splitlines()
    # The run folder and the network, and at most one line of a setting the run chose for the user.
    assert len(lines) <= 3, before
    run = next(line for line in lines if line.startswith("run: "))
    assert run == f"run: {Path('runs', 'quickstart_fast', 'version_0')} (MNIST, 10 classes)"
    network = next(line for line in lines if line.startswith("network: "))
    params, macs = count_params(create_model("inception_mnist")), multiply_adds("inception_mnist")
    assert network == (
        f"network: InceptionMNIST, {get_human_readable_count(params)} parameters (all trainable), "
        f"{get_human_readable_count(macs)} multiply-adds per 1x28x28 image"
    )
    assert "step" in during and "5/5" in during, "steps bound the run: the bar counts steps"
    for noise in NOISE:
        assert noise not in printed, noise
    assert "test accuracy:" in during
    shown = [str(warning.message) for warning in recwarn]
    assert "the user's own warning" in shown, "a warning the user caused is never hidden"
    assert not [message for message in shown if "LeafSpec" in message or "multiple `ModelCheckpoint`" in message]


def test_verbose_prints_everything_lightning_prints(
    synthetic_mnist: Path, tmp_path: Path, monkeypatch, capfd, caplog
) -> None:
    monkeypatch.chdir(tmp_path)
    _fit(synthetic_mnist, "--verbose")
    printed = _printed(capfd, caplog)
    for line in ("Seed set to 0", "GPU available", "Total params", "MulticlassAccuracy"):
        assert line in printed, line
    assert "network: InceptionMNIST" in printed, "the two-line summary too"


def test_quiet_ends_with_the_run(synthetic_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    """A notebook's or a test's next Trainer gets Lightning's own logging and warning settings back."""
    import logging

    monkeypatch.chdir(tmp_path)
    levels = {name: logging.getLogger(name).level for name in ("pytorch_lightning", "lightning_fabric")}
    filters = list(warnings.filters)
    assert (
        main(
            [
                "fit",
                "--config",
                QUICKSTART,
                f"--data.data_dir={synthetic_mnist}",
                "--data.init_args.val_size=100",
                "--trainer.accelerator=cpu",
                "--trainer.max_steps=1",
                "--trainer.limit_val_batches=0",
                "--trainer.enable_progress_bar=false",
            ]
        )
        == 0
    )
    assert {name: logging.getLogger(name).level for name in levels} == levels
    assert warnings.filters == filters
