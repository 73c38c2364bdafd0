"""Runs that survive a kill, resume exactly, refuse unsafe checkpoints and fail with one clear line.

Issue #8. What this module gives ``ablate`` (README, "Reliability"):

- ``CheckpointOnSignal``: on SIGTERM (Lightning's own SIGTERM handling is kept) or SIGUSR1 (only
  outside SLURM auto-requeue, where Lightning's ``SLURMEnvironment`` owns that signal), save
  ``checkpoints/last.ckpt`` at the next training batch end and exit with status 128 + signal.
- ``ExactResume``: the torch, CUDA, NumPy and Python RNG states travel in every checkpoint, so a
  run resumed at an epoch boundary draws the same shuffles, augmentations and dropout masks as the
  uninterrupted run and ends with bitwise identical weights; the loggers are flushed with every
  checkpoint, so ``metrics.csv`` on disk holds the rows up to it.
- ``load_checkpoint`` / ``check_checkpoint_fits``: ``weights_only=True`` loading (no code can run
  from the file) with plain-words errors for missing, truncated, unsafe and mismatched checkpoints.
- ``find_last_checkpoint``: ``--ckpt_path last`` means the newest ``last.ckpt`` of this
  experiment's logger folder, and a resumed ``fit`` logs into that same ``version_N``.
- ``prepare_run`` / ``check_run``: configuration checks the CLI runs before any data is read.
- ``ConfigErrorParser``: jsonargparse's multi-line errors end with one ``ablate: error:`` line.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import random
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

LAST = "last.ckpt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, unsafe, or from another network."""


class ConfigError(ValueError):
    """A configuration that parses but cannot be what the user meant (the message says why)."""


class TrainingInterrupted(SIGTERMException):
    """Raised after ``CheckpointOnSignal`` saved ``last.ckpt``; the exit status is 128 + the signal.

    A subclass of Lightning's ``SIGTERMException`` (a ``SystemExit``), so Lightning tears down as
    for its own SIGTERM stop and ``ablate`` exits with ``code`` (143 for SIGTERM, 138 for SIGUSR1).
    """


# ----- signals --------------------------------------------------------------------------------


