"""On-disk cache of decoded datasets and fitted preprocessing, keyed on what the source looks like.

A key is a hash of the source's file list with each file's size and mtime (plus whatever settings
shape the result), so editing, adding or removing a file invalidates the entry. Entries are plain
``.pt`` dicts of tensors, strings and numbers, read back with ``torch.load(weights_only=True)``;
writes go to a temporary file beside the entry, flushed to disk, then moved into place with
``os.replace``, so concurrent DDP ranks or an interrupted run never leave a half-written entry. A new
entry replaces the older entries of the same dataset, split and source.

The cache is an optimisation, never a reason to stop: an entry that cannot be read is a miss (and
is rebuilt), and one that cannot be written (a full disk, a cache folder that is a file, no
permission) costs one line on stderr and the run goes on without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from lightning_modules.files import SaveError, open_atomic

# Bump when the layout of cached entries changes, so old caches are rebuilt.
CACHE_VERSION = 1

# The names this module writes, and the only ones `ablate cache --clear` removes: an entry
# ``<prefix>-<24 hex digits>.pt`` (``DiskCache.path``) and a write in progress
# ``.<entry name>.<pid>.<8 hex digits>.tmp`` (``save_atomic``).
ENTRY_NAME = re.compile(r"[^.].*-[0-9a-f]{24}\.pt")
TEMPORARY_NAME = re.compile(r"\..+\.pt\.[0-9]+\.[0-9a-f]{8}\.tmp")


def hash_strings(*parts: object) -> str:
    """Hex digest of the parts' string forms, separated."""
    digest = hashlib.sha256()
    for part in (CACHE_VERSION, *parts):
        digest.update(str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def file_fingerprint(paths: Iterable[Path]) -> str:
    """Hash of every file's path, size and modification time (nanoseconds)."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def save_atomic(entry: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, renamed over ``path``
    (``lightning_modules.files.open_atomic``).

    Saved through an open file, so a full disk surfaces as an ``OSError`` (ENOSPC; a ``SaveError``
    whose cause is the OS's error) rather than the C++ writer's RuntimeError; on any failure the
    temporary file is removed and ``path`` is untouched.
    """
    with open_atomic(path, "wb") as handle:
        torch.save(entry, handle)


class DiskCache:
    """Entries ``<cache_dir>/<prefix>-<key>.pt``; ``prefix`` names dataset, split and source.

    Args:
        cache_dir: Folder of the entries, created on the first write.
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir).expanduser()

    def path(self, prefix: str, key: str) -> Path:
        return self.cache_dir / f"{prefix}-{key[:24]}.pt"

    def load(self, prefix: str, key: str) -> dict[str, Any] | None:
        """The entry, or None when it is missing or unreadable (then it is rebuilt)."""
        path = self.path(prefix, key)
        try:
            if not path.is_file():  # also False when the cache folder is a file: save() says so
                return None
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(entry, dict):
                raise TypeError(f"holds a {type(entry).__name__}, not an entry's dict")
            return entry
        except FileNotFoundError:  # removed since is_file() (`ablate cache --clear`, a newer entry): a miss
            return None
        except Exception as error:  # truncated by a full disk, written by an incompatible version...
            warnings.warn(f"ignoring unreadable cache entry {path} ({error}); rebuilding it", stacklevel=2)
            return None

    def save(self, prefix: str, key: str, entry: dict[str, Any]) -> Path | None:
        """Write atomically and drop the entries it supersedes; one line on stderr (not a failure)
        when it cannot be written."""
        path = self.path(prefix, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_atomic(entry, path)
        except Exception as failure:  # OSError, and torch.save's RuntimeError from its C++ writer
            # A SaveError names the file and what was kept; this line says that itself, with the OS's words.
            error = failure.__cause__ if isinstance(failure, SaveError) and failure.__cause__ else failure
            if os.path.exists(self.cache_dir) and not os.path.isdir(self.cache_dir):
                reason = f"the cache folder {self.cache_dir} is a file"
            elif isinstance(error, OSError) and error.strerror:
                reason = error.strerror
            else:
                reason = (str(error).splitlines() or [type(error).__name__])[0]
            print(f"cache not written: {path}: {reason}; training continues without it", file=sys.stderr)
            return None
        with contextlib.suppress(OSError):  # a stale entry left behind costs disk space only
            for old in self.cache_dir.glob(f"{prefix}-*.pt"):
                if old != path:
                    old.unlink(missing_ok=True)
        return path

    def get_or_build(self, prefix: str, key: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The cached entry, else ``build()``'s result, stored for next time."""
        entry = self.load(prefix, key)
        if entry is None:
            entry = build()
            self.save(prefix, key, entry)
        return entry
