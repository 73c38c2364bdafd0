"""A diverged run stops before its weights are saved: the last good checkpoint stays, and the error names it.

Lightning's ``ModelCheckpoint`` writes ``last.ckpt`` and the best checkpoint at the end of every
validation, whatever the weights hold; a run whose validation loss turned NaN (weights at 1e11,
say) would overwrite its last good ``last.ckpt`` with them, and the "last" top-1 callback would
delete the previous one. ``StopOnDivergence`` looks first: Lightning runs the checkpoint callbacks
after all others, so raising here means none of them writes. ``AtomicCheckpointIO`` refuses such
weights as well, for the saves that come from elsewhere (``CheckpointOnSignal``, step-based saves).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint

from lightning_modules.errors import NonFiniteLossError

# Not "resume": a resume restores the old optimiser state, and one with a changed learning rate is
# refused (run_guards.check_resumed_config); a new run starting from the weights can lower it.
ADVICE = "start a new run from its weights with --fine_tune.weights <that file> and a lower learning rate"


class DivergenceError(NonFiniteLossError):
    """Validation metrics or weights became NaN or infinite; nothing of them was saved."""


def non_finite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` that hold a NaN or an infinity."""
    names = [name for name, value in state_dict.items() if torch.is_tensor(value) and value.is_floating_point()]
    if not names:
        return []
    # One device synchronisation for all tensors, not one per tensor (the common case: all finite).
    finite = torch.stack([torch.isfinite(state_dict[name]).all() for name in names])
    if bool(finite.all()):
        return []
    return [name for name, ok in zip(names, finite.tolist(), strict=True) if not ok]


def describe_checkpoint(path: Path) -> str:
    """``path (epoch E, step S)``; just the path when the file cannot be read."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return f"{path} (epoch {checkpoint['epoch']}, step {checkpoint['global_step']})"
    except Exception:  # the position is a courtesy; the path is what matters
        return str(path)


def last_good_checkpoint(trainer: pl.Trainer | None, candidates: Sequence[Path] = ()) -> str:
    """ "the last good checkpoint is <path> (epoch E, step S); resume from it ...", or that there is none.

    The newest of ``last.ckpt``, the checkpoint callbacks' files and the one this run resumed from:
    nothing non-finite is ever written (this module), so the newest is the last good one.
    """
    from lightning_modules.run_folders import LAST

    candidates = list(candidates)
    if trainer is not None:
        # Not preemption.last_checkpoint_path: without a checkpoint folder it asks trainer.log_dir,
        # a broadcast, and under DDP a loss can turn NaN in one process alone.
        for callback in trainer.checkpoint_callbacks:
            folder = [Path(callback.dirpath) / LAST] if callback.dirpath else []
            candidates += folder + [Path(p) for p in (callback.last_model_path, callback.best_model_path) if p]
        if trainer.ckpt_path:
            candidates.append(Path(trainer.ckpt_path))
    existing = [path for path in dict.fromkeys(candidates) if path.is_file()]
    if not existing:
        return "no checkpoint was written before it"
    newest = max(existing, key=lambda path: path.stat().st_mtime)
    return f"the last good checkpoint is {describe_checkpoint(newest)}; {ADVICE}"


def _monitored(trainer: pl.Trainer) -> list[str]:
    """``val/loss`` and every metric a checkpoint or early-stopping callback ranks by."""
    keys = ["val/loss"]
    for callback in trainer.callbacks:
        if isinstance(callback, (ModelCheckpoint, EarlyStopping)) and callback.monitor:
            keys.append(callback.monitor)
    return list(dict.fromkeys(keys))


class StopOnDivergence(Callback):
    """Raise ``DivergenceError`` when a validation loss, a monitored metric or a weight is not
    finite, before any checkpoint callback saves those weights.

    Checked at the end of every validation of ``fit`` (where ``ModelCheckpoint`` saves) and at the
    end of every training epoch (where it saves when no validation runs). Off for a model built
    with ``check_finite=False``, which asked to train through non-finite values.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not getattr(pl_module, "check_finite", True):
            return
        metrics = trainer.callback_metrics
        for key in _monitored(trainer):
            value = metrics.get(key)
            if value is not None and not math.isfinite(float(value)):
                self._stop(trainer, f"{key} is {float(value)}")
        self._check_weights(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(pl_module, "check_finite", True):
            self._check_weights(trainer, pl_module)

    def _check_weights(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bad = non_finite_tensors(pl_module.state_dict())
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            self._stop(trainer, f"weight {bad[0]}{more} holds NaN or infinity")

    @staticmethod
    def _stop(trainer: pl.Trainer, what: str) -> None:
        raise DivergenceError(
            f"{what} at epoch {trainer.current_epoch} (global step {trainer.global_step}): the run diverged "
            f"and these weights were not saved; {last_good_checkpoint(trainer)}"
        )
