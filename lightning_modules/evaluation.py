"""What an evaluation covered and per-class results: the classifier's reports after validation and test.

After each evaluation: the images and classes it covered (``val/images``, ``val/classes_seen``; one
line on stderr when ``limit_*_batches`` cut it short). After a test, under the ``TestTime`` callback
(``--test_time.*`` on ``ablate``): per-class accuracy and the confusion matrix, sent to every active
logger; the same callback turns on flip averaging at test and predict time.

TensorBoard gets the figure (``add_figure``), W&B a ``wandb.Image``, and a CSV logger's run folder
``confusion_matrix.png`` plus ``confusion_matrix.csv`` (counts, rows = true class) and
``per_class_accuracy.csv``. Class names come from the data module's ``classes`` when it has them.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import Callback
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from lightning_modules.files import open_atomic

# Per-class accuracies are logged as scalars up to this many classes; all of them always go to
# per_class_accuracy.csv (ImageNet's 1000 columns would swamp metrics.csv).
PER_CLASS_SCALARS = 20

# Above this many classes the figure drops its tick labels and cell counts (ImageNet's 1000
# would be unreadable ink); the CSV files always hold everything.
LABELLED_CLASSES = 30


def class_names(datamodule: object, num_classes: int) -> list[str]:
    """``datamodule.classes`` when it names every class, else ``"0"``, ``"1"``, ..."""
    names = getattr(datamodule, "classes", None)
    if names is not None and len(names) == num_classes:
        return [str(name) for name in names]
    return [str(index) for index in range(num_classes)]


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class from a ``(true, predicted)`` count matrix; NaN for an absent class."""
    confusion = confusion.double()
    return confusion.diagonal() / confusion.sum(dim=1)


