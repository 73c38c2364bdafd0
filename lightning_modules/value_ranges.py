"""Settings that parse as numbers but are outside what they can mean, refused before the run starts.

Lightning's Trainer accepts these and fails later, mid-epoch, with a bare ``ZeroDivisionError``
(``val_check_interval=0``, ``log_every_n_steps=0``, ``check_val_every_n_epoch=0``,
``accumulate_grad_batches=0``) or trains silently wrong (a negative ``gradient_clip_val`` clips to a
negative norm, which flips every gradient). A ``num_workers`` below 0 fails in the DataLoader's
constructor without naming the key. Each is refused here in one line naming the key.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.config_lookup import lookup
from lightning_modules.errors import ConfigError

# key under `trainer` -> (smallest allowed value, what the value means); None always allowed.
_TRAINER_MINIMUM: dict[str, tuple[float, str]] = {
    "check_val_every_n_epoch": (1, "validate every N epochs (N >= 1), or null to validate by val_check_interval only"),
    "log_every_n_steps": (1, "log every N optimiser steps (N >= 1)"),
    "accumulate_grad_batches": (1, "the number of batches per optimiser step (>= 1; 1 = no accumulation)"),
    "gradient_clip_val": (0, "the largest gradient norm or value (>= 0; 0 or null = no clipping)"),
    "num_sanity_val_steps": (-1, "validation batches before training (>= 0; -1 = all of them)"),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_value_ranges(run: Any) -> None:
    """Raise ``ConfigError`` for the first setting of ``run`` (one subcommand's config) that is out of range."""
    trainer = lookup(run, "trainer")
    interval = lookup(trainer, "val_check_interval")
    if _is_number(interval) and interval == 0:
        raise ConfigError(
            "trainer.val_check_interval=0 would never validate (Lightning divides by it mid-epoch); give a "
            "fraction of the epoch in (0, 1] or a number of training batches >= 1"
        )
    if isinstance(interval, float) and interval > 1:  # Lightning checks this only outside fast_dev_run
        raise ConfigError(
            f"trainer.val_check_interval={interval} is out of range: a fraction of the epoch is in (0, 1]; "
            "a number of training batches is an integer"
        )
    for key, (minimum, meaning) in _TRAINER_MINIMUM.items():
        value = lookup(trainer, key)
        if _is_number(value) and value < minimum:
            raise ConfigError(f"trainer.{key}={value} is out of range: it is {meaning}")
    workers = lookup(run, "data", "init_args", "num_workers")
    if workers is None:
        workers = lookup(run, "data", "num_workers")
    if _is_number(workers) and workers < 0:
        raise ConfigError(
            f"data.init_args.num_workers={workers} is out of range: it is the number of loader processes "
            "(0 = load in the main process)"
        )
