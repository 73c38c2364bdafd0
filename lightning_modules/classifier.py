"""One image classifier for every architecture in the zoo.

The network, the optimiser and the learning-rate schedule are injected (LightningCLI's
``class_path``/``init_args``), never subclassed in. Networks built with auxiliary heads
(GoogLeNet, Inception v3) return ``AuxOutputs``; the objective is then
``main + sum_i weight_i * aux_i`` with every part logged, the weights belonging to the training
objective rather than the net (Szegedy et al. 2014 weight GoogLeNet's two heads by 0.3).

Training-recipe knobs, each independent of the others (README, "Training recipes"):

- optimisation: parameter groups without weight decay on norm and bias parameters, per-prefix
  learning-rate multipliers (``param_groups``); schedules stepped per epoch or per iteration, with
  ``total_steps``/``steps_per_epoch`` filled from the trainer (``schedules``);
- regularisation: label smoothing, soft targets from the data module's MixUp/CutMix, an EMA of
  the weights evaluated next to the raw ones (``ema_decay``, ``ema_eval``);
- speed: ``channels_last`` and ``compile`` (mixed precision is the trainer's ``precision``);
- evaluation: flip test-time augmentation, per-class accuracy and a confusion matrix at test time,
  the images and classes each evaluation covered (``val/images``, ``val/classes_seen``; one line on
  stderr when ``limit_*_batches`` cut it short);
- transfer: ``weights`` loaded at fit start, ``freeze`` by name prefix with frozen batch-norm
  statistics, a separate learning rate for the head (``transfer``).
"""

from __future__ import annotations

import copy
import inspect
import math
import sys
from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MaxMetric, MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from architectures.common import AuxOutputs, count_params
from lightning_modules import evaluation, inference, transfer
from lightning_modules.param_groups import build_param_groups, check_prefixes, scale_group_lrs
from lightning_modules.schedules import WARMUP_FLOOR_STEPS, floored_warmup

# Per-class accuracies are logged as scalars up to this many classes; all of them always go to
# per_class_accuracy.csv (ImageNet's 1000 columns would swamp metrics.csv).
PER_CLASS_SCALARS = 20

