"""``ablate sweep <study>``: every arm x seed of a study, each run in its own directory.

    ablate sweep resnet_shortcuts --tier short --seeds 3
    ablate sweep all_cnn --tier full --seeds 5 --only all_cnn_c,model_c --out /scratch/runs
    ablate sweep resnet_depth --tier short --set model.network.init_args.name=resnet20

Each run is a separate ``ablate fit ... --test_after_fit true`` process (a crash or a NaN in one
arm cannot take the sweep down) writing ``<out>/<study>/<tier>/<arm>/seed_<k>/``: the resolved
``config.yaml``, ``fingerprint.json`` (what decides the result, ``experiments/studies/fingerprint.py``),
``metrics.csv``, checkpoints, its stdout/stderr, ``git.txt``, ``test_results.json`` (the final
model and the best checkpoint, both tested) and, only once the test pass has finished,
``result.json``. Before anything trains, every planned run is compared with what its folder holds:
a folder made by another configuration or code stops the sweep, naming the keys that differ, unless
``--changed rerun`` (moved to ``_superseded/``) or ``--changed keep`` says what to do. Completed
(and failed) runs of the same fingerprint are skipped on the next invocation; a run that was
interrupted resumes from its ``last.ckpt``. A run that cannot start (``ablate fit`` exits 2: a bad
config, missing data) stops the sweep and is not recorded; one that fails while training (exit 1)
is recorded as failed. The sweep exits 0 only when every planned run completed, 1 when any failed
or is missing, 2 on a setup error. SIGTERM or SIGUSR1 sent to
the sweep alone (``kill <pid>``) reaches its running ``ablate fit`` children too: each saves
``last.ckpt`` and exits, no new run starts, and the sweep exits with 128 + the signal. On a
machine with several GPUs, runs go one per GPU in parallel; on CPU they run one after another. A
SLURM array runs one planned run per task with ``--task-index``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any

import yaml

from experiments.studies.fingerprint import Fingerprint, resolve_fit_config
from experiments.studies.study import TIERS, Arm, Study, StudyError, grid_label, load_study, select_arms
from lightning_modules import run_lock
from lightning_modules.ablate_cli import EXIT_SETUP_ERROR, TEST_RESULTS
from lightning_modules.files import write_json_atomic, write_text_atomic
from lightning_modules.run_folders import CHECKPOINTS, LAST

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = "runs"
# Keys copied from a run's metrics.csv into its result record (the test metrics come from test_results.json):
# the last validation accuracy (the final model's, what a grid point is chosen on) and the best one.
RESULT_METRICS = ("val/acc", "val/acc_best")
# Where a sweep puts runs it replaced (a changed configuration, a retried failure): kept, never deleted.
SUPERSEDED = "_superseded"


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


class CorruptResult(ValueError):
    """A result.json that is not a whole JSON record (never written by a sweep: its writes are atomic)."""


def read_result(directory: Path) -> dict | None:
    """The run's result record; None when it has none.

    Raises:
        CorruptResult: result.json exists but does not hold a record.
    """
    path = directory / "result.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptResult(f"{path} is corrupt ({error})") from None
    if not isinstance(record, dict) or record.get("status") not in ("completed", "failed"):
        raise CorruptResult(f"{path} is corrupt (not a run's result record)")
    return record


@contextmanager
def sweep_lock(directory: Path) -> Iterator[None]:
    """One sweep per study tier directory at a time; a second one is refused with a clear message."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".sweep.lock"
    handle = path.open("a+")
    try:
        run_lock.lock(handle)
    except run_lock.LockHeld as busy:
        raise StudyError(
            f"another sweep ({busy.holder or 'another process'}) is running on {directory}; "
            "wait for it or use another --out"
        ) from None
    try:
        yield
    finally:
        run_lock.unlock(handle)


