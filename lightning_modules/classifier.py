"""One image classifier for every architecture in the zoo.

The network, the optimiser and the learning-rate schedule are injected (LightningCLI's
``class_path``/``init_args``), never subclassed in. Networks built with auxiliary heads
(GoogLeNet, Inception v3) return ``AuxOutputs``; the objective is then
``main + sum_i weight_i * aux_i`` with every part logged, the weights belonging to the training
objective rather than the net (Szegedy et al. 2014 weight GoogLeNet's two heads by 0.3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from architectures.common import AuxOutputs, count_params


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and likely causes."""


def _accuracy_metrics(num_classes: int) -> MetricCollection:
    metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics)


class ImageClassifier(pl.LightningModule):
    """Cross-entropy classifier around any ``nn.Module`` that maps images to logits.

    Args:
        network: The architecture, e.g. ``class_path: architectures.ZooModel`` with
            ``init_args: {name: resnet20}`` or any family class. Its ``num_classes`` and
            ``in_chans`` are linked from the data module by the CLI.
        optimizer: Optimiser factory ``params -> Optimizer`` (default SGD, lr 0.1, momentum 0.9).
        lr_scheduler: Schedule factory ``optimizer -> LRScheduler``, or None for a constant rate.
            A ``OneCycleLR`` given without ``total_steps`` gets the trainer's total step count.
        scheduler_interval: Step the schedule every ``"epoch"`` or every ``"step"``.
        label_smoothing: Label smoothing of the cross-entropy (Szegedy et al. 2016), 0 disables.
        aux_weights: Weight of each auxiliary head's loss, in the order the network returns them;
            one number applies to every head. GoogLeNet's paper uses 0.3.
        check_finite: Stop at the first non-finite training loss with a message naming the step.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerCallable = lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
        aux_weights: float | Sequence[float] = 0.3,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        # Build the optimiser once on a dummy parameter so a bad setting (a negative learning
        # rate, an unknown argument) fails now, before any data is loaded, with torch's message.
        optimizer([nn.Parameter(torch.zeros(1))])
        self.save_hyperparameters(ignore=["network", "optimizer", "lr_scheduler"])
        self.network = network
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.label_smoothing = label_smoothing
        self.aux_weights = aux_weights
        self.check_finite = check_finite

        num_classes = getattr(network, "num_classes", None)
        if not isinstance(num_classes, int):
            raise ValueError("the network must expose an integer `num_classes` attribute")
        self.num_classes = num_classes
        self.train_metrics = _accuracy_metrics(num_classes).clone(prefix="train/")
        self.val_metrics = _accuracy_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = _accuracy_metrics(num_classes).clone(prefix="test/")
        self.val_acc_best = MaxMetric()
        self.test_loss = MeanMetric()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the main head (auxiliary outputs dropped)."""
        out = self.network(images)
        return out.logits if isinstance(out, AuxOutputs) else out

    def _aux_weight(self, index: int, count: int) -> float:
        if isinstance(self.aux_weights, (int, float)):
            return float(self.aux_weights)
        if len(self.aux_weights) != count:
            raise ValueError(f"aux_weights has {len(self.aux_weights)} entries but the network has {count} aux heads")
        return float(self.aux_weights[index])

    def compute_loss(self, out: torch.Tensor | AuxOutputs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss": total, "loss_main": ..., "loss_aux0": ...}``; targets are class indices or soft labels."""
        logits, aux = (out.logits, out.aux) if isinstance(out, AuxOutputs) else (out, ())
        parts = {"loss_main": F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)}
        total = parts["loss_main"]
        for index, aux_logits in enumerate(aux):
            parts[f"loss_aux{index}"] = F.cross_entropy(aux_logits, targets, label_smoothing=self.label_smoothing)
            total = total + self._aux_weight(index, len(aux)) * parts[f"loss_aux{index}"]
        return {"loss": total, **parts}

    def shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        """The one step train, validation and test share: forward, loss parts, metrics."""
        images, targets = batch
        out = self.network(images)
        losses = self.compute_loss(out, targets)
        logits = out.logits if isinstance(out, AuxOutputs) else out
        hard_targets = targets.argmax(dim=1) if targets.is_floating_point() else targets
        metrics = {"train": self.train_metrics, "val": self.val_metrics, "test": self.test_metrics}[stage]
        metrics.update(logits.detach(), hard_targets)
        on_step = stage == "train"
        if stage == "test":
            self.test_loss.update(losses["loss"].detach(), weight=len(images))
        else:
            self.log(f"{stage}/loss", losses["loss"].detach(), on_step=on_step, on_epoch=True, prog_bar=True,
                     sync_dist=not on_step)
        if len(losses) > 2:  # aux heads present: log every part
            for name, value in losses.items():
                if name != "loss":
                    self.log(f"{stage}/{name}", value.detach(), on_step=False, on_epoch=True, sync_dist=not on_step)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return losses["loss"]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.shared_step(batch, "train")
        if self.check_finite and not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}). Likely causes: a learning rate too "
                "high for this network or batch size, missing normalisation layers, fp16 overflow, or "
                "corrupt input data."
            )
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def on_train_start(self) -> None:
        # The sanity check's numbers must not count towards the best validation accuracy.
        self.val_acc_best.reset()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.shared_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        acc = self.test_metrics["acc"].compute()
        self.log("test/loss", self.test_loss.compute())
        self.log("test/err", 100.0 * (1.0 - acc))
        self.test_loss.reset()

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        probs = self(images).softmax(dim=1)
        confidence, prediction = probs.max(dim=1)
        return {"prediction": prediction, "probability": confidence, "probs": probs}

    def on_fit_start(self) -> None:
        params = count_params(self.network)
        for logger in self.loggers:
            logger.log_hyperparams({"model/params": params, "model/network": type(self.network).__name__})

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self._build_scheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def _build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        keywords = getattr(self.scheduler_factory, "keywords", {})
        needs_length = "total_steps" in keywords and keywords["total_steps"] is None and not keywords.get("epochs")
        if not needs_length:
            return self.scheduler_factory(optimizer)
        total = self.trainer.estimated_stepping_batches
        if self.scheduler_interval == "epoch":
            total = self.trainer.max_epochs
        if total is None or not math.isfinite(total) or total <= 0:
            raise ValueError("OneCycleLR needs total_steps, or a trainer with max_epochs/max_steps set")
        return self.scheduler_factory(optimizer, total_steps=int(total))
