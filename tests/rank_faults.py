"""A callback that fails one DDP rank alone, for the tests of what a failing DDP run prints last."""

from __future__ import annotations

import pytorch_lightning as pl


class FailOnRank(pl.Callback):
    """Raise ``ValueError(message)`` on global rank ``rank`` at the first training batch; the other
    ranks carry on into the gradient all-reduce and lose their peer there."""

    def __init__(self, rank: int = 0, message: str = "rank fault for the test") -> None:
        self.rank, self.message = rank, message

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_rank == self.rank:
            raise ValueError(f"{self.message} (rank {trainer.global_rank})")