def run_config(run: PlannedRun, wandb: bool) -> dict[str, Any]:
    """The per-run config layered after base and arm: tier schedule, seed, loggers in the run dir."""
    directory = str(run.directory)
    loggers: list[dict[str, Any]] = [
        {
            "class_path": "pytorch_lightning.loggers.CSVLogger",
            "init_args": {"save_dir": directory, "name": "", "version": ""},
        },
        {
            "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
            "init_args": {
                "save_dir": directory,
                "name": "",
                "version": "",
                "sub_dir": "tensorboard",
                "default_hp_metric": False,
            },
        },
    ]
    if wandb:
        loggers.append(
            {
                "class_path": "lightning_modules.loggers.WandbLogger",
                "init_args": {
                    "project": "cnn-ablations",
                    "save_dir": directory,
                    "group": f"{run.study.name}-{run.tier}",
                    "name": f"{run.arm.name}-seed{run.seed}",
                    "tags": [run.study.name, run.tier, run.arm.name],
                },
            }
        )
    tier = run.study.tiers[run.tier] or {}
    trainer = {**tier.get("trainer", {}), "logger": loggers, "default_root_dir": directory}
    config: dict[str, Any] = {"seed_everything": run.seed, "trainer": trainer}
    for key, value in tier.items():
        if key != "trainer":
            config[key] = value
    return config


def fit_args(run: PlannedRun, run_yaml: Path, extra: list[str]) -> list[str]:
    """The ``ablate fit`` arguments of a run: base, arm and per-run config, grid point, ``--set``."""
    return [
        "--config",
        str(run.study.base),
        "--config",
        str(run.arm.config),
        "--config",
        str(run_yaml),
        *run.grid_args,
        *extra,
    ]


def command(run: PlannedRun, extra: list[str]) -> list[str]:
    # Both the final model (the papers' protocol) and the best checkpoint by val/acc are tested;
    # the study's `test_model` says which one its table compares.
    cmd = [
        sys.executable,
        "-m",
        "experiments.cli",
        "fit",
        *fit_args(run, run.directory / "run.yaml", extra),
        "--test_after_fit",
        "true",
        "--test_checkpoint",
        "both",
    ]
    resume = resume_checkpoint(run.directory)
    if resume is not None:
        cmd += ["--ckpt_path", str(resume)]
    return cmd


