"""``ablate sweep <study>``: every arm x seed of a study, each run in its own directory.

    ablate sweep resnet_shortcuts --tier short --seeds 3
    ablate sweep all_cnn --tier full --seeds 5 --only all_cnn_c,model_c --out /scratch/runs
    ablate sweep resnet_depth --tier short --set model.network.init_args.name=resnet20

Each run is a separate ``ablate fit ... --test_after_fit true`` process (a crash or a NaN in one
arm cannot take the sweep down) writing ``<out>/<study>/<tier>/<arm>/seed_<k>/``: the resolved
``config.yaml``, ``metrics.csv``, checkpoints, its stdout/stderr, ``git.txt`` and, only once the
test pass has finished, ``result.json``. Completed (and failed) runs are skipped on the next
invocation; a run that was interrupted resumes from its ``last.ckpt``. SIGTERM or SIGUSR1 sent to
the sweep alone (``kill <pid>``) reaches its running ``ablate fit`` children too: each saves
``last.ckpt`` and exits, no new run starts, and the sweep exits with 128 + the signal. On a
machine with several GPUs, runs go one per GPU in parallel; on CPU they run one after another. A
SLURM array runs one planned run per task with ``--task-index``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any

import yaml

from experiments.study import TIERS, Arm, Study, StudyError, grid_label, load_study, select_arms

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "runs"
# Keys copied from a run's metrics into its result record.
RESULT_METRICS = ("test/err", "test/acc", "test/acc_top5", "test/loss", "val/acc_best")


@dataclass(frozen=True)
class PlannedRun:
    study: Study
    arm: Arm
    seed: int
    tier: str
    directory: Path
    grid: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        point = f"/{grid_label(self.grid)}" if self.grid else ""
        return f"{self.study.name}/{self.tier}/{self.arm.name}{point}/seed_{self.seed}"

    @property
    def grid_args(self) -> list[str]:
        return [f"--{key}={value}" for key, value in self.grid]


def plan(study: Study, tier: str, seeds: int, out: Path, only=None, exclude=None) -> list[PlannedRun]:
    """Arms x grid points x seeds in table order, seeds innermost."""
    if tier not in TIERS:
        raise StudyError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    if seeds < 1:
        raise StudyError(f"--seeds must be at least 1, got {seeds}")
    runs = []
    for arm in select_arms(study, only, exclude):
        for point in study.grid_points():
            arm_dir = out / study.name / tier / arm.name / (grid_label(point) if point else "")
            runs += [PlannedRun(study, arm, seed, tier, arm_dir / f"seed_{seed}", point) for seed in range(seeds)]
    return runs


def write_json_atomic(path: Path, data: Any) -> None:
    """Write then rename, so a reader never sees half a file and a crash leaves the old one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when writing failed


def read_result(directory: Path) -> dict | None:
    path = directory / "result.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # never written by us (atomic writes); treat as missing, not as a number


