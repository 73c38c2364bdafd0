"""One ``ablate`` process per run folder: an ``flock`` on ``<run folder>/.ablate.lock``.

Two processes in one run folder interleave their rows in ``metrics.csv`` and overwrite each
other's ``last.ckpt``. The lock is an ``fcntl.flock`` on a file in the folder, held until the run
ends; the kernel drops it when the process dies, so a crash or ``kill -9`` cannot leave a folder
locked. Only global rank 0 takes it (the other DDP ranks write nothing there).

The lock file is left in place (unlinking a lock file lets a late opener lock an orphaned
inode while a newcomer locks a new one), except in a folder that holds nothing else when the run
ends: a run refused or failed before it wrote anything leaves no empty ``version_N`` behind.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from pathlib import Path
from typing import IO

LOCK_FILE = ".ablate.lock"

# Folders this process holds: resolved path -> open lock file (the lock lives as long as the handle).
_HELD: dict[Path, IO[str]] = {}


class RunFolderInUse(Exception):
    """Another process holds the run folder's lock; ``holder`` is what it wrote there (pid, host)."""

    def __init__(self, folder: Path, holder: str) -> None:
        super().__init__(f"{folder} is locked by {holder}")
        self.folder, self.holder = folder, holder


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
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "pid unknown"
        handle.close()
        raise RunFolderInUse(folder, holder) from None
    except OSError as error:  # e.g. ENOLCK on a network file system mounted without locks
        handle.close()
        print(f"ablate: warning: cannot lock {folder} ({error.strerror}); another process could write "
              "into this run folder at the same time", file=sys.stderr, flush=True)
        return False
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
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
        handle.close()  # closing the last descriptor drops the flock


def release_all() -> None:
    for folder in list(_HELD):
        release(folder)


def held() -> list[Path]:
    return list(_HELD)


def describe_holder(holder: str) -> str:
    """``"pid 123 on host"`` as written by ``acquire``; the host is dropped when it is this machine."""
    host = socket.gethostname()
    return holder.removesuffix(f" on {host}") if holder.endswith(f" on {host}") else holder
