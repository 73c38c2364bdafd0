"""``ablate slurm``: an sbatch script for one config, or a job array for a whole study.

    ablate slurm --config experiments/quickstart.yaml --config experiments/presets/trainer_multinode.yaml \
        --nodes 4 --gpus-per-node 8 --time 12:00:00 --partition gpu --account proj42 --dry-run
    ablate slurm --study resnet_depth --tier full --seeds 5 --nodes 1 --gpus-per-node 1 --time 08:00:00

One config is one job: ``srun`` starts ``nodes x gpus-per-node`` processes of ``ablate fit``
(``--ntasks-per-node`` equals the GPUs, so each process drives one GPU) and Lightning's
``SLURMEnvironment`` reads every process's rank from ``SLURM_PROCID`` / ``SLURM_LOCALID`` /
``SLURM_NODEID``. A study is a job array with one task per planned run (arm x grid point x
seed, ``ablate sweep --list`` shows them), each task the same layout running
``ablate slurm sweep-task <study> ... --task-index $SLURM_ARRAY_TASK_ID``: global rank 0 runs
``ablate sweep <study> ... --task-index $SLURM_ARRAY_TASK_ID`` (the run's folder and records), the
other ranks the same ``ablate fit`` without the records.

Pre-emption and time limits (``#SBATCH --signal=SIGUSR1@90`` and ``--requeue``): 90 s before the
end, SLURM sends SIGUSR1; Lightning's handler (``_SignalConnector._slurm_sigusr_handler_fn``)
saves ``hpc_ckpt_<n>.ckpt`` in ``trainer.default_root_dir`` and runs
``scontrol requeue $SLURM_JOB_ID`` (``<array job>_<task>`` for an array task). The requeued job
runs the same script; with no ``ckpt_path`` given, Lightning under SLURM resumes from the newest
``hpc_ckpt_*.ckpt`` in ``default_root_dir`` (``_CheckpointConnector._parse_ckpt_path``), so a
job continues where it stopped. ``default_root_dir`` is therefore per job: ``<output>/<job
name>/<job id>`` for a config (a requeued job keeps its id; a new submission starts afresh), the
run's own directory for a study task (where ``ablate sweep`` passes ``--ckpt_path last.ckpt`` once
a validation has written one, which Lightning then prefers to the HPC checkpoint).

Without ``--dry-run`` the script is written to ``<output>/<job name>.sbatch`` and submitted when
``sbatch`` is on the PATH; ``--dry-run`` prints it and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from experiments.studies import sweep
from experiments.studies.study import TIERS, StudyError, load_study

DEFAULT_OUTPUT = "runs/slurm"
# Seconds before the time limit at which SLURM sends SIGUSR1: enough to write a checkpoint.
DEFAULT_SIGNAL_SECONDS = 90
_TIME = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")


@dataclass(frozen=True)
class Resources:
    """What one job (or each array task) asks SLURM for.

    Args:
        nodes: Machines per job.
        gpus_per_node: GPUs per machine; also the processes per machine (one per GPU).
        time: Wall-clock limit, ``HH:MM:SS`` or ``D-HH:MM:SS``; None leaves the partition's default.
        partition: SLURM partition, or None for the default.
        account: Account to charge, or None for the default.
        cpus_per_task: CPU cores per process (data loading), or None for the default.
        mem: Memory per node (``64G``), or None for the default.
        job_name: Job name (also names the script, its log and the run folder).
        output: Folder of the script and the SLURM logs.
        signal_seconds: Seconds before the limit at which SIGUSR1 asks for a checkpoint.
        max_running: Most array tasks running at once (``--array=0-K%M``), or None for no limit.
    """

    nodes: int
    gpus_per_node: int
    job_name: str
    output: Path
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    signal_seconds: int = DEFAULT_SIGNAL_SECONDS
    max_running: int | None = None

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(f"--nodes and --gpus-per-node must be at least 1, got {self.nodes}, {self.gpus_per_node}")
        if self.time is not None and not _TIME.match(self.time):
            raise ValueError(f"--time must be HH:MM:SS or D-HH:MM:SS, got {self.time!r}")
        if self.job_name in ("bash", "interactive"):
            # Lightning treats these names as interactive sessions and ignores SLURM (SLURMEnvironment.detect).
            raise ValueError(f"--job-name {self.job_name!r} would turn off Lightning's SLURM support; pick another")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", self.job_name):
            raise ValueError(f"--job-name may hold letters, digits and _ . + - only, got {self.job_name!r}")

    @property
    def tasks(self) -> int:
        return self.nodes * self.gpus_per_node


def ablate_command() -> list[str]:
    """How the job calls ``ablate``: this environment's console script, else its Python with ``-m``."""
    script = Path(sys.executable).with_name("ablate")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "experiments.cli"]