def _slurm_owns_sigusr1(trainer: pl.Trainer) -> bool:
    from lightning_fabric.plugins.environments import SLURMEnvironment

    environment = trainer._accelerator_connector.cluster_environment
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """Where ``last.ckpt`` goes: the checkpoint callback's folder, else ``<log_dir>/checkpoints``."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / LAST


class CheckpointOnSignal(Callback):
    """Save ``last.ckpt`` and stop when the job is told to go (preemption, ``scancel``, time limit).

    The handlers only set a flag; at the next training batch end every process agrees (one
    boolean all-reduce under DDP), ``trainer.save_checkpoint`` writes ``last.ckpt`` atomically
    beside the epoch checkpoints, and the run stops with exit status 128 + signal (143 for
    SIGTERM, 138 for SIGUSR1), which ``ablate sweep`` treats as interrupted and resumes later.
    The checkpoint holds the position inside the epoch, so ``--ckpt_path last`` continues there.

    It stops by raising (as Lightning does for its own SIGTERM stop) rather than by
    ``trainer.should_stop``: a normal stop ends the epoch, so its epoch-end hooks run and the
    ``last`` ``ModelCheckpoint`` rewrites ``last.ckpt`` with a state that counts the interrupted
    epoch as finished (a resume would skip its remaining batches), and ``--test_after_fit`` would
    test a half-trained model as if it were the result.

    A signal during validation: Lightning stops at the next validation batch for SIGTERM (no new
    checkpoint; the previous ``last.ckpt`` stands); SIGUSR1 waits for the next training batch.

    Args:
        signals: Signal names to handle. SIGUSR1 is left to Lightning's ``SLURMEnvironment`` when
            it runs with auto-requeue (it then saves an ``hpc_ckpt`` and requeues the job).
    """

    def __init__(self, signals: list[str] | None = None) -> None:
        names = ["SIGTERM", "SIGUSR1"] if signals is None else list(signals)
        unknown = [name for name in names if not isinstance(getattr(signal, name, None), signal.Signals)]
        if unknown:
            raise ValueError(f"unknown signal name(s) {', '.join(unknown)}; e.g. SIGTERM, SIGUSR1")
        self.signals = [signal.Signals[name] for name in names]
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Installed before Lightning registers its own SIGTERM handler (Trainer._run), which then
        # calls ours as well, so its DDP broadcast and launcher clean-up keep working.
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self.received = None
        for signum in self.signals:
            if signum == signal.SIGUSR1 and _slurm_owns_sigusr1(trainer):
                continue
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum)
        previous = self._previous.get(self.received)
        if callable(previous):
            previous(signum, frame)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        received = self.received or signal.SIGTERM  # a process told by another rank
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full state a resume needs (says so: no log line)
        _say(f"ablate: interrupted by {received.name}: saved {path.resolve()} at step {trainer.global_step} "
             f"(epoch {trainer.current_epoch}); resume with --ckpt_path last")
        raise TrainingInterrupted(128 + int(received))


@rank_zero_only
def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----- what a resumed run needs beyond Lightning's checkpoint -------------------------------------


class ExactResume(Callback):
    """Carry the RNG states in checkpoints and restore them on resume; flush the loggers with
    every checkpoint.

    Lightning restores weights, optimiser, schedule and loop counters but not the random number
    generators, and the default ``RandomSampler`` draws each epoch's order from the global torch
    RNG; without this callback a resumed run shuffles differently from the uninterrupted one.
    The states are plain tensors, ints and tuples, so checkpoints still load with
    ``weights_only=True``. Under DDP every process restores rank 0's states (which equal its own
    under ``seed_everything``, as every process draws the same numbers).

    The CSV logger writes its rows every ``flush_logs_every_n_steps`` (100) steps; a run killed in
    between would lose them. Flushing whenever a checkpoint is written (and when an epoch starts,
    for the previous epoch's training averages) keeps ``metrics.csv`` as complete as the checkpoint.
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            logger.save()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.save()

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)),
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ----- loading checkpoints safely ----------------------------------------------------------------


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint read with ``weights_only=True``: tensors and plain data only, no code runs.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or holds pickled Python
            objects (which could run code when loaded), each said in plain words.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the file, e.g. {path / 'checkpoints' / LAST}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):  # legacy (non-zip) files cannot be memory-mapped
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            blocked = re.search(r"(?:unsupported|Unsupported) (?:GLOBAL|global:? )\s*(?:GLOBAL )?([\w.]+)", str(error))
            what = f" (it would call {blocked.group(1)})" if blocked else ""
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled Python objects{what}, which can run code when "
                "loaded. Checkpoints are read with weights_only=True (tensors and plain data only); "
                "use a checkpoint written by `ablate fit`, or re-save a trusted file's state_dict."
            ) from None
        raise CheckpointError(_corrupt(path, error)) from None
    except Exception as error:  # OSError, EOFError, zip errors: all mean "not a whole checkpoint"
        raise CheckpointError(_corrupt(path, error)) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint


def _corrupt(path: Path, error: BaseException) -> str:
    cause = str(error).splitlines()[0] if str(error) else type(error).__name__
    return (
        f"{path} is not a readable checkpoint: it is truncated or corrupt ({cause}; {path.stat().st_size:,} bytes). "
        "Use another checkpoint (the epoch checkpoints beside it) or the run's previous last.ckpt."
    )


def _trained_with(path: Path) -> str:
    """``" (trained with <network>)"`` from the ``config.yaml`` beside the run's checkpoints."""
    config_file = path.resolve().parent.parent / "config.yaml"
    try:
        network = yaml.safe_load(config_file.read_text())["model"]["network"]
        args = network.get("init_args") or {}
        label = args.get("name") or network["class_path"].rsplit(".", 1)[-1]
        return f" (trained with {label}; its config: {config_file})"
    except Exception:  # no config beside it, or another layout: the hint is optional
        return ""


