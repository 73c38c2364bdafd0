"""The default progress bar of ``ablate``: Lightning's rich bar, updated a few times a second.

Lightning's ``RichProgressBar`` reads every logged metric after each training batch (``.item()``,
a host sync per step on a GPU) and redraws from a thread 100 times a second: a cost a small network
feels in its training speed (`ablate bench overhead` measures it against a plain loop,
docs/benchmarks.md). Updated at most ``refresh_rate`` times a second the bar still looks live.

The classifier logs ``train/loss`` only on the steps the loggers write (``log_every_n_steps``);
this bar shows the last step's loss instead (its ``step_loss``), read when the bar redraws.

A run that ``max_steps`` ends (before ``max_epochs`` would) counts optimiser steps across epochs,
"step 30/200", instead of batches of an epoch it will not finish. The logger version (``v_num``) is
not shown: the run folder is printed once before training.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar


class ThrottledRichProgressBar(RichProgressBar):
    """``RichProgressBar`` whose training-batch updates and redraws run ``refresh_rate`` times a second.

    Args:
        refresh_rate: Updates (and redraws) per second; the last batch of an epoch always updates.
        **kwargs: Passed to ``RichProgressBar`` (``leave``, ``theme``, ``console_kwargs``).
    """

    def __init__(self, refresh_rate: int = 2, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._last_update = -math.inf

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        if self._steps_bound():  # the run's last step, or the epoch's last batch
            last_batch = trainer.global_step >= trainer.max_steps or batch_idx + 1 >= trainer.num_training_batches
        else:
            last_batch = batch_idx + 1 >= self.total_train_batches
        if self.refresh_rate > 0 and now - self._last_update < 1 / self.refresh_rate and not last_batch:
            return
        self._last_update = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        step_loss = getattr(pl_module, "step_loss", None)
        if isinstance(step_loss, torch.Tensor):
            metrics["train/loss"] = step_loss.item()  # one host sync per redraw, not per step
        metrics.pop("v_num", None)
        return metrics

    def _steps_bound(self) -> bool:
        """Whether ``max_steps`` ends this run before ``max_epochs`` would (or alone)."""
        trainer = self._trainer  # None before setup (the public `trainer` raises then)
        if trainer is None or trainer.max_steps is None or trainer.max_steps < 0:
            return False
        if trainer.max_epochs is None or trainer.max_epochs < 0 or math.isinf(trainer.num_training_batches):
            return True
        steps_per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        return trainer.max_steps < trainer.max_epochs * steps_per_epoch

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._steps_bound() else super().total_train_batches

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)  # resets the bar to 0 for each epoch
        if self._steps_bound():
            self._update(self.train_progress_bar_id, trainer.global_step)

    # `_update` and `_get_train_description` are private to RichProgressBar, but they are where it sets
    # the training bar's count and label, and it has no public hook for either (it counts batches).
    def _update(self, progress_bar_id: Any, current: int, visible: bool = True, hard: bool = False) -> None:
        if progress_bar_id is not None and progress_bar_id == self.train_progress_bar_id and self._steps_bound():
            current = self.trainer.global_step  # across epochs, not the batch of this one
        super()._update(progress_bar_id, current, visible, hard)

    def _get_train_description(self, current_epoch: int) -> str:
        if self._steps_bound():
            description = "step"  # the count beside it: "step 30/200"
        else:
            description = f"Epoch {current_epoch}"
            # Lightning writes "Epoch 0/-2" when max_epochs=-1 and nothing bounds the run.
            if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
                description += f"/{self.trainer.max_epochs - 1}"
        # Padded to the validation bar's description, as Lightning does, so the bar does not flicker.
        return f"{description:{len(self.validation_description)}}"
