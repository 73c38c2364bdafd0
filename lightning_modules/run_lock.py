"""One ``ablate`` process per run folder: an ``flock`` on ``<run folder>/.ablate.lock``.

Two processes in one run folder interleave their rows in ``metrics.csv`` and overwrite each
other's ``last.ckpt``. The lock is an ``fcntl.flock`` on a file in the folder, held until the run
ends; the kernel drops it when the process dies, so a crash or ``kill -9`` cannot leave a folder
locked. Only global rank 0 takes it (the other DDP ranks write nothing there).

The lock file is left in place (unlinking a lock file lets a late opener lock an orphaned
inode while a newcomer locks a new one), except in a folder that holds nothing else when the run
ends: a run refused or failed before it wrote anything leaves no empty ``version_N`` behind.

``lock_run_folder`` picks the folder a starting run holds; ``lock``/``unlock`` are the ``flock``
itself, which ``ablate sweep`` also takes on its study folder.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lightning_modules.errors import ConfigError

if TYPE_CHECKING:
    import pytorch_lightning as pl

LOCK_FILE = ".ablate.lock"

# Folders this process holds: resolved path -> open lock file (the lock lives as long as the handle).
_HELD: dict[Path, IO[str]] = {}


class LockHeld(Exception):
    """Another process holds the lock file; ``holder`` is what it wrote there (``lock``), or ``""``."""

    def __init__(self, path: str, holder: str) -> None:
        super().__init__(f"{path} is locked by {holder or 'another process'}")
        self.path, self.holder = path, holder


class RunFolderInUse(Exception):
    """Another process holds the run folder's lock; ``holder`` is what it wrote there (pid, host)."""

    def __init__(self, folder: Path, holder: str) -> None:
        super().__init__(f"{folder} is locked by {holder}")
        self.folder, self.holder = folder, holder


def lock(handle: IO[str]) -> None:
    """Take the ``flock`` of an open lock file (mode ``"a+"``) without waiting, and write this process
    into it (``"pid 123 on host"``). Run folders and ``ablate sweep``'s study folders both lock this way.

    Raises:
        LockHeld: another process holds it; the handle is closed.
        OSError: the file system offers no locks (ENOLCK on a network file system mounted without
            them); the handle is closed.
    """
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise LockHeld(handle.name, holder) from None
    except OSError:
        handle.close()
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
    handle.flush()


def unlock(handle: IO[str]) -> None:
    """Let go of a lock ``lock`` took, and close the file."""
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def acquire(folder: str | Path) -> bool:
    """Lock ``folder`` (created if missing) for this process.

    Returns:
        True once held (also when this process already held it); False when the file system
        offers no locks (a warning says the folder is unguarded).

    Raises:
        RunFolderInUse: another process holds it.
    """
    folder = Path(folder).resolve()
    if folder in _HELD:
        return True
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the run's lifetime
    try:
        lock(handle)
    except LockHeld as busy:
        raise RunFolderInUse(folder, busy.holder or "pid unknown") from None
    except OSError as error:  # e.g. ENOLCK on a network file system mounted without locks
        print(
            f"ablate: warning: cannot lock {folder} ({error.strerror}); another process could write "
            "into this run folder at the same time",
            file=sys.stderr,
            flush=True,
        )
        return False
    _HELD[folder] = handle
    return True


def release(folder: str | Path) -> None:
    """Let go of ``folder``; removes the lock file and the folder when nothing else is in it."""
    folder = Path(folder).resolve()
    handle = _HELD.pop(folder, None)
    if handle is None:
        return
    try:
        if [path.name for path in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink()
            folder.rmdir()
    except OSError:
        pass  # someone wrote into it meanwhile, or it went away: leave it as it is
    finally:
        unlock(handle)


def held() -> list[Path]:
    return list(_HELD)


def describe_holder(holder: str) -> str:
    """``"pid 123 on host"`` as written by ``acquire``; the host is dropped when it is this machine."""
    host = socket.gethostname()
    return holder.removesuffix(f" on {host}") if holder.endswith(f" on {host}") else holder


def lock_run_folder(trainer: pl.Trainer, trainer_config: Any) -> Path | None:
    """Hold the run folder for this process (``acquire``); refuse when another process holds it.

    The folder is the configured one (a fixed logger version, as a sweep's or a resumed run's) or,
    for a new ``version_N``, the first file logger's; two new runs that counted the same N at once
    do not clash: the later one takes the next number. Only global rank 0 locks (DDP's other ranks
    write nothing into the folder and must not wait for it). W&B-only runs keep their own folders.
    """
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from lightning_modules.run_folders import fixed_run_folder

    if trainer.global_rank != 0:
        return None
    folder = fixed_run_folder(trainer_config)
    logger = trainer.loggers[0] if trainer.loggers else None
    numbered = folder is None and isinstance(logger, (CSVLogger, TensorBoardLogger))
    if folder is None and not numbered:
        return None
    for _ in range(1000):
        if numbered:
            version = logger.version
            folder = Path(logger.root_dir) / (version if isinstance(version, str) else f"version_{version}")
        try:
            return folder if acquire(folder) else None
        except RunFolderInUse as busy:
            if not numbered or not isinstance(logger.version, int):
                holder = describe_holder(busy.holder)
                raise ConfigError(
                    f"run folder {busy.folder} is in use by another ablate process ({holder}); "
                    "wait for it or choose another folder"
                ) from None
            # Loggers share the version (cli._align_logger_versions) and offer no setter for it: their
            # private `_version` is what their read-only `version` returns.
            for each in trainer.loggers:
                if hasattr(each, "_version"):
                    each._version = version + 1
    raise ConfigError(f"no free run folder next to {folder}")
