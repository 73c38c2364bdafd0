"""A tiny ``ablate fit`` in a subprocess, and how to read what it left: the resume, determinism and
run-folder tests start these runs, signal or kill them, and compare their checkpoints and logs.

The run: LeNet-5 on 500 synthetic MNIST digits, 10 batches an epoch, 3 epochs,
``--trainer.deterministic true``, seed 0, logging to ``runs/tiny/version_N``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from pytorch_lightning import Callback

from tests.support import REPO

EPOCHS, BATCHES = 3, 10
TOTAL_STEPS = EPOCHS * BATCHES


class BatchRecorder(Callback):
    """Test helper run inside `ablate fit`: a `run` line when training starts, then one line per
    training batch, `step epoch batch_idx digest`; optionally slowed down so that a signal lands
    inside an epoch."""

    def __init__(self, path: str = "batches.log", seconds: float = 0.0) -> None:
        self.path, self.seconds = path, seconds

    def on_train_start(self, trainer, pl_module) -> None:
        with open(self.path, "a") as handle:
            handle.write("run\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        images, labels = batch
        digest = hashlib.sha1(images.cpu().numpy().tobytes() + labels.cpu().numpy().tobytes()).hexdigest()[:12]
        with open(self.path, "a") as handle:
            handle.write(f"{trainer.global_step} {trainer.current_epoch} {batch_idx} {digest}\n")
        time.sleep(self.seconds)


def tiny_config(data_dir: Path, seconds: float = 0.0) -> dict:
    """A 3-epoch LeNet-5 fit on synthetic MNIST that logs to runs/tiny/version_N."""
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": EPOCHS,
            "accelerator": "cpu",
            "devices": 1,
            "deterministic": True,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 5,
            "logger": [
                {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "tiny"}}
            ],
            "callbacks+": [{"class_path": "tests.fit_processes.BatchRecorder", "init_args": {"seconds": seconds}}],
        },
        "model": {
            "network": {
                "class_path": "architectures.ZooModel",
                "init_args": {"name": "lenet5", "overrides": {"c3_table": False, "pooling": "max"}},
            },
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 3e-3}},  # learns: val acc 0.6, 1.0
        },
        "data": {
            "class_path": "datamodules.MNISTDataModule",
            "init_args": {"data_dir": str(data_dir), "batch_size": 50, "val_size": 100, "download": False},
        },
    }


def start(workdir: Path, config: dict, *args: str) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "WANDB_MODE": "offline"}
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.cli", "fit", "--config", "tiny.yaml", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended first:\n{process.communicate()[1][-3000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def run_dir(workdir: Path) -> Path:
    versions = sorted((workdir / "runs" / "tiny").glob("version_*"))
    assert [v.name for v in versions] == ["version_0"], "a resumed run logs into the interrupted run's folder"
    return versions[0]


def last_checkpoint(workdir: Path) -> dict:
    return torch.load(run_dir(workdir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def batch_log(workdir: Path) -> list[list[tuple[int, str]]]:
    """Per run in the folder (first, then resumed): the (step, digest) of every training batch."""
    runs = (workdir / "batches.log").read_text().split("run\n")[1:]
    return [[(int(step), digest) for step, _, _, digest in (line.split() for line in run.splitlines())] for run in runs]


def metric_rows(workdir: Path) -> list[dict]:
    with (run_dir(workdir) / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [key for key in a["state_dict"] if not torch.equal(a["state_dict"][key], b["state_dict"][key])]
    assert not different, f"weights differ: {different}"
    moments_a, moments_b = (
        [tensor for state in checkpoint["optimizer_states"][0]["state"].values() for tensor in state.values()]
        for checkpoint in (a, b)
    )
    assert all(torch.equal(x, y) for x, y in zip(moments_a, moments_b, strict=True))
