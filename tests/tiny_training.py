"""Small training pieces the recipe and transfer tests share: a tiny network, tiny data a network
learns in a few steps, a quick CPU Trainer, and a classifier's optimiser and schedule as configured."""

from __future__ import annotations

import functools

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules import ImageClassifier


class TinyNet(nn.Module):
    """Conv + BN + linear head: a bias, a norm layer and a head, small enough to train in a blink."""

    def __init__(self, num_classes: int = 4, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.features = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class TinyData(pl.LightningDataModule):
    """Random images whose class is the brightest quarter of the image; named classes."""

    classes = ("north_west", "north_east", "south_west", "south_east")

    def __init__(self, count: int = 64, size: int = 16, in_chans: int = 3, batch_size: int = 16) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.labels = torch.arange(count) % 4
        self.images = torch.randn(count, in_chans, size, size, generator=generator)
        half = size // 2
        for index, label in enumerate(self.labels.tolist()):
            rows, cols = divmod(label, 2)
            self.images[index, :, rows * half : (rows + 1) * half, cols * half : (cols + 1) * half] += 2.0
        self.batch_size = batch_size
        self.num_classes = 4

    def _loader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.images, self.labels), batch_size=self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    val_dataloader = test_dataloader = predict_dataloader = train_dataloader


def quick_trainer(max_steps: int = 4, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=2,
    )  # fmt: skip
    return pl.Trainer(**{**options, **kwargs})


def sgd(lr: float = 0.1, **kwargs) -> functools.partial:
    return functools.partial(torch.optim.SGD, lr=lr, momentum=0.9, **kwargs)


class FakeTrainer:
    """What configure_optimizers reads from the trainer to fill a schedule's length."""

    def __init__(self, total_steps: int, batches_per_epoch: int = 10, accumulate: int = 1, max_epochs: int = 3):
        self.estimated_stepping_batches = total_steps
        self.num_training_batches = batches_per_epoch
        self.accumulate_grad_batches = accumulate
        self.max_epochs = max_epochs
        self.train_dataloader = object()


def configured(model: ImageClassifier, trainer: FakeTrainer | None = None) -> tuple:
    if trainer is not None:
        model._trainer = trainer
    config = model.configure_optimizers()
    scheduler = config.get("lr_scheduler", {})
    return config["optimizer"], scheduler.get("scheduler"), scheduler.get("interval")