def check_checkpoint_fits(model: torch.nn.Module, checkpoint: dict[str, Any], path: str | Path) -> None:
    """Raise ``CheckpointError`` naming the difference when the weights do not fit ``model``.

    Lightning would fail too, but with torch's list of every mismatched tensor; this says which
    of "another network", "another number of classes" or "another number of input channels".
    """
    path = Path(path)
    saved = checkpoint.get("state_dict")
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{path} holds no model weights ('state_dict'); to start from plain weights use --model.weights {path}"
        )
    expected = model.state_dict()
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    if (missing or unexpected) and getattr(model, "strict_loading", True):
        network = type(getattr(model, "network", model)).__name__
        raise CheckpointError(
            f"{path} holds the weights of another network{_trained_with(path)}: {len(unexpected)} of its tensors "
            f"have no place in this {network} (e.g. {', '.join(unexpected[:2]) or '-'}) and {len(missing)} of the "
            f"network's are missing (e.g. {', '.join(missing[:2]) or '-'}). Use the configuration it was trained with."
        )
    mismatched = [
        (key, tuple(saved[key].shape), tuple(value.shape))
        for key, value in expected.items()
        if key in saved and tuple(saved[key].shape) != tuple(value.shape)
    ]
    if not mismatched:
        _check_finite(saved, path)
        return
    num_classes = getattr(model, "num_classes", None)
    in_chans = getattr(getattr(model, "network", model), "in_chans", None)
    # The head differs in its first dimension (the classes); the stem's convolution in its second.
    heads = [(key, old, new) for key, old, new in mismatched
             if old[0] != new[0] and new[0] == num_classes and old[1:] == new[1:]]
    stems = [(key, old, new) for key, old, new in mismatched
             if len(old) == 4 and old[1] != new[1] and new[1] == in_chans and (old[0], *old[2:]) == (new[0], *new[2:])]
    reasons = []
    if heads:
        key, was, now = heads[0]
        reasons.append(f"it was trained for {was[0]} classes but this run's data has {num_classes} "
                       f"({key} is {list(was)} in the checkpoint, {list(now)} here)")
    if stems:
        key, was, now = stems[0]
        reasons.append(f"it was trained on {was[1]}-channel images but this run's data has {in_chans} "
                       f"({key} is {list(was)} in the checkpoint, {list(now)} here)")
    if reasons and len(heads) + len(stems) == len(mismatched):
        raise CheckpointError(
            f"{path} does not fit this run's data: {'; and '.join(reasons)}. Use it on the data it was trained on, "
            f"or fine-tune from it with --model.weights {path} (a new head is initialised)."
        )
    key, was, now = mismatched[0]
    raise CheckpointError(
        f"{path} does not fit this network{_trained_with(path)}: {len(mismatched)} tensor(s) differ in shape, "
        f"e.g. {key} is {list(was)} in the checkpoint, {list(now)} here. Use the configuration it was trained with."
    )


def _check_finite(state_dict: dict[str, Any], path: Path) -> None:
    """A checkpoint with NaN or infinite weights (saved by a run that diverged) evaluates to chance or
    NaN while looking like a result; refused before it is used."""
    tensors = [value for value in state_dict.values() if isinstance(value, torch.Tensor)]
    bad = [value for value in tensors if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite weights ({len(bad)} of {len(tensors)} tensors have NaN or inf values); it is "
            "not a trained model (the run that saved it diverged). Use an earlier checkpoint of that run"
        )


# ----- `--ckpt_path last` ------------------------------------------------------------------------


