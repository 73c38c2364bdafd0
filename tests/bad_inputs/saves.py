"""Bad-input cases. Saves: checkpoints, caches, records, reports;
full, read-only or foreign file systems; divergence."""

from __future__ import annotations

import os
from pathlib import Path

from tests.bad_inputs.case import CIFAR, FIT, TEST, Case  # noqa: F401

# One short epoch that reaches a checkpoint save (fast_dev_run saves none), with checkpointing
# replaced by one ModelCheckpoint whose setting the case breaks. (A checkpoint folder under a file,
# or too long a path, is refused before the run by the output-folder checks: tests/bad_inputs/messages.py.)
_SAVING = (
    f"{FIT} --trainer.fast_dev_run=false --trainer.max_epochs=1 --trainer.limit_train_batches=1"
    " --trainer.limit_val_batches=1 --trainer.callbacks=pytorch_lightning.callbacks.ModelCheckpoint"
)

CASES: list[Case] = [
    # The folder is fine, the file name is not: found only when the checkpoint is saved.
    Case(
        "checkpoint-name-too-long",
        f"{_SAVING} --trainer.callbacks.init_args.filename={'x' * 300}",
        "xxx.ckpt: File name too long; nothing was written",
    ),
]
if os.geteuid() != 0:  # root writes into a read-only (chmod 555) folder all the same
    CASES.append(
        Case(
            "checkpoint-folder-read-only",
            f"{_SAVING} --trainer.callbacks.init_args.dirpath={{read_only_checkpoints}}",
            "Permission denied",
        )
    )


def write_inputs(root: Path) -> dict[str, Path]:
    """Create the inputs this family's cases name under ``root``; returns ``{placeholder: path}``."""
    root.mkdir(parents=True, exist_ok=True)
    read_only = root / "read_only_checkpoints"
    read_only.mkdir(exist_ok=True)
    read_only.chmod(0o555)
    return {"read_only_checkpoints": read_only}
