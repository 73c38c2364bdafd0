"""Determinism: with a seed and `--trainer.deterministic true`, two CPU runs of the same
configuration end with bitwise identical weights, optimiser state and logged metrics.

What holds on a GPU is in docs/reliability.md, "Determinism" (cuDNN, CUBLAS_WORKSPACE_CONFIG, atomic adds).
"""

from __future__ import annotations

import subprocess

import pytest
import torch
from pytorch_lightning import Trainer

from tests.fit_processes import assert_same_weights, finish, last_checkpoint, metric_rows, run_dir, start, tiny_config
from tests.support import write_synthetic_mnist


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory) -> tuple:
    data = write_synthetic_mnist(tmp_path_factory.mktemp("mnist"))
    folders = [tmp_path_factory.mktemp(f"run{index}") for index in range(2)]
    config = tiny_config(data)
    config["trainer"]["max_epochs"] = 2
    processes: list[subprocess.Popen] = [start(folder, config) for folder in folders]  # side by side
    for process in processes:
        code, stderr = finish(process)
        assert code == 0, stderr[-3000:]
    return tuple(folders)


@pytest.mark.end_to_end
def test_two_runs_give_bitwise_identical_weights(twin_runs) -> None:
    first, second = (last_checkpoint(folder) for folder in twin_runs)
    assert first["global_step"] == 20
    assert_same_weights(first, second)
    initial = next((run_dir(twin_runs[0]) / "checkpoints").glob("epoch000*.ckpt"), None)
    if initial is not None:  # the first epoch's best checkpoint: training did move the weights
        before = torch.load(initial, map_location="cpu", weights_only=True)["state_dict"]
        assert any(not torch.equal(before[key], first["state_dict"][key]) for key in before)


@pytest.mark.end_to_end
def test_two_runs_log_identical_metrics(twin_runs) -> None:
    first, second = (metric_rows(folder) for folder in twin_runs)
    assert first == second
    assert [row["val/acc"] for row in first if row.get("val/acc")], "validation was logged"


def test_deterministic_flag_turns_on_torch_deterministic_algorithms() -> None:
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        Trainer(accelerator="cpu", devices=1, deterministic=True, logger=False, enable_checkpointing=False)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(previous)
