"""Test-time reports: per-class accuracy and the confusion matrix, sent to every active logger.

TensorBoard gets the figure (``add_figure``), W&B a ``wandb.Image``, and a CSV logger's run folder
``confusion_matrix.png`` plus ``confusion_matrix.csv`` (counts, rows = true class) and
``per_class_accuracy.csv``. Class names come from the data module's ``classes`` when it has them.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

from lightning_modules.files import open_atomic

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
