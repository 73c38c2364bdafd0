"""Bad-input cases. Runs: resume, locks, runs without an end, evaluation of untrained or non-finite weights."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import torch
import yaml

from tests.bad_inputs.case import CIFAR, FIT, TEST, Case  # noqa: F401

# `{run}`: a finished run folder (config.yaml of `{config}`, checkpoints/last.ckpt); `{locked}`: a run
# folder whose lock the test process holds, as a running `ablate` would.
CASES: list[Case] = [
    Case(
        "run-without-end",
        f"{FIT} --trainer.fast_dev_run=false --trainer.max_epochs=-1 --trainer.max_steps=-1",
        "ConfigError: this run has no end: trainer.max_epochs=-1 with trainer.max_steps=-1",
    ),
    Case(
        "test-after-fit-of-zero-epochs",
        f"{FIT} --trainer.fast_dev_run=false --trainer.max_epochs=0 --test_after_fit=true",
        "ConfigError: --test_after_fit with trainer.max_epochs=0 trains nothing",
    ),
    Case("predict-without-weights", "predict --config {config}", "ConfigError: predict needs trained weights"),
    Case("test-without-weights", TEST, "ConfigError: test needs trained weights: give --ckpt_path"),
    Case("validate-without-weights", "validate --config {config}", "ConfigError: validate needs trained weights"),
    Case(
        "checkpoint-non-finite",
        f"{TEST} --ckpt_path={{ckpt_nan}}",
        "holds non-finite weights (44 of 44 tensors have NaN or inf values); it is not a trained model",
    ),
    Case(
        "weights-non-finite",
        f"{FIT} --fine_tune.weights={{ckpt_nan}}",
        "holds non-finite weights (44 tensors, e.g. features.0.weight): it is not a trained model",
    ),
    Case(
        "resume-last-with-checkpointing-replaced",
        f"{FIT} --config {{own_callbacks}} --ckpt_path=last",
        "ConfigError: --ckpt_path last resumes from the run's last.ckpt, but trainer.callbacks configures nothing",
    ),
    Case(
        "resume-with-a-changed-setting",
        f"{FIT} --ckpt_path={{run}}/checkpoints/last.ckpt --model.optimizer.init_args.lr=0.5",
        "model.optimizer.init_args.lr: 0.05 -> 0.5",
    ),
    Case(
        "run-folder-in-use",
        f"{FIT} --trainer.logger=false --trainer.default_root_dir={{locked}}",
        "is in use by another ablate process (pid",
    ),
]

_HELD = []  # the open lock file of `{locked}`: held as long as the test process lives


def write_inputs(root: Path) -> dict[str, Path]:
    """Create the inputs this family's cases name under ``root``; returns ``{placeholder: path}``."""
    from architectures import create_model
    from experiments.studies.fingerprint import resolve_fit_config
    from lightning_modules.classifier import ImageClassifier
    from lightning_modules.run_lock import LOCK_FILE

    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    torch.manual_seed(0)
    state = ImageClassifier(network=create_model("lenet5", num_classes=10, in_chans=1)).state_dict()
    paths["ckpt_nan"] = root / "nan.ckpt"
    torch.save(
        {
            "state_dict": {
                key: torch.full_like(value, float("nan")) if value.is_floating_point() else value
                for key, value in state.items()
            },
            "global_step": 5,
            "epoch": 0,
        },
        paths["ckpt_nan"],
    )

    paths["own_callbacks"] = root / "own_callbacks.yaml"
    paths["own_callbacks"].write_text(
        yaml.safe_dump({"trainer": {"callbacks": [{"class_path": "pytorch_lightning.callbacks.LearningRateMonitor"}]}})
    )

    # A run as `ablate fit --config {config}` leaves it: its resolved config and a last.ckpt.
    paths["run"] = root / "run"
    (paths["run"] / "checkpoints").mkdir(parents=True, exist_ok=True)
    config = resolve_fit_config(["--config", str(root.parent / "tiny.yaml")])
    (paths["run"] / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save({"state_dict": state, "global_step": 5, "epoch": 0}, paths["run"] / "checkpoints" / "last.ckpt")

    paths["locked"] = root / "locked"
    paths["locked"].mkdir(exist_ok=True)
    handle = open(paths["locked"] / LOCK_FILE, "a+")  # noqa: SIM115 - held for the test session
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    _HELD.append(handle)
    return paths