def _quote(args: list[str]) -> str:
    """Shell-quote the arguments; those naming ``$SLURM_...`` go in double quotes so the job expands them."""

    def quote(arg: str) -> str:
        if "$SLURM_" not in arg:
            return shlex.quote(arg)
        return '"' + re.sub(r'(["\\`])', r"\\\1", arg) + '"'

    return " ".join(quote(arg) for arg in args)


def sbatch_header(resources: Resources, workdir: Path, array: int | None = None) -> list[str]:
    """The ``#SBATCH`` lines: layout, limits, requeue on SIGUSR1, log file."""
    log = f"{resources.job_name}-%A_%a.out" if array is not None else f"{resources.job_name}-%j.out"
    lines = [
        f"#SBATCH --job-name={resources.job_name}",
        f"#SBATCH --nodes={resources.nodes}",
        f"#SBATCH --ntasks-per-node={resources.gpus_per_node}",
        f"#SBATCH --gres=gpu:{resources.gpus_per_node}",
    ]
    if resources.cpus_per_task is not None:
        lines.append(f"#SBATCH --cpus-per-task={resources.cpus_per_task}")
    if resources.mem is not None:
        lines.append(f"#SBATCH --mem={resources.mem}")
    if resources.time is not None:
        lines.append(f"#SBATCH --time={resources.time}")
    if resources.partition is not None:
        lines.append(f"#SBATCH --partition={resources.partition}")
    if resources.account is not None:
        lines.append(f"#SBATCH --account={resources.account}")
    if array is not None:
        throttle = f"%{resources.max_running}" if resources.max_running else ""
        lines.append(f"#SBATCH --array=0-{array - 1}{throttle}")
    lines += [
        f"#SBATCH --output={resources.output.resolve() / log}",
        "#SBATCH --open-mode=append",  # a requeued job appends to its log instead of truncating it
        f"#SBATCH --chdir={workdir}",
        f"#SBATCH --signal=SIGUSR1@{resources.signal_seconds}",
        "#SBATCH --requeue",
    ]
    return lines


def _script(
    resources: Resources, workdir: Path, command: list[str], comment: list[str], array: int | None = None
) -> str:
    body = [
        "#!/bin/bash",
        *sbatch_header(resources, workdir, array),
        "",
        *[f"# {line}" for line in comment],
        "set -euo pipefail",
        "export PYTHONUNBUFFERED=1",
    ]
    if resources.cpus_per_task is not None:
        body.append(f"export OMP_NUM_THREADS={resources.cpus_per_task}")
    # --kill-on-bad-exit: one crashed rank ends the step instead of leaving the others in a collective.
    body += ["", f"srun --kill-on-bad-exit=1 {_quote(command)}", ""]
    return "\n".join(body)


def _layout_args(resources: Resources) -> list[str]:
    """Trainer flags that match what srun starts; Lightning checks them against SLURM's variables."""
    return [f"--trainer.num_nodes={resources.nodes}", f"--trainer.devices={resources.gpus_per_node}"]


def config_script(configs: list[str], resources: Resources, extra: list[str], workdir: Path) -> str:
    """The sbatch script running ``ablate fit`` on ``configs`` across ``resources``."""
    paths = [str(Path(config).resolve()) for config in configs]
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config {path} does not exist")
    root = resources.output.resolve() / resources.job_name / "$SLURM_JOB_ID"
    command = [
        *ablate_command(),
        "fit",
        *[arg for path in paths for arg in ("--config", path)],
        *_layout_args(resources),
        f"--trainer.default_root_dir={root}",
        *extra,
    ]
    comment = [
        f"{resources.tasks} process(es): {resources.nodes} node(s) x {resources.gpus_per_node} GPU(s).",
        "SIGUSR1 -> Lightning saves hpc_ckpt_<n>.ckpt in default_root_dir and requeues the job;",
        "the requeued run (same job id, same default_root_dir) resumes from it.",
    ]
    return _script(resources, workdir, command, comment)


