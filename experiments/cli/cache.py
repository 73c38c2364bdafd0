"""``ablate cache``: where the decode cache lives, what it holds, and ``--clear`` to empty it.

The cache (``datamodules.cache``) keeps decoded image trees, CIFAR batches and fitted ZCA matrices
as ``.pt`` entries in ``$ABLATE_CACHE_DIR``, else ``~/.cache/ablate``; a run rebuilds any entry that
is missing. ``--clear`` removes only the files the cache writes (entries, and temporaries of writes
that ended an hour ago or more), never a link, a folder or any other file, so a cache folder shared
with other files stays theirs. A run reading the cache meanwhile sees a removed entry as a miss.

    ablate cache                      # the folder, each entry with its size and date, the total
    ablate cache --clear              # remove them
    ablate cache --cache_dir /scratch/ablate-cache
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

from datamodules.base import default_cache_dir
from datamodules.cache import ENTRY_NAME, TEMPORARY_NAME

# A temporary younger than this may be a write in progress in another process (a write takes
# seconds); older ones were left by a process that was killed mid-write.
STALE_TEMPORARY_S = 3600


@dataclass(frozen=True)
class CacheFile:
    """One file the cache wrote."""

    path: Path
    size: int
    mtime: float
    temporary: bool


def cache_files(folder: Path) -> list[CacheFile]:
    """The entries and temporaries directly in ``folder``, by name; links and folders are skipped."""
    try:
        scan = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for item in scan:
        temporary = TEMPORARY_NAME.fullmatch(item.name) is not None
        if not (temporary or ENTRY_NAME.fullmatch(item.name)):
            continue
        try:
            if not item.is_file(follow_symlinks=False):
                continue
            stat = item.stat(follow_symlinks=False)
        except FileNotFoundError:  # removed by another process since the scan
            continue
        found.append(CacheFile(Path(item.path), stat.st_size, stat.st_mtime, temporary))
    return sorted(found, key=lambda f: f.path.name)


def human_size(size: float) -> str:
    """Bytes as ``12.3 MB`` (powers of 1000, as ``du --si`` and file managers show them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def clear(files: list[CacheFile], now: float) -> tuple[list[CacheFile], list[str]]:
    """Remove the entries and the stale temporaries; returns what was removed and why others stayed."""
    removed, kept = [], []
    for file in files:
        if file.temporary and now - file.mtime < STALE_TEMPORARY_S:
            kept.append(f"{file.path.name}: a write in progress, kept")
            continue
        try:
            file.path.unlink()  # unlinks the name itself: a reader that has it open keeps reading
        except FileNotFoundError:
            continue  # removed meanwhile by another process
        except OSError as error:
            kept.append(f"{file.path.name}: {error.strerror or error}")
            continue
        removed.append(file)
    return removed, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ablate cache", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache_dir", default=None, help="the cache folder (default: $ABLATE_CACHE_DIR, else ~/.cache/ablate)"
    )
    parser.add_argument("--clear", action="store_true", help="remove the cache's files from the folder")
    args = parser.parse_args(argv)
    folder = Path(args.cache_dir if args.cache_dir is not None else default_cache_dir()).expanduser()
    origin = (
        "--cache_dir"
        if args.cache_dir is not None
        else ("$ABLATE_CACHE_DIR" if "ABLATE_CACHE_DIR" in os.environ else "default; set $ABLATE_CACHE_DIR to move it")
    )
    print(f"cache folder: {folder} ({origin})")
    if folder.exists() and not folder.is_dir():
        print(f"  {folder} is not a folder: runs go on without a cache (remove it or set $ABLATE_CACHE_DIR)")
        return 0
    files = cache_files(folder)
    if args.clear:
        removed, kept = clear(files, time.time())
        for reason in kept:
            print(f"  {reason}")
        print(f"removed {len(removed)} files, {human_size(sum(f.size for f in removed))}")
        return 0
    for file in files:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(file.mtime))
        note = "  (temporary: a write in progress or interrupted)" if file.temporary else ""
        print(f"  {human_size(file.size):>9}  {stamp}  {file.path.name}{note}")
    total = sum(f.size for f in files)
    print(f"total: {len(files)} files, {human_size(total)}" + ("" if files else " (empty)"))
    return 0
