"""One image classifier for every architecture in the zoo.

The network, the optimiser and the learning-rate schedule are injected (LightningCLI's
``class_path``/``init_args``), never subclassed in. Networks built with auxiliary heads
(GoogLeNet, Inception v3) return ``AuxOutputs``; the objective is then
``main + sum_i weight_i * aux_i`` with every part logged, the weights belonging to the training
objective rather than the net (Szegedy et al. 2014 weight GoogLeNet's two heads by 0.3).

The module computes losses and metrics; the training-recipe parts around it live beside it
(docs/recipes.md): parameter groups (``param_groups``), schedules filled from the trainer
(``schedules.build_scheduler``), an EMA of the weights (``ema.EMA``), starting weights, freezing and
the head's learning rate (``transfer.FineTune``), the coverage report, and the test's flip averaging
and confusion matrix (``evaluation``, ``evaluation.TestTime``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from architectures.common import AuxOutputs, count_params
from lightning_modules import evaluation, inference
from lightning_modules.divergence import last_good_checkpoint
from lightning_modules.ema import EMA, averaged_copy
from lightning_modules.errors import CheckpointError, NonFiniteLossError
from lightning_modules.param_groups import build_param_groups, check_prefixes, scale_group_lrs
from lightning_modules.schedules import build_scheduler

# Training batches whose logits feed the training metrics in one torchmetrics update: an update is
# a fixed cost of Python and small kernel launches whatever the batch, so updating once per 16
# batches costs a sixteenth. The queue holds 16 batches of logits (16 MB for ImageNet at batch 256).
TRAIN_METRIC_BATCHES = 16

# Where the EMA callback's setting is kept in a checkpoint, so the weights evaluated are known without it.
EMA_EVALUATED = "ema_evaluated"


def _accuracy_metrics(num_classes: int) -> MetricCollection:
    metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics)


def _logits(out: torch.Tensor | AuxOutputs) -> torch.Tensor:
    return out.logits if isinstance(out, AuxOutputs) else out


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

    An EMA of the weights, fine-tuning (starting weights, freezing, the head's learning rate) and what a
    test adds (flip averaging, the confusion matrix) are callbacks: ``lightning_modules.ema.EMA``,
    ``lightning_modules.transfer.FineTune`` and ``lightning_modules.evaluation.TestTime`` (``--ema.*``,
    ``--fine_tune.*`` and ``--test_time.*`` on ``ablate``). The memory layout and compilation change how
    the network runs, not what it computes: ``speed_up`` (``--channels_last``, ``--compile``).
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
    ) -> None:
        super().__init__()
        _check_settings(optimizer, scheduler_interval, label_smoothing, lr_multipliers)
        self.save_hyperparameters(ignore=["network", "optimizer", "lr_scheduler"])
        # The network as `ablate` configured it, kept in every checkpoint so it loads alone
        # (lightning_modules/inference.py); None when built in Python.
        self.network_spec = inference.cli_network_spec()
        self.network = network
        self.num_classes = _num_classes(network)
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.label_smoothing, self.aux_weights, self.check_finite = label_smoothing, aux_weights, check_finite
        self.weight_decay_norm_bias = weight_decay_norm_bias
        self.lr_multipliers = dict(lr_multipliers or {})  # FineTune adds the head's
        check_prefixes(network, self.lr_multipliers, "lr_multipliers")
        self.channels_last = self.compile_network = False  # how the network runs: speed_up()
        self.flip_at_test = False  # set by the TestTime callback (or from a checkpoint loaded in Python)
        # An average of the weights, set by the EMA callback (or from a checkpoint that holds one).
        self.ema_network: AveragedModel | None = None
        self.evaluate_ema = False

        self.train_metrics = _accuracy_metrics(self.num_classes).clone(prefix="train/")
        self.val_metrics = _accuracy_metrics(self.num_classes).clone(prefix="val/")
        self.test_metrics = _accuracy_metrics(self.num_classes).clone(prefix="test/")
        self.val_acc_best = MaxMetric()
        self.train_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.eval_counts = nn.ModuleDict({s: evaluation.ClassCounts(self.num_classes) for s in ("val", "test")})
        self._coverage_said: set[tuple[str, int]] = set()  # (stage, epoch) of limited-coverage lines
        # (logits, hard targets, loss, batch size) of training batches not yet in the metrics.
        self._train_queue: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []
        self.step_loss: torch.Tensor | None = None  # the last training loss, for the progress bar
        self._restored_best: torch.Tensor | None = None  # val_acc_best of a checkpoint being resumed

    # ----- forward passes --------------------------------------------------------------------

    def speed_up(self, channels_last: bool = False, compile: bool = False) -> ImageClassifier:
        """How the network runs, not what it computes (``--channels_last``, ``--compile`` on ``ablate``).

        Args:
            channels_last: Keep weights and inputs in NHWC memory layout (faster convolutions on
                tensor cores and oneDNN CPUs, also with bf16); outputs equal the default layout's.
            compile: ``torch.compile`` the network in place, so checkpoint keys do not change.
        """
        if channels_last:
            self.network.to(memory_format=torch.channels_last)
        if compile:
            self.network.compile()
        self.channels_last = self.channels_last or channels_last
        self.compile_network = self.compile_network or compile  # not `self.compile`: nn.Module's method
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the main head (auxiliary outputs dropped)."""
        return _logits(self._run(self.network, images))

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
                f"{error}); run it with {' and '.join(f'--{flag} false' for flag in flags)}"
            ) from error

    def eval_logits(self, network: nn.Module, images: torch.Tensor, stage: str) -> torch.Tensor:
        """Main-head logits of ``network``; at test and predict time under ``TestTime(flip=True)``, the
        mean of the image's and its mirror's logits."""
        logits = _logits(self._run(network, images))
        if self.flip_at_test and stage in ("test", "predict"):
            logits = (logits + _logits(self._run(network, images.flip(-1)))) / 2
        return logits

    def ema_active(self) -> bool:
        """True once the EMA has averaged at least one optimiser step."""
        return self.ema_network is not None and bool(self.ema_network.n_averaged > 0)

    def evaluated_network(self) -> nn.Module:
        """The weights validation, test and prediction report: the EMA's under ``EMA(evaluate=True)``."""
        return self.ema_network.module if self.evaluate_ema and self.ema_active() else self.network

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

    # ----- training ------------------------------------------------------------------------------

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        out = self._run(self.network, images)
        losses = self.compute_loss(out, targets)
        loss = losses["loss"]
        if self.check_finite and not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}). Likely causes: a learning rate too "
                "high for this network or batch size, missing normalisation layers, fp16 overflow, or "
                f"corrupt input data. Nothing of this step was saved; {last_good_checkpoint(self._trainer)}."
            )
        detached = loss.detach()
        self.step_loss = detached
        # This process's loss, unsynchronised (no all-reduce per step under DDP), on the steps the
        # loggers write: each self.log is a fixed cost of Python, and the others would be dropped.
        # ThrottledRichProgressBar shows step_loss live. Per epoch: the mean over all processes,
        # synchronised once when the metric is computed.
        if self._step_is_logged():
            self.log("train/loss", detached, on_step=True, on_epoch=False, prog_bar=True)
        self._train_queue.append((_logits(out).detach(), evaluation.hard_targets(targets), detached, len(images)))
        if len(self._train_queue) >= TRAIN_METRIC_BATCHES:
            self._update_train_metrics()
        if len(losses) > 2:  # aux heads present: log every part
            for name, value in losses.items():
                if name != "loss":
                    self.log(f"train/{name}", value.detach(), on_step=False, on_epoch=True)
        return loss

    def _step_is_logged(self) -> bool:
        """Whether the loggers write this step: every ``log_every_n_steps``, or when training is told to stop."""
        # Private: Lightning has no public "do the loggers write this step"; None when no trainer runs it.
        connector = getattr(self._trainer, "_logger_connector", None)
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
        # object is a fixed cost of Python per step (`ablate bench overhead`). The values are the
        # same: Lightning computes, syncs and resets.
        self._update_train_metrics()
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)

    # ----- validation and test -------------------------------------------------------------------

    def _evaluation_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, targets = batch
        logits = self.eval_logits(self.evaluated_network(), images, stage).detach()
        loss = self.compute_loss(logits, targets)["loss"].detach()
        hard_targets = evaluation.hard_targets(targets)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(logits, hard_targets)
        self.eval_counts[stage].update(hard_targets)
        if stage == "test":
            self.test_loss.update(loss, weight=len(images))
        else:
            self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        return logits

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self.eval_counts["val"].reset()  # the sanity check's batches count for nothing

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)
        evaluation.report_coverage(self, "val", self.eval_counts["val"].compute(), self._coverage_said)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluation_step(batch, "test")  # the logits, for callbacks (TestTime's confusion matrix)

    def on_test_epoch_start(self) -> None:
        self.eval_counts["test"].reset()

    def on_test_epoch_end(self) -> None:
        acc = self.test_metrics["acc"].compute()
        # Computed from torchmetrics states, so already reduced over processes and the same on every
        # rank; sync_dist (one all-reduce of equal values) tells Lightning so under DDP.
        self.log("test/loss", self.test_loss.compute(), sync_dist=True)
        self.log("test/err", 100.0 * (1.0 - acc), sync_dist=True)
        self.test_loss.reset()
        evaluation.report_coverage(self, "test", self.eval_counts["test"].compute(), self._coverage_said)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        probs = self.eval_logits(self.evaluated_network(), images, "predict").softmax(dim=1)
        confidence, prediction = probs.max(dim=1)
        return {"prediction": prediction, "probability": confidence, "probs": probs}

    # ----- checkpoints ---------------------------------------------------------------------------

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
        checkpoint[evaluation.FLIP_AT_TEST] = self.flip_at_test
        if self.ema_network is not None:
            checkpoint[EMA_EVALUATED] = self.evaluate_ema

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best = checkpoint.get("val_acc_best")
        self._restored_best = best if best is not None and torch.isfinite(best) else None
        hparams = checkpoint.get("hyper_parameters") or {}
        if self._trainer is None:  # loaded in Python: evaluate as the run did (a run's TestTime callback decides)
            self.flip_at_test = bool(checkpoint.get(evaluation.FLIP_AT_TEST, hparams.get("tta_flip", False)))
        if self.network_spec is None:  # loaded in Python: later saves keep recording the network
            self.network_spec = (checkpoint.get(inference.ENTRY) or {}).get("network")
        has_average = "ema_network.n_averaged" in checkpoint.get("state_dict", {})
        if self.ema_network is not None and not has_average:
            raise CheckpointError(
                "the checkpoint holds no EMA weights (its run had no --ema.decay): drop --ema.* "
                "to evaluate its weights, or start a run from them with --fine_tune.weights"
            )
        if self.ema_network is None and has_average and self._fitting():
            raise CheckpointError(
                "the checkpoint holds an EMA of the weights and this run has no EMA callback to "
                "go on averaging them: resume with its --ema.decay, or start a new run from its "
                "weights with --fine_tune.weights"
            )
        if self.ema_network is None and has_average:
            # Averaged weights without the EMA callback (load_model, or a test without --ema.*): a place
            # for them, evaluated as the run did. Checkpoints from before the callback kept the setting
            # among the hyper-parameters.
            self.ema_network = averaged_copy(self.network)
            evaluated = checkpoint.get(EMA_EVALUATED, hparams.get("ema_eval"))
            self.evaluate_ema = bool(evaluated)

    def _fitting(self) -> bool:
        trainer = self._trainer  # None when loaded in Python without a Trainer
        return trainer is not None and trainer.state.fn == "fit"

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        **kwargs: Any,
    ) -> ImageClassifier:
        """Lightning's ``load_from_checkpoint``, read with ``weights_only=True`` by default; without
        ``network=`` the network is rebuilt from the checkpoint's record of it (checkpoints written
        before they carried one need ``network=``)."""
        if "network" not in kwargs:
            checkpoint = inference.read_checkpoint(checkpoint_path)
            kwargs["network"] = inference.network_from_checkpoint(checkpoint, checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs)

    # ----- set-up and optimiser -----------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if (
            stage == "fit"
            and self.ema_network is not None
            and not any(isinstance(callback, EMA) and callback.decay for callback in self.trainer.callbacks)
        ):  # a model loaded with its average, trained on without the callback: the average would go stale
            raise ValueError(
                "this model holds an EMA of its weights and the trainer has no EMA callback to go on averaging "
                "them: add lightning_modules.EMA(decay=...) to its callbacks, or set model.ema_network = None"
            )

    def on_fit_start(self) -> None:
        params = count_params(self.network)
        trainable = count_params(self.network, trainable_only=True)
        for logger in self.loggers:
            logger.log_hyperparams(
                {
                    "model/params": params,
                    "model/trainable_params": trainable,
                    "model/network": type(self.network).__name__,
                }
            )

    def configure_optimizers(self) -> dict[str, Any]:
        groups = build_param_groups(
            self.network, weight_decay_norm_bias=self.weight_decay_norm_bias, lr_multipliers=self.lr_multipliers
        )
        optimizer = self.optimizer_factory(groups)
        scale_group_lrs(optimizer)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        # The trainer as attached (None in Python without one): a schedule that needs its length says so.
        scheduler, interval = build_scheduler(self.scheduler_factory, optimizer, self._trainer, self.scheduler_interval)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


def _check_settings(
    optimizer: OptimizerCallable,
    scheduler_interval: str | None,
    label_smoothing: float,
    lr_multipliers: dict[str, float] | None,
) -> None:
    """Fail on a bad setting now, before any data is loaded."""
    if scheduler_interval not in (None, "epoch", "step"):
        raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if any(m < 0 for m in (lr_multipliers or {}).values()):
        raise ValueError("learning-rate multipliers must be >= 0")
    # Built once on a dummy parameter: a negative learning rate or an unknown argument fails with torch's message.
    optimizer([nn.Parameter(torch.zeros(1))])


def _num_classes(network: nn.Module) -> int:
    num_classes = getattr(network, "num_classes", None)
    if not isinstance(num_classes, int):
        raise ValueError("the network must expose an integer `num_classes` attribute")
    return num_classes
