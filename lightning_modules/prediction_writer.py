"""``ablate predict`` to a CSV file: one row per image with its predicted class and probability,
and its true class where the data has labels.

Add it with ``--config experiments/presets/predict_csv.yaml`` after the experiment's config. Rows
carry the image's index and, when the dataset knows its files (ImageNet-style folders: ``samples``),
the file path; the class name comes from the data module's ``classes``.

``index`` is the image's position in the official split the predict set comes from (the order of
the pickle or IDX arrays, or of the sorted class folders and file names), not its position in the
class-interleaved evaluation order the data modules hold; datasets without ``source_index`` (any
other dataset) report their own positions, which are the same thing there.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info

from lightning_modules.evaluation import class_names
from lightning_modules.files import AtomicFile

# True classes last, so readers of the earlier columns by position are unaffected.
COLUMNS = ["index", "file", "class_index", "class", "probability", "true_class_index", "true_class"]


def _source_index(dataset: object, index: int) -> int:
    """Position in the official split, for datasets that hold a reordered selection of it."""
    source = getattr(dataset, "source_index", None)
    return int(source[index]) if source is not None else index


def _file_of(dataset: object, index: int) -> str:
    samples = getattr(dataset, "samples", None) or getattr(dataset, "imgs", None)
    if samples is not None:
        return str(samples[index][0])
    files = getattr(dataset, "files", None)
    return str(files[index]) if files is not None else ""


def _labels(batch: Any, size: int) -> list[int | None]:
    """The batch's true classes (an ``(images, labels)`` batch), None for each image without one."""
    labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
    if isinstance(labels, torch.Tensor) and labels.shape == (size,) and not labels.is_floating_point():
        return [label if label >= 0 else None for label in labels.tolist()]  # negative: unlabelled
    return [None] * size


class CSVPredictionWriter(BasePredictionWriter):
    """Writes ``index, file, class_index, class, probability, true_class_index, true_class`` for every
    predicted image; the last two are empty where the data has no labels.

    Args:
        path: CSV file to write; None writes ``predictions.csv`` into the run folder
            (``trainer.log_dir``, else ``trainer.default_root_dir``). Under DDP each process
            writes its own file, suffixed ``.rank<N>``.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self._file = None
        self._writer = None
        self._names: list[str] = []
        self._datasets: Sequence[object] = ()
        self._seen: dict[int, int] = {}
        self.written: Path | None = None

    def _resolve_path(self, trainer: pl.Trainer) -> Path:
        path = Path(self.path) if self.path else Path(trainer.log_dir or trainer.default_root_dir) / "predictions.csv"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.name}.rank{trainer.global_rank}")
        return path

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.written = self._resolve_path(trainer)
        self.written.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target and renamed over it at the end: an interrupted or failed prediction
        # leaves the previous predictions.csv (or none), never a partial one that looks complete.
        self._file = AtomicFile(self.written, "w", newline="")
        self._writer = csv.writer(self._file.handle)
        self._writer.writerow(COLUMNS)
        self._names = class_names(trainer.datamodule, pl_module.num_classes)
        loaders = trainer.predict_dataloaders
        loaders = loaders if isinstance(loaders, Sequence) else [loaders]
        self._datasets = [getattr(loader, "dataset", None) for loader in loaders]
        self._seen = {}

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        classes = prediction["prediction"].tolist()
        probabilities = prediction["probability"].float().tolist()
        start = self._seen.get(dataloader_idx, 0)
        self._seen[dataloader_idx] = start + len(classes)
        if batch_indices is None:  # iterable datasets: the position in the stream
            batch_indices = range(start, start + len(classes))
        dataset = self._datasets[dataloader_idx] if dataloader_idx < len(self._datasets) else None
        truths = _labels(batch, len(classes))
        for index, label, probability, truth in zip(batch_indices, classes, probabilities, truths, strict=True):
            self._writer.writerow(
                [
                    _source_index(dataset, index),
                    _file_of(dataset, index),
                    label,
                    self._names[label],
                    f"{probability:.6f}",
                    "" if truth is None else truth,
                    "" if truth is None or truth >= len(self._names) else self._names[truth],
                ]
            )

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.commit()
            rank_zero_info(f"predictions written to {self.written}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._file is not None:
            self._file.discard()
            self._file = None
