"""``ablate slurm``: the sbatch scripts line by line, Lightning under simulated SLURM variables, and
pre-emption: SIGUSR1 -> HPC checkpoint + ``scontrol requeue`` -> the next run resumes from it."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning.callbacks import Callback

from experiments.studies import slurm, sweep
from experiments.studies.study import load_study
from tests.support import REPO, write_synthetic_mnist

PRESETS = REPO / "experiments" / "presets"
ABLATE = " ".join(shlex.quote(part) for part in slurm.ablate_command())


def _render(argv: list[str], workdir: Path) -> str:
    script, _ = slurm.render(slurm.build_parser().parse_args(argv), workdir)
    return script


def _srun_args(script: str) -> list[str]:
    """The srun line's words, as the job's shell would split them (SLURM variables left unexpanded)."""
    line = next(line for line in script.splitlines() if line.startswith("srun "))
    return shlex.split(line)  # shlex expands nothing: $SLURM_... stays as the job's shell receives it


def test_config_script_line_by_line(tmp_path: Path) -> None:
    out = tmp_path / "slurm"
    config = REPO / "experiments" / "quickstart.yaml"
    script = _render(
        [
            "--config",
            str(config),
            "--config",
            str(PRESETS / "trainer_multinode.yaml"),
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--time",
            "12:00:00",
            "--partition",
            "gpu",
            "--account",
            "proj42",
            "--cpus-per-task",
            "6",
            "--mem",
            "240G",
            "--output",
            str(out),
        ],
        workdir=tmp_path,
    )
    root = out / "quickstart" / "$SLURM_JOB_ID"
    assert script.splitlines() == [
        "#!/bin/bash",
        "#SBATCH --job-name=quickstart",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gres=gpu:8",
        "#SBATCH --cpus-per-task=6",
        "#SBATCH --mem=240G",
        "#SBATCH --time=12:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj42",
        f"#SBATCH --output={out}/quickstart-%j.out",
        "#SBATCH --open-mode=append",
        f"#SBATCH --chdir={tmp_path}",
        "#SBATCH --signal=SIGUSR1@90",
        "#SBATCH --requeue",
        "",
        "# 32 process(es): 4 node(s) x 8 GPU(s).",
        "# SIGUSR1 -> Lightning saves hpc_ckpt_<n>.ckpt in default_root_dir and requeues the job;",
        "# the requeued run (same job id, same default_root_dir) resumes from it.",
        "set -euo pipefail",
        "export PYTHONUNBUFFERED=1",
        "export OMP_NUM_THREADS=6",
        "",
        f"srun --kill-on-bad-exit=1 {ABLATE} fit --config {config} --config {PRESETS / 'trainer_multinode.yaml'} "
        f'--trainer.num_nodes=4 --trainer.devices=8 "--trainer.default_root_dir={root}"',
    ]


def test_study_script_is_an_array_with_one_task_per_planned_run(tmp_path: Path) -> None:
    study = load_study("resnet_depth")
    script = _render(
        [
            "--study",
            "resnet_depth",
            "--tier",
            "smoke",
            "--seeds",
            "2",
            "--only",
            "resnet20,plain20",
            "--out",
            str(tmp_path / "runs"),
            "--nodes",
            "2",
            "--gpus-per-node",
            "4",
            "--max-running",
            "3",
            "--output",
            str(tmp_path / "slurm"),
            "--set",
            "data.init_args.batch_size=32",
        ],
        workdir=tmp_path,
    )
    planned = sweep.plan(study, "smoke", 2, tmp_path / "runs", ["resnet20", "plain20"])
    lines = script.splitlines()
    assert len(planned) == 4
    assert "#SBATCH --array=0-3%3" in lines
    assert "#SBATCH --job-name=resnet_depth-smoke" in lines
    assert f"#SBATCH --output={tmp_path}/slurm/resnet_depth-smoke-%A_%a.out" in lines
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gres=gpu:4",
        "#SBATCH --signal=SIGUSR1@90",
        "#SBATCH --requeue",
    ):
        assert line in lines
    assert not any(line.startswith("#SBATCH --time") for line in lines), "no --time: the partition's default"
    assert _srun_args(script) == [
        "srun",
        "--kill-on-bad-exit=1",
        *slurm.ablate_command(),
        "slurm",
        "sweep-task",
        "resnet_depth",
        "--tier",
        "smoke",
        "--seeds",
        "2",
        "--out",
        str(tmp_path / "runs"),
        "--only",
        "resnet20,plain20",
        "--set",
        "data.init_args.batch_size=32",
        "--set",
        "trainer.num_nodes=2",
        "--set",
        "trainer.devices=4",
        "--task-index",
        "$SLURM_ARRAY_TASK_ID",
    ]


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    config = str(REPO / "experiments" / "quickstart.yaml")
    common = ["--config", config, "--gpus-per-node", "1"]
    for extra, message in (
        (["--nodes", "0"], "at least 1"),
        (["--nodes", "1", "--time", "90 minutes"], "HH:MM:SS"),
        (["--nodes", "1", "--job-name", "interactive"], "SLURM support"),
        (["--nodes", "1", "--wandb"], "presets/wandb.yaml"),
    ):
        with pytest.raises(ValueError, match=message):
            _render([*common, *extra], tmp_path)
    with pytest.raises(FileNotFoundError):
        _render(["--config", str(tmp_path / "absent.yaml"), "--nodes", "1", "--gpus-per-node", "1"], tmp_path)


def test_dry_run_prints_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code = slurm.main(
        ["--config", str(REPO / "experiments" / "quickstart.yaml"), "--nodes", "1", "--gpus-per-node", "2", "--dry-run"]
    )
    assert code == 0
    assert capsys.readouterr().out.startswith("#!/bin/bash\n#SBATCH --job-name=quickstart\n")
    assert not (tmp_path / "runs").exists()


def test_writes_the_script_and_submits_with_sbatch(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--config", str(REPO / "experiments" / "quickstart.yaml"), "--nodes", "1", "--gpus-per-node", "1"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert slurm.main(argv) == 0
    script = tmp_path / "runs" / "slurm" / "quickstart.sbatch"
    assert script.is_file() and f"sbatch {script}" in capsys.readouterr().out
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch.args\necho "Submitted batch job 777"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert slurm.main(argv) == 0
    assert (tmp_path / "sbatch.args").read_text().strip() == str(script)
    assert "Submitted batch job 777" in capsys.readouterr().out


def _slurm_env(script: str, procid: int, job_id: str = "4242") -> dict[str, str]:
    """The variables srun sets for task ``procid`` of the job the script asks for."""
    sbatch = dict(
        line.removeprefix("#SBATCH --").split("=", 1)
        for line in script.splitlines()
        if line.startswith("#SBATCH --") and "=" in line
    )
    nodes, per_node = int(sbatch["nodes"]), int(sbatch["ntasks-per-node"])
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": sbatch["job-name"],
        "SLURM_NNODES": str(nodes),
        "SLURM_NTASKS": str(nodes * per_node),
        "SLURM_NTASKS_PER_NODE": str(per_node),
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(procid % per_node),
        "SLURM_NODEID": str(procid // per_node),
        "SLURM_NODELIST": f"gpu[07-{7 + nodes - 1:02d}]",
    }


def test_lightning_derives_world_and_ranks_from_the_job(tmp_path: Path, monkeypatch) -> None:
    """The generated layout, under the variables srun would set, gives Lightning the right ranks."""
    import pytorch_lightning as pl
    from lightning_fabric.plugins.environments import SLURMEnvironment
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    # Building a Trainer sets the process-wide rank-zero flag; put it back for the tests that follow.
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)

    script = _render(
        ["--config", str(REPO / "experiments" / "quickstart.yaml"), "--nodes", "4", "--gpus-per-node", "8"], tmp_path
    )
    words = _srun_args(script)
    flags = dict(word.removeprefix("--trainer.").split("=", 1) for word in words if word.startswith("--trainer."))
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no srun here: Lightning would warn that it is unused
    for procid, (node, local) in {0: (0, 0), 13: (1, 5), 31: (3, 7)}.items():
        for key, value in _slurm_env(script, procid).items():
            monkeypatch.setenv(key, value)
        environment = SLURMEnvironment()
        assert SLURMEnvironment.detect()
        assert (environment.world_size(), environment.global_rank()) == (32, procid)
        assert (environment.node_rank(), environment.local_rank()) == (node, local)
        assert environment.main_address == "gpu07"
        assert environment.main_port == 15000 + 4242
        trainer = pl.Trainer(
            accelerator="cpu",
            strategy="ddp",
            devices=int(flags["devices"]),
            num_nodes=int(flags["num_nodes"]),
            logger=False,
        )
        assert isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)
        assert (trainer.world_size, trainer.global_rank) == (32, procid)
        assert (trainer.node_rank, trainer.local_rank) == (node, local)
        monkeypatch.delenv("MASTER_ADDR", raising=False)
        monkeypatch.delenv("MASTER_PORT", raising=False)
    # Lightning checks the layout when it launches (srun made the processes; it starts none itself).
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # launch() would set it otherwise
    assert trainer.strategy.launcher.launch(lambda: "launched") == "launched"
    mismatched = pl.Trainer(accelerator="cpu", strategy="ddp", devices=4, num_nodes=4, logger=False)
    with pytest.raises(ValueError, match="ntasks-per-node"):  # what the script's devices flag prevents
        mismatched.strategy.launcher.launch(lambda: "launched")


def test_array_task_ranks_share_one_fit_and_one_set_of_records(tmp_path: Path, monkeypatch) -> None:
    """Rank 0 runs the sweep (records); other ranks exec the same fit with a private config copy."""
    argv = [
        "resnet_depth",
        "--tier",
        "smoke",
        "--seeds",
        "2",
        "--out",
        str(tmp_path / "runs"),
        "--set",
        "trainer.devices=2",
        "--task-index",
        "1",
    ]
    calls: list[list[str]] = []
    monkeypatch.setattr(sweep, "main", lambda args: calls.append(list(args)) or 0)
    before = signal.getsignal(signal.SIGUSR1)
    monkeypatch.setenv("SLURM_PROCID", "0")
    try:
        assert slurm.main(["sweep-task", *argv]) == 0
        handler = signal.getsignal(signal.SIGUSR1)
        assert callable(handler), "rank 0's sweep must outlive SIGUSR1, which its fit child handles"
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert calls == [argv]

    execs: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, args: execs.append(list(args)))
    monkeypatch.setattr(os, "chdir", lambda path: None)
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert slurm.main(["sweep-task", *argv]) == 0
    run = sweep.plan(load_study("resnet_depth"), "smoke", 2, (tmp_path / "runs").resolve())[1]
    expected = sweep.command(run, ["--trainer.devices=2"])
    private = run.directory / ".run.rank1.yaml"
    assert execs == [[str(private) if arg == str(run.directory / "run.yaml") else arg for arg in expected]]
    assert yaml.safe_load(private.read_text()) == yaml.safe_load(yaml.safe_dump(sweep.run_config(run, False)))
    assert not (run.directory / "run.yaml").exists(), "only rank 0 writes the run's records"
    sweep.write_json_atomic(run.directory / "result.json", {"status": "completed"})
    execs.clear()
    assert slurm.main(["sweep-task", *argv]) == 0
    assert execs == [], "a finished run is skipped on every rank, as rank 0's sweep skips it"


# ----- pre-emption: SIGUSR1, HPC checkpoint, requeue, resume ------------------------------------------


class StepMarker(Callback):
    """Test helper run inside `ablate fit`: slow steps, and the global step written to a file."""

    def __init__(self, path: str = "progress.txt", seconds: float = 0.25) -> None:
        self.path, self.seconds = path, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
        Path(self.path).write_text(str(trainer.global_step))


@pytest.mark.end_to_end
def test_sigusr1_checkpoints_requeues_and_the_next_run_resumes(tmp_path: Path) -> None:
    data = write_synthetic_mnist(tmp_path / "data", n_train=300, n_test=50)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    # Records the call, then does what SLURM does to a requeued job: SIGTERM to the job's processes.
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\nkill -TERM $PPID\n')
    scontrol.chmod(0o755)
    root = tmp_path / "job"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "offline",
        "NO_COLOR": "1",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "ablate-test",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    cmd = [
        sys.executable,
        "-m",
        "experiments.cli",
        "fit",
        "--config",
        str(REPO / "experiments" / "quickstart_fast.yaml"),
        "--config",
        str(PRESETS / "trainer_cpu.yaml"),
        f"--trainer.default_root_dir={root}",
        "--trainer.max_epochs=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.callbacks+=tests.test_slurm.StepMarker",
        f"--data.data_dir={data}",
        "--data.init_args.val_size=44",
        "--data.init_args.batch_size=16",
        "--model.network.init_args.name=lenet5",
    ]
    progress = tmp_path / "progress.txt"
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (progress.is_file() and progress.read_text().strip() and int(progress.read_text()) >= 3):
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.time() < deadline, "training never started"
        time.sleep(0.2)
    first.send_signal(signal.SIGUSR1)
    output = first.communicate(timeout=240)[0]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"], output[-3000:]
    hpc = root / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), output[-3000:]
    stopped_at = torch.load(hpc, map_location="cpu", weights_only=False)["global_step"]
    total = 2 * (256 // 16)
    assert 3 <= stopped_at < total, "stopped by SIGTERM after the checkpoint, not at the end"
    assert "Handling auto-requeue signal" in output

    progress.unlink()
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {hpc}" in second.stdout + second.stderr
    assert int(progress.read_text()) == total
    runs = sorted((tmp_path / "runs" / "quickstart_fast").glob("version_*"))
    last = torch.load(runs[-1] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == total
    with (runs[-1] / "metrics.csv").open() as handle:
        resumed_steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("step")]
    assert min(resumed_steps) >= stopped_at - 1, "the second run continued, it did not start over"


@pytest.mark.end_to_end
def test_array_task_on_two_ranks_end_to_end(tmp_path: Path) -> None:
    """`ablate slurm sweep-task` as srun starts it for a 1-node x 2-"GPU" task: one DDP fit, one record."""
    from datamodules.synthetic import write_cifar10_pickles

    cifar = write_cifar10_pickles(tmp_path / "cifar", per_batch=20, num_test=31)
    out = tmp_path / "runs"
    argv = [
        "resnet_depth",
        "--tier",
        "smoke",
        "--seeds",
        "1",
        "--only",
        "resnet20",
        "--out",
        str(out),
        "--set",
        f"data.init_args.data_dir={cifar}",
        "--set",
        "data.init_args.val_size=20",
        "--set",
        "data.init_args.batch_size=8",
        "--set",
        "trainer.accelerator=cpu",
        "--set",
        "trainer.num_nodes=1",
        "--set",
        "trainer.devices=2",
        "--task-index",
        "0",
    ]
    base = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "offline",
        "NO_COLOR": "1",
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "PATH": "/usr/bin:/bin:" + os.environ["PATH"],
        "SLURM_JOB_ID": "5151",
        "SLURM_ARRAY_JOB_ID": "5150",
        "SLURM_ARRAY_TASK_ID": "0",
        "SLURM_JOB_NAME": "resnet_depth-smoke",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    ranks = [
        subprocess.Popen(
            [*slurm.ablate_command(), "slurm", "sweep-task", *argv],
            cwd=tmp_path,
            env={**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [rank.communicate(timeout=300)[0] for rank in ranks]
    for rank, output in zip(ranks, outputs, strict=True):
        assert rank.returncode == 0, output[-4000:]
    run_dir = out / "resnet_depth" / "smoke" / "resnet20" / "seed_0"
    record = yaml.safe_load((run_dir / "result.json").read_text())
    assert record["status"] == "completed", record
    assert "1 completed" in outputs[0], "rank 0 ran the sweep"
    assert "completed" not in outputs[1], "rank 1 ran the fit alone, no sweep bookkeeping"
    assert (run_dir / ".run.rank1.yaml").is_file()
    assert "MEMBER: 1/2" in (run_dir / "stderr.log").read_text(), "rank 0's fit joined a 2-process group"
    assert str(yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["devices"]) == "2"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