def _get(namespace: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if namespace is None:
            return default
        namespace = namespace.get(key) if hasattr(namespace, "get") else getattr(namespace, key, None)
    return default if namespace is None else namespace


def _newest_last(folder: Path) -> Path | None:
    found = [path for path in folder.glob("last*.ckpt") if re.fullmatch(r"last(-v\d+)?\.ckpt", path.name)]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def find_last_checkpoint(trainer_config: Any) -> tuple[Path | None, int | str | None]:
    """The newest ``last.ckpt`` this trainer configuration writes, and the logger version it is in.

    Lightning resolves ``ckpt_path="last"`` inside the checkpoint folder of the *current* logger
    version, which a fresh process numbers anew (``version_{N+1}``), so it never finds the file.
    Here: a ``ModelCheckpoint`` with an explicit ``dirpath`` is looked in; else the first logger's
    ``<save_dir>/<name>/<version>/checkpoints`` when its version is fixed, else the highest
    ``version_N`` under ``<save_dir>/<name>`` that has ``checkpoints/last.ckpt``.

    Returns:
        ``(path, version)``: version is the ``N`` to log into (None when the configuration fixes
        the folder); path is None when nothing was found.
    """
    for callback in _as_list(_get(trainer_config, "callbacks")):
        if str(_get(callback, "class_path", default="")).endswith("ModelCheckpoint"):
            dirpath = _get(callback, "init_args", "dirpath")
            if dirpath:
                return _newest_last(Path(dirpath)), None
    located = _logger_root(trainer_config)
    if located is None:
        return None, None  # other loggers keep their own run folders: leave "last" to Lightning
    root, version = located
    if root is None:
        return _newest_last(Path(version) / "checkpoints"), None
    if version is not None:
        folder = root / (version if isinstance(version, str) else f"version_{version}")
        return _newest_last(folder / "checkpoints"), None
    versions = sorted(
        (int(folder.name.removeprefix("version_")), folder)
        for folder in (root.glob("version_*") if root.is_dir() else [])
        if folder.name.removeprefix("version_").isdigit()
    )
    for number, folder in reversed(versions):
        path = _newest_last(folder / "checkpoints")
        if path is not None:
            return path, number
    return None, None


def _logger_root(trainer_config: Any) -> tuple[Path | None, Any] | None:
    """Where the first file logger writes: ``(root, version)``, the run folder being
    ``root/version_N`` (or ``root/<version>`` for a string); ``(None, folder)`` when there is no
    logger and ``folder`` is the run folder itself; None for loggers that keep their own folders."""
    loggers = _as_list(_get(trainer_config, "logger"))
    default_root = Path(_get(trainer_config, "default_root_dir", default=os.getcwd()))
    if not loggers or loggers[0] is False:
        return None, default_root
    first = loggers[0]
    if first is True:  # Lightning's default TensorBoardLogger
        return default_root / "lightning_logs", None
    if not str(_get(first, "class_path", default="")).endswith(("CSVLogger", "TensorBoardLogger")):
        return None
    args = _get(first, "init_args")
    name = _get(args, "name", default="lightning_logs")
    return Path(_get(args, "save_dir", default=default_root)) / (name or ""), _get(args, "version")


def fixed_run_folder(trainer_config: Any) -> Path | None:
    """The run folder when the configuration names it (a fixed logger version, as in the config.yaml
    of a sweep's run), else None: Lightning then numbers a new ``version_N`` for every run."""
    located = _logger_root(trainer_config)
    if located is None:
        return None
    root, version = located
    if root is None:
        return Path(version)
    if version is None:
        return None
    return root / (version if isinstance(version, str) else f"version_{version}")


def refuse_to_overwrite_a_finished_run(trainer_config: Any, ckpt_path: Any) -> None:
    """A ``fit`` into a folder that holds a finished run would replace its metrics.csv, its
    ``last.ckpt`` and its best checkpoint, while its ``result.json`` kept the old numbers."""
    folder = fixed_run_folder(trainer_config)
    if folder is None or not folder.is_dir():
        return
    fresh = "give the run a folder of its own (e.g. --trainer.logger.init_args.save_dir runs/again)"
    if (folder / "result.json").is_file():
        raise ConfigError(
            f"{folder} holds a finished run (result.json): fitting into it would replace its metrics and "
            f"checkpoints. To train this configuration again, {fresh}."
        )
    checkpoints = sorted((folder / "checkpoints").glob("*.ckpt")) if (folder / "checkpoints").is_dir() else []
    if checkpoints and ckpt_path is None:
        raise ConfigError(
            f"{folder} already holds checkpoints ({', '.join(path.name for path in checkpoints[:3])}): a new run "
            f"would overwrite them. Resume it with --ckpt_path last, or {fresh}."
        )


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ----- checks the CLI runs ----------------------------------------------------------------------


def prepare_run(config: Any) -> dict[str, Any] | None:
    """Check and complete the parsed configuration of ``fit``/``validate``/``test``/``predict``.

    Sets ``weights_only`` to True unless given; resolves ``--ckpt_path last`` (for ``fit``, the
    resumed run logs into the checkpoint's ``version_N``); loads the checkpoint safely; refuses
    a missing data module and a learning rate of 0.

    Returns:
        The loaded checkpoint (for ``check_run``), or None when the run starts from scratch.
    """
    subcommand = config.get("subcommand")
    if subcommand is None:
        return None
    run = config[subcommand]
    if run.get("weights_only") is None:
        run["weights_only"] = True
    if run.get("data") is None:
        raise ConfigError(
            "no data module: give --data (e.g. --data datamodules.MNISTDataModule --data.data_dir DIR) "
            "or a --config that sets `data:`"
        )
    if subcommand == "fit":
        from lightning_modules import run_guards

        _check_learning_rate(run)
        run_guards.check_run_has_an_end(run)
        run_guards.check_test_after_fit_trains(run)
        run_guards.check_checkpointing(run)
        refuse_to_overwrite_a_finished_run(run.get("trainer"), run.get("ckpt_path"))
    ckpt_path = run.get("ckpt_path")
    if ckpt_path == "last":
        path, version = find_last_checkpoint(run.get("trainer"))
        if path is None and subcommand != "fit":
            raise CheckpointError(
                f"--ckpt_path last: no last.ckpt in this configuration's run folders; nothing to {subcommand}. "
                "Give the checkpoint's path."
            )
        if path is None:
            _say("ablate: --ckpt_path last: no last.ckpt yet in this experiment's run folders; starting a new run")
            run["ckpt_path"] = None
            return None
        if subcommand == "fit" and version is not None:
            # Log into the interrupted run's folder (other file loggers follow the first one's version).
            _as_list(run["trainer"]["logger"])[0]["init_args"]["version"] = version
        _say(f"ablate: --ckpt_path last: {'resuming from' if subcommand == 'fit' else 'using'} {path}")
        run["ckpt_path"] = ckpt_path = str(path)
    if subcommand in ("validate", "test", "predict"):
        from lightning_modules.run_folders import log_into_checkpoint_run

        log_into_checkpoint_run(run)  # the run the checkpoint belongs to, not a new version_N
    if ckpt_path in (None, "best", "hpc") or str(ckpt_path).startswith(("http://", "https://", "s3://", "gs://")):
        return None
    if not run["weights_only"]:
        return None  # the user vouched for the file (--weights_only false): Lightning loads it as asked
    return load_checkpoint(ckpt_path)


def _check_learning_rate(run: Any) -> None:
    # A negative rate fails when the classifier builds its optimiser (torch: "Invalid learning rate");
    # torch accepts 0, which trains nothing.
    lr = _get(run, "model", "optimizer", "init_args", "lr")
    scheduler = _get(run, "model", "lr_scheduler")
    sets_lr = _get(scheduler, "init_args", "max_lr") is not None  # OneCycleLR, CyclicLR drive the rate
    if isinstance(lr, (int, float)) and lr == 0 and not sets_lr:
        raise ConfigError(
            "the learning rate must be positive, got model.optimizer.init_args.lr=0; with 0 the weights never change"
        )


def check_run(cli: Any, checkpoint: dict[str, Any] | None) -> Path | None:
    """Checks once the classes exist: explicit ``num_classes``/``in_chans`` that contradict the
    data, evaluation without trained weights, a checkpoint that does not fit the network (or holds
    non-finite weights), a resume that changes the run's settings; then the run folder is locked
    for this process. Runs before any data is read.

    Returns:
        The run folder this process now holds (``run_lock``; the CLI releases it when the run
        ends), or None.
    """
    from lightning_modules import run_guards, run_lock

    subcommand = cli.subcommand
    run = cli.config[subcommand] if subcommand else cli.config  # run=False: no subcommand level
    _check_linked_values(run, cli.datamodule)
    if subcommand:
        run_guards.check_needs_weights(subcommand, run, cli.model)
    if checkpoint is not None:
        check_checkpoint_fits(cli.model, checkpoint, run["ckpt_path"])
    folder = lock_run_folder(cli.trainer, run.get("trainer")) if subcommand else None
    try:
        if subcommand == "fit" and run.get("ckpt_path") not in (None, "best", "hpc"):
            # Compared as SaveConfigCallback would write it, so equal settings compare equal.
            current = yaml.safe_load(cli._parser(subcommand).dump(run, skip_none=False)) or {}
            run_guards.check_resumed_config(current, fixed_run_folder(run.get("trainer")), run["ckpt_path"])
        if subcommand:
            from lightning_modules.run_folders import EVERY_ROW, open_metrics_history

            # Evaluating a run in its own folder adds rows to its metrics.csv; a resumed fit keeps the
            # rows before its checkpoint's step (it logs the later ones again); a new fit starts empty.
            resume_step = EVERY_ROW if subcommand != "fit" else int((checkpoint or {}).get("global_step", 0))
            open_metrics_history(cli.trainer, resume_step)
            from lightning_modules.loggers import group_by_experiment

            group_by_experiment(cli.trainer.loggers)  # as experiments/presets/wandb.yaml promises
    except BaseException:
        if folder is not None:
            run_lock.release(folder)
        raise
    return folder


def lock_run_folder(trainer: pl.Trainer, trainer_config: Any) -> Path | None:
    """Hold the run folder for this process (``run_lock``); refuse when another process holds it.

    The folder is the configured one (a fixed logger version, as a sweep's or a resumed run's) or,
    for a new ``version_N``, the first file logger's; two new runs that counted the same N at once
    do not clash: the later one takes the next number. Only global rank 0 locks (DDP's other ranks
    write nothing into the folder and must not wait for it). W&B-only runs keep their own folders.
    """
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from lightning_modules import run_lock

    if trainer.global_rank != 0:
        return None
    folder = fixed_run_folder(trainer_config)
    logger = trainer.loggers[0] if trainer.loggers else None
    numbered = folder is None and isinstance(logger, (CSVLogger, TensorBoardLogger))
    if folder is None and not numbered:
        return None
    for _ in range(1000):
        if numbered:
            version = logger.version
            folder = Path(logger.root_dir) / (version if isinstance(version, str) else f"version_{version}")
        try:
            return folder if run_lock.acquire(folder) else None
        except run_lock.RunFolderInUse as busy:
            if not numbered or not isinstance(logger.version, int):
                holder = run_lock.describe_holder(busy.holder)
                raise ConfigError(f"run folder {busy.folder} is in use by another ablate process ({holder}); "
                                  "wait for it or choose another folder") from None
            for each in trainer.loggers:  # the loggers share the version (cli._align_logger_versions)
                if hasattr(each, "_version"):
                    each._version = version + 1
    raise ConfigError(f"no free run folder next to {folder}")


def _check_linked_values(run: Any, datamodule: Any) -> None:
    """The CLI links ``data.num_classes``/``data.in_chans`` into the network, overwriting any value
    given for them; a given value that differs from the data's is an error, not silently replaced."""
    network = _get(run, "model", "network")
    class_path, args = _get(network, "class_path"), _get(network, "init_args")
    if not class_path or args is None or datamodule is None:
        return
    try:
        module_name, _, name = class_path.rpartition(".")
        parameters = inspect.signature(getattr(importlib.import_module(module_name), name)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return
    for key in ("num_classes", "in_chans"):
        given, data_value = _get(args, key), getattr(datamodule, key, None)
        default = parameters[key].default if key in parameters else inspect.Parameter.empty
        # Equal to the class default: cannot tell "given" from "left out", and the link sets it.
        if given is None or data_value is None or given == default or given == data_value:
            continue
        raise ConfigError(
            f"model.network.init_args.{key}={given} contradicts the data: {type(datamodule).__name__} has "
            f"{key}={data_value}, which the CLI links into the network. Drop the {key} setting, or use data "
            f"with {given} {'classes' if key == 'num_classes' else 'channels'}."
        )


# ----- parse errors: one last line ----------------------------------------------------------------

_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Expected a <class 'NoneType'>",
    "Expected a path but",
)


def condense_parser_error(message: str) -> str:
    """A multi-line message (jsonargparse's nested ones: every subtype it tried) as one line naming
    the key and the problem."""
    lines = []
    for line in message.splitlines():
        line = line.strip()
        bare = line.removeprefix("- ")
        if not line or bare.startswith(_NOISE) or line.startswith(("Given value: NestedArg(", "Given value: Namesp")):
            continue
        if line.startswith("Given value:"):
            lines.append(f"(given: {line.removeprefix('Given value:').strip()})")
            continue
        lines.append(line.removeprefix("- "))
    text = " ".join(lines) or message.strip()
    text = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text)
    text = re.sub(r"Expected an? (\w+)", r"expected a value of type \1", text)
    return re.sub(r"\s+", " ", text)