def confusion_figure(confusion: torch.Tensor, names: Sequence[str], title: str = "test") -> Figure:
    """Row-normalised confusion matrix (each true class sums to 1), counts written in each cell."""
    counts = confusion.cpu()
    rates = (counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    size = min(24.0, 3.0 + 0.45 * len(names))
    figure = Figure(figsize=(size, size), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    accuracy = counts.diagonal().sum().item() / max(1, counts.sum().item())
    axes.set_title(f"{title} confusion matrix (accuracy {100 * accuracy:.2f}%)")
    if len(names) <= LABELLED_CLASSES:
        ticks = range(len(names))
        axes.set_xticks(ticks, names, rotation=45, ha="right")
        axes.set_yticks(ticks, names)
        for row in range(len(names)):
            for col in range(len(names)):
                if counts[row, col]:
                    colour = "white" if rates[row, col] > 0.5 else "black"
                    axes.text(col, row, int(counts[row, col]), ha="center", va="center", color=colour, fontsize=7)
    return figure


def write_csvs(confusion: torch.Tensor, names: Sequence[str], folder: Path) -> list[Path]:
    """``confusion_matrix.csv`` and ``per_class_accuracy.csv`` in ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = confusion.cpu().long()
    matrix_path, accuracy_path = folder / "confusion_matrix.csv", folder / "per_class_accuracy.csv"
    with open_atomic(matrix_path, "w", newline="") as file:  # whole or not at all
        writer = csv.writer(file)
        writer.writerow(["true \\ predicted", *names])
        for name, row in zip(names, counts.tolist(), strict=True):
            writer.writerow([name, *row])
    accuracy = per_class_accuracy(counts)
    with open_atomic(accuracy_path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["class_index", "class", "correct", "total", "accuracy"])
        for index, name in enumerate(names):
            total = int(counts[index].sum())
            writer.writerow([index, name, int(counts[index, index]), total, f"{accuracy[index].item():.6f}"])
    return [matrix_path, accuracy_path]


def log_confusion_matrix(loggers: Sequence[object], confusion: torch.Tensor, names: Sequence[str], step: int) -> None:
    """Send the figure (and, for CSV loggers, the files) to each logger that can take them."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    figure = confusion_figure(confusion, names)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure("test/confusion_matrix", figure, global_step=step, close=False)
        elif isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({"test/confusion_matrix": wandb.Image(figure), "trainer/global_step": step})
        elif isinstance(logger, CSVLogger):
            folder = Path(logger.log_dir)
            write_csvs(confusion, names, folder)
            with open_atomic(folder / "confusion_matrix.png", "wb") as handle:
                figure.savefig(handle, format="png")


def hard_targets(targets: torch.Tensor) -> torch.Tensor:
    """Class indices of class indices or of soft targets (MixUp/CutMix)."""
    return targets.argmax(dim=1) if targets.is_floating_point() else targets


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


def report_coverage(module: Any, stage: str, counts: torch.Tensor, said: set[tuple[str, int]]) -> None:
    """Log the images and classes ``stage`` evaluated (``counts``: images per class, summed over
    processes); when that was less than the whole split (``limit_*_batches``), say so in one line on
    stderr, once per stage and epoch (``said`` remembers)."""
    counts = counts.cpu()
    images, seen = int(counts.sum()), int((counts > 0).sum())
    module.log(f"{stage}/images", float(images), sync_dist=True)
    module.log(f"{stage}/classes_seen", float(seen), sync_dist=True)
    trainer = module.trainer
    loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    try:
        total = sum(len(loader.dataset) for loader in loaders)
    except (AttributeError, TypeError):  # a dataset without a length: nothing to compare with
        return
    key = (stage, module.current_epoch)
    if images >= total or key in said or not trainer.is_global_zero:
        return
    said.add(key)
    num_classes = len(counts)
    if num_classes <= PER_CLASS_SCALARS:
        names = class_names(getattr(trainer, "datamodule", None), num_classes)
        detail = ": " + ", ".join(f"{name} {count}" for name, count in zip(names, counts.tolist(), strict=True))
    else:
        detail = f", {int(counts.min())} to {int(counts.max())} images each"
    print(
        f"ablate: {stage} limited to {images:,} of {total:,} images ({seen} of {num_classes} classes{detail})",
        file=sys.stderr,
        flush=True,
    )


def report_confusion(module: Any, confusion: torch.Tensor) -> None:
    """Per-class test accuracy as scalars (up to ``PER_CLASS_SCALARS`` classes) and the confusion
    matrix to every logger (rank zero)."""
    num_classes = len(confusion)
    names = class_names(getattr(module.trainer, "datamodule", None), num_classes)
    if num_classes <= PER_CLASS_SCALARS:
        for name, accuracy in zip(names, per_class_accuracy(confusion), strict=True):
            if not torch.isnan(accuracy):
                module.log(f"test/acc_class/{name}", accuracy.float(), sync_dist=True)
    if module.trainer.is_global_zero:
        log_confusion_matrix(module.loggers, confusion, names, module.global_step)


# Where a checkpoint records whether its run's tests averaged flips, so ``load_model`` predicts the same way.
FLIP_AT_TEST = "flip_at_test"


class TestTime(Callback):
    """What a test adds to the classifier's metrics: flip averaging and the per-class report.

    Args:
        flip: At test and predict time, average the logits of each image and its mirror. Validation
            stays unaugmented, so the model a run selects does not change.
        confusion_matrix: After a test, log per-class accuracy (``test/acc_class/<name>``, up to
            ``PER_CLASS_SCALARS`` classes) and the confusion matrix to every logger (CSV logger:
            PNG and CSV files in the run folder).
    """

    __test__ = False  # a callback, not a test class for pytest to collect

    def __init__(self, flip: bool = False, confusion_matrix: bool = True) -> None:
        self.flip = flip
        self.confusion_matrix = confusion_matrix
        self._confusion: MulticlassConfusionMatrix | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.flip_at_test = self.flip

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.confusion_matrix:
            self._confusion = MulticlassConfusionMatrix(pl_module.num_classes).to(pl_module.device)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._confusion is not None:  # outputs: the logits the test step scored
            self._confusion.update(outputs, hard_targets(batch[1]))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._confusion is not None:
            report_confusion(pl_module, self._confusion.compute())  # compute() reduces over processes
            self._confusion = None