def resume_checkpoint(directory: Path) -> Path | None:
    """The newest of the run's ``last.ckpt`` and SLURM's pre-emption ``hpc_ckpt_*.ckpt``.

    An explicit ``--ckpt_path`` beats Lightning's own HPC resume, so the runner must pick the
    newer one itself or a requeued task would restart from its last validation checkpoint.
    """
    candidates = [p for p in (directory / CHECKPOINTS / LAST, *directory.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
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


def planned_fingerprint(run: PlannedRun, extra: list[str], wandb: bool) -> Fingerprint:
    """The fingerprint of the configuration ``execute`` will train, resolved without training anything."""
    with tempfile.TemporaryDirectory() as folder:
        run_yaml = Path(folder) / "run.yaml"
        run_yaml.write_text(yaml.safe_dump(run_config(run, wandb), sort_keys=False))
        try:
            return Fingerprint.of(resolve_fit_config(fit_args(run, run_yaml, extra)), run.tier)
        except StudyError as error:
            raise StudyError(f"{run.label}: {error}") from None


class SetupError(StudyError):
    """A run that could not start (configuration, data, checkpoint): the sweep stops, nothing is recorded."""


def execute(
    run: PlannedRun,
    extra: list[str],
    wandb: bool,
    fingerprint: Fingerprint,
    env: dict[str, str] | None = None,
    children: Children | None = None,
) -> dict | None:
    """Run one arm x seed; return its result record, or None if it was interrupted (resumable).

    Raises:
        SetupError: the run could not start; its folder keeps the logs and no record.
    """
    run.directory.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.directory / "run.yaml", yaml.safe_dump(run_config(run, wandb), sort_keys=False))
    fingerprint.write(run.directory)
    write_text_atomic(run.directory / "git.txt", fingerprint.commit + "\n")
    cmd = command(run, extra)
    started = time.time()
    with (run.directory / "stdout.log").open("a") as out, (run.directory / "stderr.log").open("a") as err:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        returncode = (children or Children()).wait(
            cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=out, stderr=err
        )
    record: dict[str, Any] = {
        "study": run.study.name,
        "arm": run.arm.name,
        "seed": run.seed,
        "tier": run.tier,
        "grid": {key: value for key, value in run.grid},
        "fingerprint": fingerprint.value,
        "git_commit": fingerprint.commit,
        "code": fingerprint.config["code"],
        "command": cmd,
        "extra_args": extra,
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "duration_s": round(time.time() - started, 1),
    }
    # Killed, Ctrl-C (130), SIGTERM (143) or SIGUSR1 (138, a checkpoint-and-stop): resume later.
    if returncode < 0 or returncode in (130, 138, 143):
        return None
    stderr = (run.directory / "stderr.log").read_text(errors="replace")
    if returncode == EXIT_SETUP_ERROR:
        # Not a result of the arm: the next sweep plans this run afresh, whatever the fix changed.
        (run.directory / "fingerprint.json").unlink(missing_ok=True)
        raise SetupError(f"{run.label} could not start: {_failure_reason(stderr)} (logs: {run.directory})")
    if returncode == 0:
        record.update(_completed(run, fingerprint))
    else:
        reason = _failure_reason(stderr)
        record.update(
            status="failed", reason=reason, returncode=returncode, diverged=reason.startswith("NonFiniteLossError")
        )
    write_json_atomic(run.directory / "result.json", record)
    return record


def _completed(run: PlannedRun, fingerprint: Fingerprint) -> dict[str, Any]:
    """The record of a run that exited 0: its test errors, or why they cannot be trusted."""
    config = run.directory / "config.yaml"
    ran = Fingerprint.of_file(config, run.tier) if config.is_file() else None
    if ran is None or ran.value != fingerprint.value:
        keys = ", ".join(fingerprint.differs_from(ran)[:8]) if ran else "no config.yaml was saved"
        return {"status": "failed", "reason": f"the run's saved config is not the planned one ({keys})"}
    try:
        tests = json.loads((run.directory / TEST_RESULTS).read_text())
    except (OSError, ValueError):
        tests = {}
    chosen = tests.get(run.study.test_model) or {}
    metrics = {**read_metrics(run.directory), **chosen.get("metrics", {})}
    if run.study.metric not in metrics:
        return {
            "status": "failed",
            "reason": f"finished without {run.study.metric} of the {run.study.test_model} model",
        }
    hparams_file = run.directory / "hparams.yaml"
    hparams = yaml.safe_load(hparams_file.read_text()) if hparams_file.is_file() else {}
    return {
        "status": "completed",
        "metrics": metrics,
        "tested": run.study.test_model,
        "test_final": (tests.get("final") or {}).get("metrics"),
        "test_best": (tests.get("best") or {}).get("metrics"),
        "best_checkpoint": (tests.get("best") or {}).get("checkpoint"),
        "params": (hparams or {}).get("model/params"),
    }


@dataclass(frozen=True)
class Conflict:
    """A planned run whose folder holds a run of another configuration (or an unreadable record)."""

    run: PlannedRun
    reason: str
    finished: bool  # it holds a result that --changed keep may keep


def find_conflicts(runs: list[PlannedRun], fingerprints: dict[Path, Fingerprint]) -> list[Conflict]:
    """The planned runs whose folders already hold something that was not planned the same way."""
    conflicts = []
    for run in runs:
        folder = run.directory
        checkpoints = list((folder / "checkpoints").glob("*.ckpt")) if (folder / "checkpoints").is_dir() else []
        if not ((folder / "result.json").exists() or (folder / "fingerprint.json").exists() or checkpoints):
            continue
        try:
            record = read_result(folder)
        except CorruptResult as error:
            conflicts.append(Conflict(run, str(error), finished=False))
            continue
        stored, planned = Fingerprint.read(folder), fingerprints[folder]
        if stored is None:
            conflicts.append(
                Conflict(run, "made before runs were fingerprinted (no fingerprint.json)", finished=record is not None)
            )
        elif stored.value != planned.value:
            keys = planned.differs_from(stored)
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            conflicts.append(
                Conflict(
                    run, f"fingerprint {stored.value} -> {planned.value}, changed: {shown}", finished=record is not None
                )
            )
    return conflicts


def supersede(run: PlannedRun, stamp: str) -> Path:
    """Move a run's folder aside, under ``<study>/<tier>/_superseded/<stamp>/``; never deleted."""
    tier_dir = run.directory.parents[2 if run.grid else 1]  # <tier>/<arm>[/<grid point>]/seed_<k>
    target = tier_dir / SUPERSEDED / stamp / run.directory.relative_to(tier_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run.directory, target)
    return target


def resolve_conflicts(conflicts: list[Conflict], changed: str | None, stamp: str, log=print) -> set[Path]:
    """Stop (no ``--changed``), move the conflicting runs aside (``rerun``), or keep their results (``keep``).

    Returns:
        The folders whose results are kept knowingly.
    """
    if not conflicts:
        return set()
    if changed is None:
        for conflict in conflicts:
            print(f"changed {conflict.run.label}: {conflict.reason}", file=sys.stderr)
        raise StudyError(
            f"{len(conflicts)} planned run(s) (listed above) already have a folder made by another configuration "
            f"or code; nothing was trained. Rerun them with --changed rerun (the old folders move to {SUPERSEDED}/), "
            "or keep their results knowingly with --changed keep (the report flags them)."
        )
    kept = set()
    for conflict in conflicts:
        if changed == "keep" and conflict.finished:
            log(f"keep    {conflict.run.label}: {conflict.reason}")
            kept.add(conflict.run.directory)
        else:
            log(f"moved   {conflict.run.label} to {supersede(conflict.run, stamp)}: {conflict.reason}")
    return kept


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no CUDA at all is the common CPU case
        return 0


def sweep(
    runs: list[PlannedRun],
    extra: list[str],
    wandb: bool = False,
    retry_failed: bool = False,
    gpus: int | None = None,
    log=print,
    children: Children | None = None,
    changed: str | None = None,
) -> tuple[list[dict], int]:
    """Execute the planned runs that have no result yet; return every run's record and how many were skipped.

    Before anything trains, every planned run's fingerprint is compared with what its folder holds
    (``resolve_conflicts``). After a stop signal (see ``Children``) the running runs checkpoint and
    stop, and no new one starts; after a setup error no new one starts and ``SetupError`` is raised.
    """
    children = children or Children()
    fingerprints = {run.directory: planned_fingerprint(run, extra, wandb) for run in runs}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")  # one _superseded/<stamp> per sweep
    kept = resolve_conflicts(find_conflicts(runs, fingerprints), changed, stamp, log)
    todo, skipped = [], 0
    for run in runs:
        result = read_result(run.directory)
        if result and (result["status"] == "completed" or not retry_failed):
            note = " (another configuration, kept)" if run.directory in kept else ""
            note += "; --retry-failed runs it again" if result["status"] == "failed" else ""
            log(f"skip    {run.label}: {result['status']}{note}")
            skipped += 1
        else:
            if result:  # a failed run to retry: start afresh, the failure kept aside
                log(f"moved   {run.label} to {supersede(run, stamp)}: retrying a failed run")
            todo.append(run)
    setup_errors: list[SetupError] = []
    gpus = _gpu_count() if gpus is None else gpus
    if gpus <= 1:
        for run in todo:
            if children.stop_signal or setup_errors:
                break
            log(f"run     {run.label}")
            try:
                _log_outcome(run, execute(run, extra, wandb, fingerprints[run.directory], children=children), log)
            except SetupError as error:
                setup_errors.append(error)
    else:
        free: Queue[int] = Queue()
        for gpu in range(gpus):
            free.put(gpu)
        threads = []

        def worker(run: PlannedRun) -> None:
            gpu = free.get()
            try:
                if children.stop_signal or setup_errors:
                    return
                log(f"run     {run.label} on GPU {gpu}")
                _log_outcome(
                    run,
                    execute(
                        run,
                        [*extra, "--trainer.devices", "1"],
                        wandb,
                        fingerprints[run.directory],
                        env={"CUDA_VISIBLE_DEVICES": str(gpu)},
                        children=children,
                    ),
                    log,
                )
            except SetupError as error:
                setup_errors.append(error)
            finally:
                free.put(gpu)

        for run in todo:
            while free.empty() and not children.stop_signal:
                time.sleep(1)
            if children.stop_signal or setup_errors:
                break
            thread = threading.Thread(target=worker, args=(run,))
            thread.start()
            threads.append(thread)
            time.sleep(0.1)  # let the worker take its GPU before the next one looks
        for thread in threads:
            thread.join()
    if setup_errors:
        raise setup_errors[0]
    return [
        read_result(run.directory) or {"status": "missing", "arm": run.arm.name, "seed": run.seed} for run in runs
    ], skipped


def _log_outcome(run: PlannedRun, record: dict | None, log) -> None:
    if record is None:
        log(f"stopped {run.label}: interrupted; it resumes from its last checkpoint next time")
    elif record["status"] == "completed":
        log(
            f"done    {run.label}: {run.study.metric} = {record['metrics'][run.study.metric]:.2f} "
            f"of the {record['tested']} model ({record['duration_s']:.0f} s)"
        )
    else:
        log(f"FAILED  {run.label}: {record['reason']}")


def split_names(values: str | None) -> list[str] | None:
    """``--only``/``--exclude``'s comma-separated arm names as a list (None when not given)."""
    return [v.strip() for v in values.split(",") if v.strip()] if values else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="study name under experiments/studies, or a study folder")
    parser.add_argument(
        "--tier",
        choices=TIERS,
        default="short",
        help="schedule: the paper's (full), compressed (short), or a few steps (smoke)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per arm")
    parser.add_argument("--out", default=DEFAULT_OUT, help="root of the run directories (default: runs)")
    parser.add_argument("--only", help="comma-separated arms to run")
    parser.add_argument("--exclude", help="comma-separated arms to skip")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ablate argument for every run, e.g. model.network.init_args.name=resnet20",
    )
    parser.add_argument("--wandb", action="store_true", help="also log every run to W&B (offline without a key)")
    parser.add_argument(
        "--retry-failed", action="store_true", help="run failed runs again (the failed folders move to _superseded/)"
    )
    parser.add_argument(
        "--changed",
        choices=("rerun", "keep"),
        default=None,
        help="when a run's folder holds a run of another configuration or code: train it again "
        "(the old folder moves to _superseded/) or keep its result knowingly; without it the "
        "sweep stops before training anything and names the keys that differ",
    )
    parser.add_argument("--gpus", type=int, default=None, help="parallel runs, one per GPU (default: all visible)")
    parser.add_argument(
        "--task-index", type=int, default=None, help="run only the planned run with this index (a SLURM array task)"
    )
    parser.add_argument("--list", action="store_true", help="print the planned runs and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    study = load_study(args.study)
    out = Path(args.out).resolve()
    runs = plan(study, args.tier, args.seeds, out, split_names(args.only), split_names(args.exclude))
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
            records, skipped = sweep(
                runs, extra, args.wandb, args.retry_failed, gpus=1, children=children, changed=args.changed
            )
        else:
            with sweep_lock(out / study.name / args.tier):
                records, skipped = sweep(
                    runs, extra, args.wandb, args.retry_failed, args.gpus, children=children, changed=args.changed
                )
    completed = sum(r["status"] == "completed" for r in records)
    failed = sum(r["status"] == "failed" for r in records)
    missing = len(records) - completed - failed
    print(f"Report: ablate report {study.name} --tier {args.tier} --out {args.out}")
    if children.stop_signal:
        print(f"stopped by {children.stop_signal.name}; run the same command again to resume", file=sys.stderr)
    print(
        f"{study.name} [{args.tier}]: {completed} completed, {failed} failed, {skipped} skipped (done before), "
        f"{missing} missing of {len(records)} planned runs"
    )
    if children.stop_signal:
        return 128 + int(children.stop_signal)
    return 1 if failed or missing else 0
