"""An exponential moving average of the weights, evaluated next to the raw ones.

``EMA(decay=0.999)`` (``--ema.decay 0.999`` on ``ablate``) keeps an ``AveragedModel`` of the network and
its buffers, updated once per optimiser step. Validation and test then log the accuracy of the
weights that are not the model's too: ``val/acc_ema`` next to ``val/acc``, or, under ``evaluate``
(validate, test and predict with the average), ``val/acc_raw`` next to the EMA's ``val/acc``.

The average lives on the classifier as ``ema_network`` (not in the callback), so it is in the
checkpoint's ``state_dict`` and a checkpoint loads alone, with or without this callback, in
``ablate test`` as in ``load_model``. Unlike Lightning's ``WeightAveraging``, which swaps the averaged
weights into the model, both sets of weights stay side by side: the ablation is the comparison.
"""

from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.evaluation import hard_targets


def averaged_copy(network: nn.Module, decay: float | None = None) -> AveragedModel:
    """A frozen ``AveragedModel`` of ``network`` (parameters and buffers); ``decay`` None: a container
    for averaged weights read from a checkpoint."""
    # A compiled network (nn.Module.compile) would lend the copy its compiled forward: copy it plain.
    # nn.Module.compile keeps that forward in the private `_compiled_call_impl`, and has no public undo.
    compiled = network.__dict__.pop("_compiled_call_impl", None)
    try:
        plain = copy.deepcopy(network)
    finally:
        network._compiled_call_impl = compiled
    plain._compiled_call_impl = None
    averaged = AveragedModel(
        plain,
        multi_avg_fn=get_ema_multi_avg_fn(decay) if decay else None,
        use_buffers=True,
    )
    return averaged.requires_grad_(False)


class EMA(Callback):
    """Exponential moving average of the weights (Polyak averaging), side by side with the raw ones.

    Args:
        decay: Weight of the average at each optimiser step (e.g. 0.999); 0 turns the callback off.
        evaluate: Validate, test and predict with the averaged weights (``val/acc`` is then the EMA's,
            ``val/acc_raw`` the raw weights'); needs ``decay`` > 0.
    """

    def __init__(self, decay: float = 0.0, evaluate: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}")
        if evaluate and decay == 0:
            raise ValueError("ema.evaluate needs an EMA: set ema.decay (e.g. 0.999)")
        self.decay = decay
        self.evaluate = evaluate
        self._updated_at = 0  # the optimiser step of the last update
        self._other_acc: dict[str, MulticlassAccuracy] = {}
        self._other_seen: dict[str, bool] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.decay:
            return
        # Before the checkpoint (if any) is restored, so its ema_network.* keys have a place to go.
        if pl_module.ema_network is None:
            pl_module.ema_network = averaged_copy(pl_module.network, self.decay)
        else:  # an average the model already held (a loaded checkpoint, an earlier fit): this decay from now on
            pl_module.ema_network.avg_fn, pl_module.ema_network.multi_avg_fn = None, get_ema_multi_avg_fn(self.decay)
        pl_module.evaluate_ema = self.evaluate
        accuracy = MulticlassAccuracy
        self._other_acc = {stage: accuracy(pl_module.num_classes, average="micro") for stage in ("val", "test")}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run's first update comes after its first optimiser step, not after its first batch.
        self._updated_at = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # Once per optimiser step (not per batch when gradients accumulate).
        if self.decay and trainer.global_step > self._updated_at:
            pl_module.ema_network.update_parameters(pl_module.network)
            self._updated_at = trainer.global_step

    # ----- the other weights' accuracy -------------------------------------------------------

    def _start(self, stage: str, pl_module: pl.LightningModule) -> None:
        if stage in self._other_acc:
            self._other_acc[stage] = self._other_acc[stage].to(pl_module.device)
            self._other_acc[stage].reset()
            self._other_seen[stage] = False

    def _update(self, stage: str, pl_module: pl.LightningModule, batch: Any) -> None:
        if stage not in self._other_acc or not pl_module.ema_active():
            return
        images, targets = batch
        other = pl_module.network if pl_module.evaluate_ema else pl_module.ema_network.module
        with torch.no_grad():
            logits = pl_module.eval_logits(other, images, stage)
        self._other_acc[stage].update(logits, hard_targets(targets))
        self._other_seen[stage] = True

    def _log(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._other_seen.get(stage) or trainer.sanity_checking:
            return
        key = f"{stage}/acc_raw" if pl_module.evaluate_ema else f"{stage}/acc_ema"
        # compute() reduces over processes, so the value is the same on every rank.
        pl_module.log(key, self._other_acc[stage].compute(), prog_bar=stage == "val", sync_dist=True)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("val", pl_module)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update("val", pl_module, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log("val", trainer, pl_module)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("test", pl_module)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update("test", pl_module, batch)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log("test", trainer, pl_module)
