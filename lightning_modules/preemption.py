"""A run told to stop (preemption, ``scancel``, a time limit) saves ``last.ckpt`` and exits 128 + signal.

``CheckpointOnSignal`` handles SIGTERM (Lightning's own SIGTERM handling is kept) and SIGUSR1 (only
outside SLURM auto-requeue, where Lightning's ``SLURMEnvironment`` owns that signal): it saves
``checkpoints/last.ckpt`` at the next training batch end, and ``--ckpt_path last`` continues there
(docs/reliability.md, "Signals").
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_modules.quiet import say
from lightning_modules.run_folders import LAST


class TrainingInterrupted(SIGTERMException):
    """Raised after ``CheckpointOnSignal`` saved ``last.ckpt``; the exit status is 128 + the signal.

    A subclass of Lightning's ``SIGTERMException`` (a ``SystemExit``), so Lightning tears down as
    for its own SIGTERM stop and ``ablate`` exits with ``code`` (143 for SIGTERM, 138 for SIGUSR1).
    """


def _slurm_owns_sigusr1(trainer: pl.Trainer) -> bool:
    from lightning_fabric.plugins.environments import SLURMEnvironment

    # Private, but where Lightning's own SIGUSR1 handler looks (its signal connector): the public
    # `trainer.strategy` holds no cluster environment on one device, where SLURM may still requeue.
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
        say(
            f"ablate: interrupted by {received.name}: saved {path.resolve()} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}); resume with --ckpt_path last"
        )
        raise TrainingInterrupted(128 + int(received))