def study_script(sweep_args: list[str], runs: int, resources: Resources, workdir: Path) -> str:
    """The sbatch array script, one task per planned run of the study."""
    command = [
        *ablate_command(),
        "slurm",
        "sweep-task",
        *sweep_args,
        *[arg for flag in _layout_args(resources) for arg in ("--set", flag.removeprefix("--"))],
        "--task-index",
        "$SLURM_ARRAY_TASK_ID",
    ]
    comment = [
        f"{runs} array task(s), one per planned run (`ablate sweep ... --list`), each on",
        f"{resources.tasks} process(es): {resources.nodes} node(s) x {resources.gpus_per_node} GPU(s).",
        "`slurm sweep-task` is `ablate sweep ... --task-index` on rank 0 (the run's records) and the",
        "same `ablate fit` without the records on the other ranks. SIGUSR1 -> Lightning saves",
        "hpc_ckpt_<n>.ckpt in the run directory and requeues the task; the sweep then resumes the run",
        "(from its last.ckpt when it has one, else Lightning picks the HPC checkpoint).",
    ]
    return _script(resources, workdir, command, comment, array=runs)


# ----- the array task ------------------------------------------------------------------------------


def sweep_task(argv: list[str]) -> int:
    """One array task: ``ablate sweep <argv>`` with ``--task-index``, on every rank of the job step.

    Global rank 0 runs the sweep itself (run folder, ``run.yaml``, ``git.txt``, logs, ``result.json``)
    and survives SIGUSR1, which its ``ablate fit`` child handles. The other ranks start the same
    ``ablate fit`` with a private copy of the run config and write nothing else, so the records
    have one writer.
    """
    args = sweep.build_parser().parse_args(argv)
    if args.task_index is None:
        raise StudyError("sweep-task needs --task-index (the array task id)")
    if int(os.environ.get("SLURM_PROCID", "0")) == 0:
        # The default action of SIGUSR1 is to terminate; a Python handler is reset to the default in
        # the exec'ed fit process, where Lightning installs its own.
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
        return sweep.main(argv)
    study = load_study(args.study)
    runs = sweep.plan(
        study,
        args.tier,
        args.seeds,
        Path(args.out).resolve(),
        sweep.split_names(args.only),
        sweep.split_names(args.exclude),
    )
    if not 0 <= args.task_index < len(runs):
        raise StudyError(f"--task-index {args.task_index} outside the {len(runs)} planned runs")
    run = runs[args.task_index]
    result = sweep.read_result(run.directory)
    if result and (result["status"] == "completed" or not args.retry_failed):
        return 0  # rank 0 skips it too
    command = rank_command(run, args, int(os.environ["SLURM_PROCID"]))
    os.chdir(sweep.REPO)
    os.execv(command[0], command)
    return 0  # not reached


def rank_command(run: sweep.PlannedRun, args: argparse.Namespace, rank: int) -> list[str]:
    """The ``ablate fit`` command rank 0's sweep runs for ``run``, reading a private copy of ``run.yaml``.

    Args:
        run: The planned run of this array task.
        args: The task's ``ablate sweep`` arguments.
        rank: This process's global rank (``SLURM_PROCID``), which names the copy.
    """
    extra = [f"--{item}" if not item.startswith("--") else item for item in args.set]
    run.directory.mkdir(parents=True, exist_ok=True)
    private = run.directory / f".run.rank{rank}.yaml"
    private.write_text(yaml.safe_dump(sweep.run_config(run, args.wandb), sort_keys=False))
    shared = str(run.directory / "run.yaml")
    return [str(private) if arg == shared else arg for arg in sweep.command(run, extra)]


