"""A resumed run draws the same random numbers as the uninterrupted one, and its metrics.csv is whole.

``ExactResume``: the torch, CUDA, NumPy and Python RNG states travel in every checkpoint, so a run
resumed at an epoch boundary draws the same shuffles, augmentations and dropout masks as the
uninterrupted run and ends with bitwise identical weights; the loggers are flushed with every
checkpoint, so ``metrics.csv`` on disk holds the rows up to it (docs/reliability.md, "Resume after a kill").
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class ExactResume(Callback):
    """Carry the RNG states in checkpoints and restore them on resume; flush the loggers with
    every checkpoint.

    Lightning restores weights, optimiser, schedule and loop counters but not the random number
    generators, and the default ``RandomSampler`` draws each epoch's order from the global torch
    RNG; without this callback a resumed run shuffles differently from the uninterrupted one.
    The states are plain tensors, ints and tuples, so checkpoints still load with
    ``weights_only=True``. Under DDP every process restores rank 0's states (which equal its own
    under ``seed_everything``, as every process draws the same numbers).

    The CSV logger writes its rows every ``flush_logs_every_n_steps`` (100) steps; a run killed in
    between would lose them. Flushing whenever a checkpoint is written (and when an epoch starts,
    for the previous epoch's training averages) keeps ``metrics.csv`` as complete as the checkpoint.
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            logger.save()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.save()

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)),
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
