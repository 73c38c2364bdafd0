"""Files written whole or not at all: a reader never sees half a record, a crash leaves the old one.

Every write goes to a temporary file in the target's own folder, is flushed and fsync'ed, renamed
over the target with ``os.replace`` and the folder is fsync'ed. The temporary file sits beside the
target, so the rename never crosses a file system (where it would be a copy that a kill can
interrupt, as with a temporary file in ``$TMPDIR``); on any failure it is removed and the old file
stands. Its name, ``.<name>.<pid>.<token>.tmp``, is hidden, never ends in ``.ckpt``/``.json`` and
carries the writer's process id, so a leftover of a killed process is recognised and removed
(``remove_stale_temporaries``) and never taken for a checkpoint or a record.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

# Longest file name most file systems take; the temporary name must fit where the target fits.
_NAME_MAX = 255
_TEMPORARY = re.compile(r"\..+\.(?P<pid>\d+)(\.[0-9a-f]{8})?\.tmp")
# fsync of a folder is refused by some file systems (and by Windows); the rename has happened.
_NO_FOLDER_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EISDIR, errno.EACCES}


class SaveError(OSError):
    """A file that could not be written; the message is one line naming the file and the cause,
    and saying whether the previous version of the file is intact."""


def temporary_path(path: Path) -> Path:
    suffix = f".{os.getpid()}.{secrets.token_hex(4)}.tmp"
    return path.with_name(f".{path.name[: _NAME_MAX - len(suffix) - 1]}{suffix}")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of our temporary files (complete or not, never a result)."""
    return _TEMPORARY.fullmatch(name) is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists and belongs to someone else
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files in ``folder`` left by processes that no longer run (a SIGKILL
    during a save); returns what was removed. A live writer's file is left alone."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass  # another process cleaned it up first, or the folder is read-only: harmless
    return removed


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError as error:
        if error.errno in _NO_FOLDER_FSYNC:
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in _NO_FOLDER_FSYNC:
            raise
    finally:
        os.close(descriptor)


def _failure(path: Path, error: OSError, renamed: bool) -> SaveError:
    cause = error.strerror or str(error) or type(error).__name__
    if renamed:
        outcome = f"{path.name} was replaced but may not survive a power loss"
    elif path.exists():
        outcome = f"the previous {path.name} is intact"
    else:
        outcome = "nothing was written"
    failure = SaveError(f"could not save {path}: {cause}; {outcome}")
    failure.errno = error.errno
    return failure


class AtomicFile:
    """A temporary file beside ``path`` that replaces it on ``commit()`` or vanishes on ``discard()``,
    for writes spread over several calls (a callback's hooks); ``open_atomic`` for one block.

    ``mode`` is ``"w"`` or ``"wb"``, plus ``open``'s keywords (``newline``, ``encoding``).
    """

    def __init__(self, path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> None:
        self.path = Path(path)
        self.tmp = temporary_path(self.path)
        try:
            self.handle: IO = open(self.tmp, mode.replace("w", "x"), **open_kwargs)
        except OSError as error:
            raise _failure(self.path, error, renamed=False) from error

    def commit(self) -> None:
        """Flush and fsync the file, rename it over ``path``, fsync the folder; ``SaveError`` if any fails."""
        renamed = False
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.tmp, self.path)
            renamed = True
            _fsync_folder(self.path.parent)
        except OSError as error:
            raise _failure(self.path, error, renamed) from error
        finally:
            if not renamed:
                self.discard()

    def discard(self) -> None:
        """Remove the temporary file; ``path`` stays as it was."""
        with suppress(OSError):  # closing flushes the buffer, which fails again on a full disk
            self.handle.close()
        self.tmp.unlink(missing_ok=True)


@contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """A file handle whose contents replace ``path`` when the ``with`` block ends without error.

    An exception in the block, or an ``OSError`` while writing, syncing or renaming, removes the
    temporary file and leaves ``path`` as it was; ``OSError``s come out as one ``SaveError`` naming
    ``path`` and the cause.
    """
    file = AtomicFile(path, mode, **open_kwargs)
    try:
        yield file.handle
    except BaseException as error:
        file.discard()
        if isinstance(error, OSError) and not isinstance(error, SaveError):
            raise _failure(file.path, error, renamed=False) from error
        raise
    file.commit()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``open_atomic`` for writers that take a path, not a handle: they write to the yielded
    temporary path (same file, so the fsync covers what they wrote), which then replaces ``path``."""
    with open_atomic(path, "wb") as handle:
        yield Path(handle.name)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (see the module's rule)."""
    with open_atomic(path, "w") as handle:
        handle.write(text)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
