"""Two "nodes" on localhost: torchrun starts one agent per node (static rendezvous on 127.0.0.1),
each runs `ablate fit` with the multinode preset and `--trainer.num_nodes=2`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pytorch_lightning.callbacks import Callback

from tests.support import QUICK, REPO, write_synthetic_mnist


class RankRecorder(Callback):
    """Test helper run inside `ablate fit`: each process writes the ranks Lightning gave it."""

    def on_fit_start(self, trainer, pl_module) -> None:
        Path(f"rank{trainer.global_rank}.txt").write_text(
            f"{trainer.world_size} {trainer.global_rank} {trainer.node_rank} {trainer.local_rank}"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.end_to_end
def test_two_nodes_with_torchrun_on_localhost(tmp_path: Path) -> None:
    data = write_synthetic_mnist(tmp_path / "data", n_train=300, n_test=60)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK"):
        env.pop(key, None)
    fit = [
        "-m",
        "experiments.cli",
        "fit",
        "--config",
        str(REPO / "experiments" / "quickstart_fast.yaml"),
        "--config",
        str(REPO / "experiments" / "presets" / "trainer_multinode.yaml"),
        *QUICK,
        "--trainer.num_nodes=2",
        "--trainer.devices=1",
        "--trainer.strategy.init_args.process_group_backend=gloo",  # no NCCL without GPUs
        "--trainer.callbacks+=tests.test_multinode.RankRecorder",
        f"--data.data_dir={data}",
        "--data.init_args.val_size=50",
        "--data.init_args.batch_size=25",
        "--model.network.init_args.name=lenet5",
    ]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={node}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "--max-restarts=0",
                *fit,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-4000:]
    assert "Starting with 2 processes" in outputs[0]
    # world size, global rank, node rank, local rank: one process per node, ranks from torchrun.
    assert (tmp_path / "rank0.txt").read_text() == "2 0 0 0"
    assert (tmp_path / "rank1.txt").read_text() == "2 1 1 0"
    run_dir = tmp_path / "runs" / "quickstart_fast" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "metrics.csv").is_file()
    assert not (tmp_path / "runs" / "quickstart_fast" / "version_1").exists(), "only global rank 0 writes"
