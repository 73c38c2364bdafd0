"""Folders a run will write to, checked before any data is read or any process is started.

A run folder under a file, on a read-only file system, without write permission, or with a name
longer than the file system allows failed only when the first logger or checkpoint wrote to it
(under DDP, on rank 0 alone, after the other processes had started), as a raw ``OSError``
traceback. Here the folder is walked up to the part that exists, without creating anything, and
refused in one line naming the setting and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning_modules.config_lookup import as_list, lookup
from lightning_modules.errors import ConfigError

# One file or folder name, and a whole path, in bytes (Linux's NAME_MAX and PATH_MAX).
_NAME_MAX = 255
_PATH_MAX = 4096


def output_folders(run: Any) -> list[tuple[str, str]]:
    """``(setting, folder)`` for every folder ``run`` (one subcommand's config) writes into."""
    trainer = lookup(run, "trainer")
    found = []
    root = lookup(trainer, "default_root_dir")
    if root:
        found.append(("trainer.default_root_dir", str(root)))
    # `logger: true/false` comes through as [True]/[False]: a bool has no init_args, so no folder.
    for logger in as_list(lookup(trainer, "logger")):
        save_dir = lookup(logger, "init_args", "save_dir")
        if save_dir:
            name = str(lookup(logger, "class_path") or "logger").rsplit(".", 1)[-1]
            found.append((f"trainer.logger ({name}) save_dir", str(save_dir)))
    for callback in as_list(lookup(trainer, "callbacks")):
        dirpath = lookup(callback, "init_args", "dirpath")
        if dirpath:
            found.append(("trainer.callbacks (ModelCheckpoint) dirpath", str(dirpath)))
    return found


def why_unwritable(folder: str | Path) -> str | None:
    """Why a run could not create or write ``folder``, or None when it can (as far as can be told
    without writing: root passes permission checks that would fail for others)."""
    text = str(folder)
    if "://" in text:  # s3://, gs://: the logger's file system says
        return None
    path = Path(text).expanduser()
    for part in path.parts:
        if len(os.fsencode(part)) > _NAME_MAX:
            size = len(os.fsencode(part))
            return f"File name too long (the name {part[:24]}... has {size} bytes; at most {_NAME_MAX})"
    if len(os.fsencode(str(path.absolute()))) >= _PATH_MAX:
        return f"File name too long (the path has more than {_PATH_MAX} bytes)"
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"Not a directory ({existing} is a file)"
    if not os.access(existing, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        return f"{'Read-only file system' if read_only else 'Permission denied'} ({existing})"
    return None


def _short(text: str) -> str:
    """A path of hundreds of characters, shortened so the line stays readable."""
    return text if len(text) <= 120 else f"{text[:80]}...{text[-30:]}"


def check_output_folders(run: Any) -> None:
    """Raise ``ConfigError`` for the first folder of ``run`` that cannot be written."""
    for setting, folder in output_folders(run):
        reason = why_unwritable(folder)
        if reason:
            raise ConfigError(
                f"cannot write to {_short(folder)}: {reason}; choose another {setting}"
                + (
                    ""
                    if setting == "trainer.default_root_dir"
                    else " (the defaults preset logs to ./runs: run from a writable folder or set it)"
                )
            )
