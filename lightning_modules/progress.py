"""The default progress bar of ``ablate``: Lightning's rich bar, updated a few times a second.

Lightning's ``RichProgressBar`` reads every logged metric after each training batch (``.item()``,
a host sync per step on a GPU) and redraws from a thread 100 times a second. On the 2-core
development box that cost ResNet-20 3.5% of its training speed against a plain loop
(`ablate bench overhead`, README "Benchmarks"); updated at most ``refresh_rate`` times a second
it costs nothing measurable and still looks live.

The classifier logs ``train/loss`` only on the steps the loggers write (``log_every_n_steps``);
this bar shows the last step's loss instead (its ``step_loss``), read when the bar redraws.
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

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
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
        return metrics

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning writes "Epoch 0/-2" when steps bound the run (max_epochs=-1, as `ablate bench` sets).
        description = f"Epoch {current_epoch}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            description += f"/{self.trainer.max_epochs - 1}"
        # Padded to the validation bar's description, as Lightning does, so the bar does not flicker.
        return f"{description:{len(self.validation_description)}}"