def git_commit() -> str:
    """HEAD of the checkout the runs come from, with ``-dirty`` when it has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextmanager
def sweep_lock(directory: Path) -> Iterator[None]:
    """One sweep per study tier directory at a time; a second one is refused with a clear message."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".sweep.lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StudyError(
            f"another sweep ({holder}) is running on {directory}; wait for it or use another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def run_config(run: PlannedRun, wandb: bool) -> dict[str, Any]:
    """The per-run config layered after base and arm: tier schedule, seed, loggers in the run dir."""
    directory = str(run.directory)
    loggers: list[dict[str, Any]] = [
        {"class_path": "pytorch_lightning.loggers.CSVLogger",
         "init_args": {"save_dir": directory, "name": "", "version": ""}},
        {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
         "init_args": {"save_dir": directory, "name": "", "version": "", "sub_dir": "tensorboard",
                       "default_hp_metric": False}},
    ]
    if wandb:
        loggers.append({
            "class_path": "lightning_modules.loggers.WandbLogger",
            "init_args": {"project": "cnn-ablations", "save_dir": directory, "group": f"{run.study.name}-{run.tier}",
                          "name": f"{run.arm.name}-seed{run.seed}", "tags": [run.study.name, run.tier, run.arm.name]},
        })
    tier = run.study.tiers[run.tier] or {}
    trainer = {**tier.get("trainer", {}), "logger": loggers, "default_root_dir": directory}
    config: dict[str, Any] = {"seed_everything": run.seed, "trainer": trainer}
    for key, value in tier.items():
        if key != "trainer":
            config[key] = value
    return config


def command(run: PlannedRun, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "experiments.cli", "fit",
           "--config", str(run.study.base), "--config", str(run.arm.config),
           "--config", str(run.directory / "run.yaml"), *run.grid_args, "--test_after_fit", "true", *extra]
    resume = resume_checkpoint(run.directory)
    if resume is not None:
        cmd += ["--ckpt_path", str(resume)]
    return cmd


def resume_checkpoint(directory: Path) -> Path | None:
    """The newest of the run's ``last.ckpt`` and SLURM's pre-emption ``hpc_ckpt_*.ckpt``.

    An explicit ``--ckpt_path`` beats Lightning's own HPC resume, so the runner must pick the
    newer one itself or a requeued task would restart from its last validation checkpoint.
    """
    candidates = [p for p in (directory / "checkpoints" / "last.ckpt", *directory.glob("hpc_ckpt_*.ckpt"))
                  if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def read_metrics(directory: Path) -> dict[str, float]:
    """The last logged value of each result metric in the run's ``metrics.csv``."""
    path = directory / "metrics.csv"
    found: dict[str, float] = {}
    if not path.is_file():
        return found
    with path.open() as handle:
        for row in csv.DictReader(handle):
            for key in RESULT_METRICS:
                if row.get(key):
                    found[key] = float(row[key])
    return found


def _failure_reason(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("ablate: error:"):
            return line.removeprefix("ablate: error:").strip()
    return lines[-1] if lines else "no output"


class Children:
    """The ``ablate fit`` processes a sweep has running, and the stop signal it was sent.

    A signal sent to the sweep's process alone (``kill <pid>``, a scheduler that signals only the
    process it started) would otherwise leave its child training on, orphaned, while the sweep
    dies. Forwarded, the child saves ``last.ckpt`` and exits 128 + signal, which ``execute`` records
    as interrupted (resumable). A signal that already has a handler is left alone: under SLURM,
    ``ablate slurm sweep-task`` owns SIGUSR1, which SLURM delivers to every process itself.
    """

    FORWARDED = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.stop_signal: signal.Signals | None = None
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.RLock()  # the handler runs in the main thread, maybe inside the lock
        self._previous: dict[signal.Signals, Any] = {}

    @contextmanager
    def forwarding(self) -> Iterator[Children]:
        if threading.current_thread() is threading.main_thread():  # signal.signal works only there
            for signum in self.FORWARDED:
                if signal.getsignal(signum) is signal.SIG_DFL:
                    self._previous[signum] = signal.signal(signum, self._on_signal)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signal.Signals(signum)
        with self._lock:
            for process in list(self._running):
                process.send_signal(signum)

    def wait(self, cmd: list[str], **popen: Any) -> int:
        """Run ``cmd`` to its end; a stop signal that came first is passed on at once."""
        with subprocess.Popen(cmd, **popen) as process:
            with self._lock:
                self._running.add(process)
                if self.stop_signal is not None:  # arrived between the sweep's check and Popen
                    process.send_signal(self.stop_signal)
            try:
                return process.wait()
            finally:
                with self._lock:
                    self._running.discard(process)


def execute(run: PlannedRun, extra: list[str], wandb: bool, env: dict[str, str] | None = None,
            children: Children | None = None) -> dict | None:
    """Run one arm x seed; return its result record, or None if it was interrupted (resumable)."""
    run.directory.mkdir(parents=True, exist_ok=True)
    (run.directory / "run.yaml").write_text(yaml.safe_dump(run_config(run, wandb), sort_keys=False))
    commit = git_commit()
    (run.directory / "git.txt").write_text(commit + "\n")
    cmd = command(run, extra)
    started = time.time()
    with (run.directory / "stdout.log").open("a") as out, (run.directory / "stderr.log").open("a") as err:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        returncode = (children or Children()).wait(cmd, cwd=REPO, env={**os.environ, **(env or {})},
                                                  stdout=out, stderr=err)
    record: dict[str, Any] = {
        "study": run.study.name, "arm": run.arm.name, "seed": run.seed, "tier": run.tier,
        "grid": {key: value for key, value in run.grid},
        "git_commit": commit, "command": cmd, "extra_args": extra,
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "duration_s": round(time.time() - started, 1),
    }
    # Killed, Ctrl-C (130), SIGTERM (143) or SIGUSR1 (138, a checkpoint-and-stop): resume later.
    if returncode < 0 or returncode in (130, 138, 143):
        return None
    metrics = read_metrics(run.directory)
    if returncode == 0 and run.study.metric in metrics:
        hparams = yaml.safe_load((run.directory / "hparams.yaml").read_text()) if (
            run.directory / "hparams.yaml").is_file() else {}
        record.update(status="completed", metrics=metrics, params=(hparams or {}).get("model/params"))
    else:
        stderr = (run.directory / "stderr.log").read_text(errors="replace")
        reason = _failure_reason(stderr) if returncode else f"finished without {run.study.metric}"
        record.update(status="failed", reason=reason, returncode=returncode)
    write_json_atomic(run.directory / "result.json", record)
    return record


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no CUDA at all is the common CPU case
        return 0


def sweep(runs: list[PlannedRun], extra: list[str], wandb: bool = False, retry_failed: bool = False,
          gpus: int | None = None, log=print, children: Children | None = None) -> list[dict]:
    """Execute the planned runs that have no result yet; return every run's record.

    After a stop signal (see ``Children``) the running runs checkpoint and stop, and no new one starts.
    """
    children = children or Children()
    todo = []
    for run in runs:
        result = read_result(run.directory)
        if result and (result["status"] == "completed" or not retry_failed):
            log(f"skip    {run.label}: {result['status']}")
        else:
            todo.append(run)
    gpus = _gpu_count() if gpus is None else gpus
    if gpus <= 1:
        for run in todo:
            if children.stop_signal:
                break
            log(f"run     {run.label}")
            _log_outcome(run, execute(run, extra, wandb, children=children), log)
    else:
        free: Queue[int] = Queue()
        for gpu in range(gpus):
            free.put(gpu)
        threads = []

        def worker(run: PlannedRun) -> None:
            gpu = free.get()
            try:
                if children.stop_signal:
                    return
                log(f"run     {run.label} on GPU {gpu}")
                _log_outcome(run, execute(run, [*extra, "--trainer.devices", "1"], wandb,
                                          env={"CUDA_VISIBLE_DEVICES": str(gpu)}, children=children), log)
            finally:
                free.put(gpu)

        for run in todo:
            while free.empty() and not children.stop_signal:
                time.sleep(1)
            if children.stop_signal:
                break
            thread = threading.Thread(target=worker, args=(run,))
            thread.start()
            threads.append(thread)
            time.sleep(0.1)  # let the worker take its GPU before the next one looks
        for thread in threads:
            thread.join()
    return [read_result(run.directory) or {"status": "missing", "arm": run.arm.name, "seed": run.seed}
            for run in runs]


def _log_outcome(run: PlannedRun, record: dict | None, log) -> None:
    if record is None:
        log(f"stopped {run.label}: interrupted; it resumes from its last checkpoint next time")
    elif record["status"] == "completed":
        log(f"done    {run.label}: {run.study.metric} = {record['metrics'][run.study.metric]:.2f} "
            f"({record['duration_s']:.0f} s)")
    else:
        log(f"FAILED  {run.label}: {record['reason']}")


def _split(values: str | None) -> list[str] | None:
    return [v.strip() for v in values.split(",") if v.strip()] if values else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="study name under experiments/studies, or a study folder")
    parser.add_argument("--tier", choices=TIERS, default="short",
                        help="schedule: the paper's (full), compressed (short), or a few steps (smoke)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per arm")
    parser.add_argument("--out", default=DEFAULT_OUT, help="root of the run directories (default: runs)")
    parser.add_argument("--only", help="comma-separated arms to run")
    parser.add_argument("--exclude", help="comma-separated arms to skip")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra ablate argument for every run, e.g. model.network.init_args.name=resnet20")
    parser.add_argument("--wandb", action="store_true", help="also log every run to W&B (offline without a key)")
    parser.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    parser.add_argument("--gpus", type=int, default=None, help="parallel runs, one per GPU (default: all visible)")
    parser.add_argument("--task-index", type=int, default=None,
                        help="run only the planned run with this index (a SLURM array task)")
    parser.add_argument("--list", action="store_true", help="print the planned runs and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    study = load_study(args.study)
    out = Path(args.out).resolve()
    runs = plan(study, args.tier, args.seeds, out, _split(args.only), _split(args.exclude))
    extra = [f"--{item}" if not item.startswith("--") else item for item in args.set]
    if args.list:
        for index, run in enumerate(runs):
            print(f"{index}\t{run.label}\t{run.directory}")
        return 0
    if args.task_index is not None:
        if not 0 <= args.task_index < len(runs):
            raise StudyError(f"--task-index {args.task_index} outside the {len(runs)} planned runs")
        runs = [runs[args.task_index]]
    with Children().forwarding() as children:
        if args.task_index is not None:
            records = sweep(runs, extra, args.wandb, args.retry_failed, gpus=1, children=children)
        else:
            with sweep_lock(out / study.name / args.tier):
                records = sweep(runs, extra, args.wandb, args.retry_failed, args.gpus, children=children)
    completed = sum(r["status"] == "completed" for r in records)
    failed = sum(r["status"] == "failed" for r in records)
    print(f"{study.name} [{args.tier}]: {completed} completed, {failed} failed, "
          f"{len(records) - completed - failed} missing of {len(records)} runs. "
          f"Report: ablate report {study.name} --tier {args.tier} --out {args.out}")
    if children.stop_signal:
        print(f"stopped by {children.stop_signal.name}; run the same command again to resume", file=sys.stderr)
        return 128 + int(children.stop_signal)
    return 0