# ----- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ablate slurm", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--config",
        action="append",
        metavar="FILE",
        help="an `ablate fit` config, repeatable (e.g. the experiment, then a trainer preset)",
    )
    what.add_argument("--study", metavar="NAME", help="a study under experiments/studies: one array task per run")
    parser.add_argument("--tier", choices=TIERS, default="short", help="study tier")
    parser.add_argument("--seeds", type=int, default=1, help="study seeds per arm")
    parser.add_argument("--only", help="study: comma-separated arms")
    parser.add_argument("--exclude", help="study: comma-separated arms to leave out")
    parser.add_argument("--out", default="runs", help="study: root of the run directories (default: runs)")
    parser.add_argument("--wandb", action="store_true", help="study: also log every run to W&B")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ablate argument, e.g. data.init_args.data_dir=/scratch/data",
    )
    parser.add_argument("--nodes", type=int, required=True, help="machines per job")
    parser.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (= processes) per machine")
    parser.add_argument("--time", help="wall-clock limit, HH:MM:SS or D-HH:MM:SS")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--cpus-per-task", type=int, help="CPU cores per process")
    parser.add_argument("--mem", help="memory per node, e.g. 64G")
    parser.add_argument("--job-name", help="default: the last config's name, or <study>-<tier>")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"script and log folder (default: {DEFAULT_OUTPUT})")
    parser.add_argument(
        "--signal-seconds",
        type=int,
        default=DEFAULT_SIGNAL_SECONDS,
        help="seconds before the time limit at which SIGUSR1 asks for a checkpoint",
    )
    parser.add_argument("--max-running", type=int, help="study: most array tasks running at once")
    parser.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    return parser


def render(args: argparse.Namespace, workdir: Path) -> tuple[str, Resources]:
    """The script the arguments ask for, and the resources it requests."""
    if not args.study:
        misplaced = [flag for flag in ("only", "exclude", "wandb", "max_running") if getattr(args, flag)]
        if misplaced:
            raise ValueError(
                f"--{misplaced[0].replace('_', '-')} applies to --study; for W&B with --config, add "
                "--config experiments/presets/wandb.yaml"
            )
    if args.study:
        study = load_study(args.study)
        out = Path(args.out).resolve()
        runs = sweep.plan(
            study, args.tier, args.seeds, out, sweep.split_names(args.only), sweep.split_names(args.exclude)
        )
        default_name = f"{study.name}-{args.tier}"
    else:
        default_name = Path(args.config[-1]).stem
        for config in reversed(args.config):  # a trainer or logger preset names no experiment
            if Path(config).resolve().parent != Path(__file__).parents[1] / "presets":
                default_name = Path(config).stem
                break
    resources = Resources(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        job_name=args.job_name or default_name,
        output=Path(args.output),
        time=args.time,
        partition=args.partition,
        account=args.account,
        cpus_per_task=args.cpus_per_task,
        mem=args.mem,
        signal_seconds=args.signal_seconds,
        max_running=args.max_running,
    )
    if args.study:
        sweep_args = [args.study, "--tier", args.tier, "--seeds", str(args.seeds), "--out", str(out)]
        for flag in ("only", "exclude"):
            if getattr(args, flag):
                sweep_args += [f"--{flag}", getattr(args, flag)]
        sweep_args += ["--wandb"] if args.wandb else []
        sweep_args += [arg for item in args.set for arg in ("--set", item)]
        return study_script(sweep_args, len(runs), resources, workdir), resources
    extra = [f"--{item}" if not item.startswith("--") else item for item in args.set]
    return config_script(args.config, resources, extra, workdir), resources


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep-task"]:
        return sweep_task(argv[1:])
    args = build_parser().parse_args(argv)
    script, resources = render(args, Path.cwd())
    if args.dry_run:
        print(script, end="")
        return 0
    resources.output.mkdir(parents=True, exist_ok=True)  # SLURM does not create the log folder
    path = resources.output.resolve() / f"{resources.job_name}.sbatch"
    path.write_text(script)
    print(f"wrote {path}")
    if shutil.which("sbatch") is None:
        print(f"sbatch is not available here; on the cluster, submit with:\n  sbatch {shlex.quote(str(path))}")
        return 0
    submitted = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
    print((submitted.stdout + submitted.stderr).strip())
    return submitted.returncode


if __name__ == "__main__":
    sys.exit(main())