# Training batches whose logits feed the training metrics in one torchmetrics update. An update
# costs ~0.7 ms of Python on the CPU (timed per step phase, README "Benchmarks") and a dozen small
# kernel launches on a GPU, whatever the batch; queued, the same values cost a sixteenth of that.
# The queue holds 16 batches of logits (16 MB for ImageNet at batch 256).
TRAIN_METRIC_BATCHES = 16


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step, likely causes and the
    last good checkpoint."""


def _last_good(trainer: pl.Trainer | None) -> str:
    from lightning_modules.divergence import last_good_checkpoint  # it imports this module

    return last_good_checkpoint(trainer)


def _accuracy_metrics(num_classes: int) -> MetricCollection:
    metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics)


class ClassCounts(Metric):
    """Images per class an evaluation saw, summed over processes: what a limited evaluation covered.

    One ``bincount`` per batch. The state is not persistent (torchmetrics' default), so checkpoints
    neither carry nor expect it.
    """

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, targets: torch.Tensor) -> None:
        self.counts += torch.bincount(targets, minlength=self.num_classes)

    def compute(self) -> torch.Tensor:
        return self.counts


def _scheduler_class(factory: Any) -> type | None:
    """The scheduler class behind a factory: jsonargparse's partial, functools.partial or a class."""
    for candidate in (*getattr(factory, "args", ()), getattr(factory, "func", None), factory):
        if isinstance(candidate, type):
            return candidate
    return None


class ImageClassifier(pl.LightningModule):
    """Cross-entropy classifier around any ``nn.Module`` that maps images to logits.

    Args:
        network: The architecture, e.g. ``class_path: architectures.ZooModel`` with
            ``init_args: {name: resnet20}`` or any family class. Its ``num_classes`` and
            ``in_chans`` are linked from the data module by the CLI.
        optimizer: Optimiser factory ``params -> Optimizer`` (default SGD, lr 0.1, momentum 0.9).
            It receives parameter groups; its ``lr`` and ``weight_decay`` are the base values.
        lr_scheduler: Schedule factory ``optimizer -> LRScheduler``, or None for a constant rate.
            Arguments ``total_steps`` / ``steps_per_epoch`` left unset are filled from the trainer
            (``OneCycleLR``, ``lightning_modules.schedules.*``).
        scheduler_interval: Step the schedule every ``"epoch"`` or every ``"step"``; None takes
            the schedule's own ``interval`` (``"step"`` for ``lightning_modules.schedules``), else
            ``"epoch"``.
        label_smoothing: Label smoothing of the cross-entropy (Szegedy et al. 2016), 0 disables.
        aux_weights: Weight of each auxiliary head's loss, in the order the network returns them;
            one number applies to every head. GoogLeNet's paper uses 0.3.
        check_finite: Stop at the first non-finite training loss with a message naming the step.
        weight_decay_norm_bias: False puts biases and normalisation-layer parameters into groups
            with ``weight_decay`` 0 ("no bias decay", He et al. 2019 section 3.1).
        lr_multipliers: Parameter-name prefix (inside the network, e.g. ``layer4`` or ``fc``) ->
            multiplier of the optimiser's learning rate; the longest matching prefix wins.
        weights: State-dict file (torchvision layout, or one of our checkpoints) or torchvision
            weights name (``AlexNet_Weights.IMAGENET1K_V1``) loaded into the network when a run
            starts without ``ckpt_path``.
        skip_mismatched_head: Leave the head freshly initialised when ``weights`` has another
            number of classes (logged); False makes that an error.
        freeze: Parameter-name prefixes / module names of the network whose parameters are not
            trained (``requires_grad=False``, left out of the optimiser), e.g. ``[features]``.
        freeze_bn_stats: Keep the batch-norm layers under ``freeze`` in eval mode, so their
            running statistics stay the loaded ones.
        head_lr_multiplier: Multiplier of the learning rate of the network's head (its last
            module with parameters, e.g. ``fc`` or ``classifier.6``), for fine-tuning.
        ema_decay: Keep an exponential moving average of the weights (and buffers) with this
            decay per optimiser step, evaluated next to the raw weights (``val/acc_ema``); 0 = off.
        ema_eval: Validate, test and predict with the EMA weights (``val/acc`` is then the EMA's,
            ``val/acc_raw`` the raw weights'); needs ``ema_decay`` > 0.
        channels_last: Keep weights and inputs in NHWC memory layout (faster convolutions on
            tensor cores, also with bf16); outputs equal the default layout's. None: ``ablate``'s
            ``--speed auto`` chooses (lightning_modules/speed.py); contiguous when built directly.
        compile: ``torch.compile`` the network (in place: checkpoint keys do not change).
        tta_flip: At test and predict time, average the logits of each image and its mirror.
        confusion_matrix: At test time, log per-class accuracy and a confusion-matrix figure to
            every logger (CSV logger: PNG and CSV files in the run folder).
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerCallable = lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] | None = None,
        label_smoothing: float = 0.0,
        aux_weights: float | Sequence[float] = 0.3,
        check_finite: bool = True,
        weight_decay_norm_bias: bool = True,
        lr_multipliers: dict[str, float] | None = None,
        weights: str | None = None,
        skip_mismatched_head: bool = True,
        freeze: list[str] | None = None,
        freeze_bn_stats: bool = True,
        head_lr_multiplier: float = 1.0,
        ema_decay: float = 0.0,
        ema_eval: bool = False,
        channels_last: bool | None = None,
        compile: bool = False,
        tta_flip: bool = False,
        confusion_matrix: bool = True,
    ) -> None:
        super().__init__()
        if scheduler_interval not in (None, "epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if ema_eval and ema_decay == 0:
            raise ValueError("ema_eval needs an EMA: set ema_decay (e.g. 0.999)")
        if head_lr_multiplier < 0 or any(m < 0 for m in (lr_multipliers or {}).values()):
            raise ValueError("learning-rate multipliers must be >= 0")
        # Build the optimiser once on a dummy parameter so a bad setting (a negative learning
        # rate, an unknown argument) fails now, before any data is loaded, with torch's message.
        optimizer([nn.Parameter(torch.zeros(1))])
        self.save_hyperparameters(ignore=["network", "optimizer", "lr_scheduler"])
        # The network as `ablate` configured it, kept in every checkpoint so it loads alone
        # (lightning_modules/inference.py); None when built in Python.
        self.network_spec = inference.cli_network_spec()
        self.network = network
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.label_smoothing = label_smoothing
        self.aux_weights = aux_weights
        self.check_finite = check_finite
        self.weight_decay_norm_bias = weight_decay_norm_bias
        self.weights = weights
        self.skip_mismatched_head = skip_mismatched_head
        self.ema_eval = ema_eval
        self.channels_last = bool(channels_last)
        self.compile_network = compile  # not `self.compile`: that is nn.Module's method
        self.tta_flip = tta_flip
        self.confusion_matrix = confusion_matrix

        num_classes = getattr(network, "num_classes", None)
        if not isinstance(num_classes, int):
            raise ValueError("the network must expose an integer `num_classes` attribute")
        self.num_classes = num_classes

        self.lr_multipliers = dict(lr_multipliers or {})
        if head_lr_multiplier != 1.0:
            self.lr_multipliers.setdefault(transfer.head_name(network), head_lr_multiplier)
        check_prefixes(network, self.lr_multipliers, "lr_multipliers")
        self.frozen = transfer.freeze(network, freeze or [])
        self.frozen_norms = transfer.frozen_norm_layers(network, freeze or []) if freeze_bn_stats else []

        if channels_last:
            network.to(memory_format=torch.channels_last)
        # The EMA copy is taken before compiling, so it stays a plain module (it only evaluates).
        self.ema_network: AveragedModel | None = None
        if ema_decay > 0:
            self.ema_network = AveragedModel(
                copy.deepcopy(network), multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True
            )
            self.ema_network.requires_grad_(False)
        if compile:
            network.compile()

        self.train_metrics = _accuracy_metrics(num_classes).clone(prefix="train/")
        self.val_metrics = _accuracy_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = _accuracy_metrics(num_classes).clone(prefix="test/")
        self.val_acc_best = MaxMetric()
        self.train_loss = MeanMetric()
        self.test_loss = MeanMetric()
        # Accuracy of the weights not evaluated as the model (the EMA's, or the raw ones under ema_eval).
        self.other_acc: nn.ModuleDict | None = None
        if ema_decay > 0:
            stages = ("val", "test")
            self.other_acc = nn.ModuleDict({s: MulticlassAccuracy(num_classes, average="micro") for s in stages})
        self.test_confusion = MulticlassConfusionMatrix(num_classes) if confusion_matrix else None
        self.eval_counts = nn.ModuleDict({stage: ClassCounts(num_classes) for stage in ("val", "test")})
        self._coverage_said: set[tuple[str, int]] = set()  # (stage, epoch) of limited-coverage lines
        self._ema_step = 0
        # (logits, hard targets, loss, batch size) of training batches not yet in the metrics.
        self._train_queue: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []
        self.step_loss: torch.Tensor | None = None  # the last training loss, for the progress bar
        self._weights_loaded = False
        self._restored_best: torch.Tensor | None = None  # val_acc_best of a checkpoint being resumed
        self.train()

    # ----- forward passes --------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the main head (auxiliary outputs dropped)."""
        out = self._run(self.network, images)
        return out.logits if isinstance(out, AuxOutputs) else out

    def _run(self, network: nn.Module, images: torch.Tensor) -> torch.Tensor | AuxOutputs:
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        try:
            return network(images)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as error:
            settings = (("channels_last", self.channels_last), ("compile", self.compile_network))
            flags = [name for name, on in settings if on]
            if not flags:
                raise
            raise RuntimeError(
                f"{type(self.network).__name__} failed with {' and '.join(flags)} on ({type(error).__name__}: "
                f"{error}); run it with {' and '.join(f'{flag}: false' for flag in flags)}"
            ) from error

    def _eval_logits(self, network: nn.Module, images: torch.Tensor, flip: bool) -> torch.Tensor:
        """Main-head logits; with ``flip``, the mean of the image's and its mirror's logits."""
        out = self._run(network, images)
        logits = out.logits if isinstance(out, AuxOutputs) else out
        if flip:
            mirrored = self._run(network, images.flip(-1))
            logits = (logits + (mirrored.logits if isinstance(mirrored, AuxOutputs) else mirrored)) / 2
        return logits

    def ema_active(self) -> bool:
        """True once the EMA has averaged at least one optimiser step."""
        return self.ema_network is not None and bool(self.ema_network.n_averaged > 0)

    def evaluated_network(self) -> nn.Module:
        """The weights validation, test and prediction report: the EMA's under ``ema_eval``."""
        return self.ema_network.module if self.ema_eval and self.ema_active() else self.network

    # ----- objective ---------------------------------------------------------------------------

    def _aux_weight(self, index: int, count: int) -> float:
        if isinstance(self.aux_weights, (int, float)):
            return float(self.aux_weights)
        if len(self.aux_weights) != count:
            raise ValueError(f"aux_weights has {len(self.aux_weights)} entries but the network has {count} aux heads")
        return float(self.aux_weights[index])

    def compute_loss(self, out: torch.Tensor | AuxOutputs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss": total, "loss_main": ..., "loss_aux0": ...}``; targets are class indices or soft labels
        (``(N, num_classes)`` float, as MixUp/CutMix in the data module produce)."""
        logits, aux = (out.logits, out.aux) if isinstance(out, AuxOutputs) else (out, ())
        parts = {"loss_main": F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)}
        total = parts["loss_main"]
        for index, aux_logits in enumerate(aux):
            parts[f"loss_aux{index}"] = F.cross_entropy(aux_logits, targets, label_smoothing=self.label_smoothing)
            total = total + self._aux_weight(index, len(aux)) * parts[f"loss_aux{index}"]
        return {"loss": total, **parts}

    # ----- steps -------------------------------------------------------------------------------

    def shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        """The one step train, validation and test share: forward, loss parts, metrics."""
        images, targets = batch
        flip = self.tta_flip and stage == "test"
        if stage == "train":
            out = self._run(self.network, images)
        else:
            out = self._eval_logits(self.evaluated_network(), images, flip)
        losses = self.compute_loss(out, targets)
        logits = out.logits if isinstance(out, AuxOutputs) else out
        hard_targets = targets.argmax(dim=1) if targets.is_floating_point() else targets
        # The training metrics are fed from a queue and logged once, in on_train_epoch_end.
        metrics = {"val": self.val_metrics, "test": self.test_metrics}.get(stage)
        on_step = stage == "train"
        if metrics is not None:
            metrics.update(logits.detach(), hard_targets)
            self.eval_counts[stage].update(hard_targets)
        if stage == "test":
            self.test_loss.update(losses["loss"].detach(), weight=len(images))
            if self.test_confusion is not None:
                self.test_confusion.update(logits.detach(), hard_targets)
        elif stage == "train":
            loss = losses["loss"].detach()
            self.step_loss = loss
            # This process's loss, unsynchronised (no all-reduce per step under DDP), on the steps
            # the loggers write: Lightning's self.log costs ~0.5 ms of Python, and the others would
            # be dropped. ThrottledRichProgressBar shows step_loss live. Per epoch: the mean over
            # all processes, synchronised once when the metric is computed.
            if self._step_is_logged():
                self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            self._train_queue.append((logits.detach(), hard_targets, loss, len(images)))
            if len(self._train_queue) >= TRAIN_METRIC_BATCHES:
                self._update_train_metrics()
        else:
            self.log("val/loss", losses["loss"].detach(), on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        if len(losses) > 2:  # aux heads present: log every part
            for name, value in losses.items():
                if name != "loss":
                    self.log(f"{stage}/{name}", value.detach(), on_step=False, on_epoch=True, sync_dist=not on_step)
        if metrics is not None:
            self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        if stage != "train" and self.ema_active():
            other = self.network if self.ema_eval else self.ema_network.module
            self.other_acc[stage].update(self._eval_logits(other, images, flip).detach(), hard_targets)
            key = f"{stage}/acc_raw" if self.ema_eval else f"{stage}/acc_ema"
            self.log(key, self.other_acc[stage], on_step=False, on_epoch=True, prog_bar=stage == "val")
        return losses["loss"]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.shared_step(batch, "train")
        if self.check_finite and not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}). Likely causes: a learning rate too "
                "high for this network or batch size, missing normalisation layers, fp16 overflow, or "
                f"corrupt input data. Nothing of this step was saved; {_last_good(self._trainer)}."
            )
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Once per optimiser step (not per batch when gradients accumulate).
        if self.ema_network is not None and self.global_step > self._ema_step:
            self.ema_network.update_parameters(self.network)
            self._ema_step = self.global_step

    def _step_is_logged(self) -> bool:
        """Whether the loggers write this step: every ``log_every_n_steps``, or when training is told to stop."""
        connector = getattr(self._trainer, "_logger_connector", None)  # None when no trainer runs it
        return bool(getattr(connector, "should_update_logs", True))

    def _update_train_metrics(self) -> None:
        """The queued training batches into the training metrics, in one update each."""
        if not self._train_queue:
            return
        logits, targets, losses, sizes = zip(*self._train_queue, strict=True)
        self._train_queue.clear()
        self.train_metrics.update(torch.cat(logits), torch.cat(targets))
        self.train_loss.update(torch.stack(losses).float(), weight=torch.tensor(sizes, device=losses[0].device))

    def on_train_epoch_start(self) -> None:
        self._train_queue.clear()  # nothing left over from an epoch that did not finish

    def on_train_epoch_end(self) -> None:
        # Logged once per epoch rather than from every training_step: each self.log of a metric
        # object costs Lightning about a millisecond of Python, 1-2% of a small network's CPU step
        # (`ablate bench overhead`). The values are the same: Lightning computes, syncs and resets.
        self._update_train_metrics()
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self.eval_counts["val"].reset()  # the sanity check's batches count for nothing

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)
        self._report_coverage("val")

    def on_train_start(self) -> None:
        # The sanity check's numbers must not count towards the best validation accuracy; a
        # resumed run starts from the best its checkpoint recorded.
        self.val_acc_best.reset()
        if self._restored_best is not None:
            self.val_acc_best.update(self._restored_best)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A metric's state is not in the state dict: keep the running best with the checkpoint.
        checkpoint["val_acc_best"] = self.val_acc_best.max_value.detach().cpu()
        checkpoint[inference.ENTRY] = inference.checkpoint_entry(self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best = checkpoint.get("val_acc_best")
        self._restored_best = best if best is not None and torch.isfinite(best) else None
        if self.network_spec is None:  # loaded in Python: later saves keep recording the network
            self.network_spec = (checkpoint.get(inference.ENTRY) or {}).get("network")

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None, strict: bool | None = None,
        weights_only: bool | None = True, **kwargs: Any,
    ) -> ImageClassifier:
        """Lightning's ``load_from_checkpoint``, read with ``weights_only=True`` by default; without
        ``network=`` the network is rebuilt from the checkpoint's record of it (checkpoints written
        before they carried one need ``network=``)."""
        if "network" not in kwargs:
            checkpoint = inference.read_checkpoint(checkpoint_path)
            kwargs["network"] = inference.network_from_checkpoint(checkpoint, checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.shared_step(batch, "test")

    def on_test_epoch_start(self) -> None:
        self.eval_counts["test"].reset()

    def on_test_epoch_end(self) -> None:
        acc = self.test_metrics["acc"].compute()
        # Computed from torchmetrics states, so already reduced over processes and the same on every
        # rank; sync_dist (one all-reduce of equal values) tells Lightning so under DDP.
        self.log("test/loss", self.test_loss.compute(), sync_dist=True)
        self.log("test/err", 100.0 * (1.0 - acc), sync_dist=True)
        self.test_loss.reset()
        self._report_coverage("test")
        if self.test_confusion is not None:
            self._report_confusion()

    def _report_coverage(self, stage: str) -> None:
        """Log the images and classes ``stage`` evaluated; when that was less than the whole split
        (``limit_*_batches``), say so in one line on stderr, once per stage and epoch."""
        counts = self.eval_counts[stage].compute().cpu()  # summed over processes: the same on every rank
        images, seen = int(counts.sum()), int((counts > 0).sum())
        self.log(f"{stage}/images", float(images), sync_dist=True)
        self.log(f"{stage}/classes_seen", float(seen), sync_dist=True)
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        try:
            total = sum(len(loader.dataset) for loader in loaders)
        except (AttributeError, TypeError):  # a dataset without a length: nothing to compare with
            return
        said = (stage, self.current_epoch)
        if images >= total or said in self._coverage_said or not self.trainer.is_global_zero:
            return
        self._coverage_said.add(said)
        if self.num_classes <= PER_CLASS_SCALARS:
            names = evaluation.class_names(getattr(self.trainer, "datamodule", None), self.num_classes)
            detail = ": " + ", ".join(f"{name} {count}" for name, count in zip(names, counts.tolist(), strict=True))
        else:
            detail = f", {int(counts.min())} to {int(counts.max())} images each"
        print(f"ablate: {stage} limited to {images:,} of {total:,} images "
              f"({seen} of {self.num_classes} classes{detail})", file=sys.stderr, flush=True)

    def _report_confusion(self) -> None:
        confusion = self.test_confusion.compute()
        self.test_confusion.reset()
        names = evaluation.class_names(getattr(self.trainer, "datamodule", None), self.num_classes)
        if self.num_classes <= PER_CLASS_SCALARS:
            for name, accuracy in zip(names, evaluation.per_class_accuracy(confusion), strict=True):
                if not torch.isnan(accuracy):
                    self.log(f"test/acc_class/{name}", accuracy.float(), sync_dist=True)
        if self.trainer.is_global_zero:
            evaluation.log_confusion_matrix(self.loggers, confusion, names, self.global_step)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        probs = self._eval_logits(self.evaluated_network(), images, self.tta_flip).softmax(dim=1)
        confidence, prediction = probs.max(dim=1)
        return {"prediction": prediction, "probability": confidence, "probs": probs}

    # ----- modes, weights, logging -------------------------------------------------------------

    def train(self, mode: bool = True) -> ImageClassifier:
        """``nn.Module.train``, keeping the batch-norm layers under ``freeze`` in eval mode.

        (The EMA copy needs no such care: it only runs in validation, test and predict, where
        Lightning puts every module in eval mode.)
        """
        super().train(mode)
        for name in self.frozen_norms:
            self.network.get_submodule(name).eval()
        return self

    def setup(self, stage: str) -> None:
        # Pretrained weights start a run; a checkpoint being restored (ckpt_path) overrides them.
        resuming = getattr(self._trainer, "ckpt_path", None) is not None
        if self.weights and not self._weights_loaded and not resuming:
            transfer.load_weights(self.network, self.weights, skip_mismatched_head=self.skip_mismatched_head)
            self._weights_loaded = True

    def on_fit_start(self) -> None:
        params = count_params(self.network)
        trainable = count_params(self.network, trainable_only=True)
        for logger in self.loggers:
            logger.log_hyperparams(
                {"model/params": params, "model/trainable_params": trainable,
                 "model/network": type(self.network).__name__}
            )

    # ----- optimiser and schedule --------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        groups = build_param_groups(
            self.network, weight_decay_norm_bias=self.weight_decay_norm_bias, lr_multipliers=self.lr_multipliers
        )
        optimizer = self.optimizer_factory(groups)
        scale_group_lrs(optimizer)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler, interval = self._build_scheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def _build_scheduler(
        self, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.optim.lr_scheduler.LRScheduler, str]:
        factory = self.scheduler_factory
        cls = _scheduler_class(factory)
        name = cls.__name__ if cls is not None else "the schedule"
        declared = getattr(cls, "interval", None)
        if self.scheduler_interval and declared and declared != self.scheduler_interval:
            raise ValueError(
                f"{name} is stepped every {declared}; drop scheduler_interval or set it to {declared!r}"
            )
        interval = self.scheduler_interval or declared or "epoch"
        keywords = getattr(factory, "keywords", {})
        accepted = inspect.signature(cls).parameters if cls is not None else {}
        fill: dict[str, Any] = {}
        if "total_steps" in accepted and keywords.get("total_steps") is None and not keywords.get("epochs"):
            fill["total_steps"] = self._training_length(interval, name)
        if "steps_per_epoch" in accepted and keywords.get("steps_per_epoch") is None and (
            declared or keywords.get("epochs")
        ):
            fill["steps_per_epoch"] = self._steps_per_epoch(interval)
        if "min_warmup_steps" in accepted and keywords.get("min_warmup_steps") is None:
            fill["min_warmup_steps"] = WARMUP_FLOOR_STEPS
        multipliers = [group.get("lr_multiplier", 1.0) for group in optimizer.param_groups]
        if isinstance(keywords.get("max_lr"), (int, float)) and any(m != 1.0 for m in multipliers):
            # OneCycleLR sets every group's rate from max_lr: keep the groups' multipliers.
            fill["max_lr"] = [keywords["max_lr"] * m for m in multipliers]
        note = None
        if cls is not None and issubclass(cls, torch.optim.lr_scheduler.OneCycleLR) and interval == "step" and (
            "total_steps" in fill
        ):
            note = self._floor_one_cycle(fill, keywords, accepted, name)
        scheduler = factory(optimizer, **fill)
        note = note or getattr(scheduler, "note", None)
        if note and getattr(self._trainer, "is_global_zero", True):
            print(f"ablate: {note}", file=sys.stderr, flush=True)
        return scheduler, interval

    @staticmethod
    def _floor_one_cycle(fill: dict[str, Any], keywords: dict[str, Any], accepted: Any, name: str) -> str | None:
        """OneCycleLR's warm-up (``pct_start`` of the run) given the floor of ``floored_warmup``:
        ``pct_start`` and ``max_lr`` in ``fill`` changed only where the run is too short for it."""
        total = fill["total_steps"]
        pct_start = keywords.get("pct_start", accepted["pct_start"].default)
        plan = floored_warmup(int(pct_start * total), total, WARMUP_FLOOR_STEPS, name)
        if plan.note is None:
            return None
        fill["pct_start"] = plan.steps / total
        max_lr = fill.get("max_lr", keywords.get("max_lr"))
        if plan.peak_scale != 1.0 and max_lr is not None:
            fill["max_lr"] = [lr * plan.peak_scale for lr in max_lr] if isinstance(max_lr, (list, tuple)) else (
                max_lr * plan.peak_scale)
        return plan.note

    def _training_length(self, interval: str, name: str) -> int:
        """Scheduler steps of the whole run: epochs, or optimiser steps, from the trainer."""
        total = self.trainer.max_epochs if interval == "epoch" else self.trainer.estimated_stepping_batches
        if total is None or not math.isfinite(total) or total <= 0:
            raise ValueError(f"{name} needs total_steps, or a trainer with max_epochs/max_steps set")
        return int(total)

    def _steps_per_epoch(self, interval: str) -> int | None:
        """Scheduler steps per epoch: 1 per epoch, or the optimiser steps of one epoch; None for a
        training set of unknown length (a schedule in epochs then says it needs steps_per_epoch)."""
        if interval == "epoch":
            return 1
        trainer = self.trainer
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        if not math.isfinite(batches) or batches <= 0:
            return None
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches))