class ConfigErrorParser(LightningArgumentParser):
    """Lightning's parser whose errors end with ``ablate: error: ConfigError: <one line>`` (exit 2),
    and whose saved configs (the run's ``config.yaml``) are written whole or not at all.

    jsonargparse prints the usage and a message that can span a dozen lines (every subtype it
    tried); the sweep and the user read the last line, so it names the key and the problem.
    """

    def save(self, cfg: Any, path: Any, *args: Any, multifile: bool = True, overwrite: bool = False,
             **kwargs: Any) -> None:
        # jsonargparse opens config.yaml with "w" and writes: a kill or a full disk leaves it empty or cut.
        if multifile or "://" in str(path) or (not overwrite and Path(path).is_file()):
            # several files, a remote path, or jsonargparse's own refusal to overwrite: its way
            super().save(cfg, path, *args, multifile=multifile, overwrite=overwrite, **kwargs)
            return
        from lightning_modules.files import atomic_path

        with atomic_path(path) as temporary:
            super().save(cfg, temporary, *args, multifile=False, overwrite=True, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Every YAML jsonargparse loads (also `--data=file.yaml` and command-line values) is checked
        # for alias bombs first (lightning_modules/config_files.py).
        from lightning_modules import config_files

        config_files.install()
        super().__init__(*args, **kwargs)

    def add_function_arguments(self, function: Any, *args: Any, linked_targets: set[str] | None = None,
                               **kwargs: Any) -> list[str]:
        # A builder function as class_path (`architectures.resnet.resnet20`) is a target of the CLI's
        # data -> network links. jsonargparse hands a class_path's parser its link targets, which its
        # add_class_arguments takes and its add_function_arguments does not (4.53: "unexpected keyword
        # argument 'linked_targets'"). Its only use here is to make a linked parameter optional, which
        # jsonargparse does again right after this call (clear_required in get_class_parser).
        return super().add_function_arguments(function, *args, **kwargs)

    def parse_path(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        # Every --config file comes through here: an empty file or an alias bomb is refused naming
        # the file (jsonargparse said "Unexpected config:", or ran out of memory after 40 s).
        from lightning_modules import config_files

        try:
            config_files.check_config_file(path)
        except ValueError as refused:
            raise ConfigError(str(refused)) from None
        return super().parse_path(path, *args, **kwargs)

    def parse_args(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        # Values that parse but cannot work (a zero interval, a negative worker count) and output
        # folders that cannot be written: refused now, in one line, not mid-run as a traceback.
        # Sub-command parsers are called with _skip_validation; the root parser checks the whole config.
        cfg = super().parse_args(*args, **kwargs)
        if not kwargs.get("_skip_validation"):
            from lightning_modules.output_folders import check_output_folders
            from lightning_modules.value_ranges import check_value_ranges

            subcommand = cfg.get("subcommand")
            run = cfg.get(subcommand) if subcommand else cfg
            check_value_ranges(run)
            check_output_folders(run)
        return cfg

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        try:
            super().error(message, ex)
        except SystemExit as stop:
            if stop.code == 2:
                print(f"ablate: error: ConfigError: {condense_parser_error(message)}", file=sys.stderr)
            raise
