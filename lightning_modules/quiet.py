"""What an ``ablate`` run prints by default: its own lines, the user's warnings, nothing of Lightning's chatter.

Lightning writes a dozen info lines before the first batch (the seed, accelerators it did not find,
advertisements, how it estimated a schedule's length), and torch warns about Lightning's use of a
deprecated class. None of it is the user's to act on. ``quiet()`` hides exactly that, with the
libraries' own switches:

- Lightning's loggers go to WARNING. Info lines this repository sends through Lightning's
  ``rank_zero_info`` (weights loaded, predictions written) are still shown: only the info lines from
  Lightning's own files are dropped, but for the few that follow a run's life (the checkpoint it
  resumed from, the signals it handled, each DDP process joining its group).
- Warnings are filtered one by one, by message and module; a warning the user's code or settings
  cause is never filtered.

``ablate <subcommand> --verbose`` skips ``quiet()`` and shows everything. ``say()`` prints one of
``ablate``'s own lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning_fabric
import lightning_utilities.core.rank_zero as rank_zero_module
import pytorch_lightning
from pytorch_lightning.utilities.rank_zero import rank_zero_only

LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric")
_LIGHTNING_CODE = tuple(
    str(Path(package.__file__).parent) + os.sep for package in (pytorch_lightning, lightning_fabric)
)
# Lightning's info lines a user needs to follow a run's life: which checkpoint a run resumed from (a
# SLURM requeue resumes from hpc_ckpt_N.ckpt without being asked), the signals it handled (SIGUSR1:
# checkpoint and requeue; SIGTERM), and each DDP process joining its group ("MEMBER: 2/8"), which
# says a cluster job formed the group it asked for. Their files, and the loggers they use.
_KEPT_INFO_FILES = (
    *(
        str(Path(pytorch_lightning.__file__).parent / "trainer" / "connectors" / name)
        for name in ("checkpoint_connector.py", "signal_connector.py")
    ),
    str(Path(lightning_fabric.__file__).parent / "utilities" / "distributed.py"),
)
KEPT_INFO_LOGGERS = ("pytorch_lightning.trainer.connectors.signal_connector", "lightning_fabric.utilities.distributed")

# (message regex, category, module regex): warnings that come from the libraries, not from anything the
# user wrote or set.
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # torch deprecated LeafSpec; Lightning's pytree helper still builds one for every batch it moves.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"pytorch_lightning\.utilities\._pytree"),
)


class _WithoutLightningInfo(logging.Filter):
    """Drops info (and debug) records logged from Lightning's own files; keeps everyone else's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (
            record.levelno >= logging.WARNING
            or not record.pathname.startswith(_LIGHTNING_CODE)
            or record.pathname in _KEPT_INFO_FILES
        )


_FILTER = _WithoutLightningInfo()


def _rank_zero_logger() -> logging.Logger:
    # The logger behind every rank_zero_info, Lightning's and ours (Lightning sets it on import).
    return rank_zero_module.log


def quiet() -> None:
    """Hide Lightning's info lines and the known library warnings (until ``restored()`` ends)."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in KEPT_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    shared = _rank_zero_logger()
    shared.setLevel(logging.INFO)  # below its parents' WARNING: our own info lines pass, the filter drops Lightning's
    shared.addFilter(_FILTER)
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


@rank_zero_only
def say(message: str) -> None:
    """One of ``ablate``'s own lines, on stderr and at once, from global rank 0 only (not once per
    DDP process). Never hidden by ``quiet()``."""
    print(message, file=sys.stderr, flush=True)


def resuming() -> None:
    """A resumed fit writes into its own checkpoints folder: Lightning's warning that the folder is not
    empty is then about the run's own files. A fresh fit into a folder that holds files still warns."""
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty", category=UserWarning)


@contextlib.contextmanager
def restored() -> Iterator[None]:
    """Undo whatever ``quiet()`` changed when the block ends: the next run in this process (a
    notebook, a test) starts from the process's own settings."""
    loggers = [logging.getLogger(name) for name in (*LIGHTNING_LOGGERS, *KEPT_INFO_LOGGERS)] + [_rank_zero_logger()]
    levels = [(logger, logger.level) for logger in loggers]
    filtered = _FILTER in _rank_zero_logger().filters  # by an enclosing run's quiet(): left in place
    with warnings.catch_warnings():
        try:
            yield
        finally:
            for logger, level in levels:
                logger.setLevel(level)
            if not filtered:
                _rank_zero_logger().removeFilter(_FILTER)
