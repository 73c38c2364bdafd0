"""Which run folder a run logs into, and what it keeps of what that folder already holds.

- ``find_last_checkpoint``: ``--ckpt_path last`` means the newest ``last.ckpt`` of this experiment's
  logger folder, and a resumed ``fit`` logs into that same ``version_N`` (``fixed_run_folder``: the
  folder when the configuration names it).
- ``log_into_checkpoint_run``: ``ablate validate|test|predict --ckpt_path runs/x/version_3/checkpoints/f.ckpt``
  logs into ``runs/x/version_3``, the run the checkpoint belongs to (its metrics, TensorBoard events,
  test files and predictions end up beside its training history), not into a new ``version_N``.
  A checkpoint outside a run folder (a downloaded file) gets the configuration's next ``version_N``.
  The folder follows from the command line alone, so every DDP rank chooses the same one.
- ``open_metrics_history``: the CSV logger's ``metrics.csv`` keeps the rows already in it.
  Lightning's writer (``lightning_fabric.loggers.csv_logs._ExperimentWriter``) deletes an existing
  ``metrics.csv`` whenever it opens a folder that holds any file (warning "Previous log files in this
  directory will be deleted"), and ``ablate`` has written ``.ablate.lock`` and ``config.yaml`` there
  by then, so a new run was warned too. Here the file is kept and appended to; a resumed run drops
  only the rows from its checkpoint's step on, which it logs again.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from pytorch_lightning.core.saving import save_hparams_to_yaml
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from lightning_modules.config_lookup import as_list, lookup
from lightning_modules.files import atomic_path, open_atomic
from lightning_modules.quiet import say

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
# The weights at the end of training, saved beside last.ckpt by `fit --test_after_fit` when it tests them.
FINAL_CHECKPOINT = "final.ckpt"
# A folder holding one of these beside checkpoints/ is a run folder that `ablate fit` wrote.
RUN_FILES = ("config.yaml", "metrics.csv", "hparams.yaml")
FILE_LOGGERS = ("CSVLogger", "TensorBoardLogger")
EVERY_ROW = sys.maxsize


def checkpoint_run_folder(ckpt_path: Any) -> Path | None:
    """The run folder ``<run>/checkpoints/<file>.ckpt`` belongs to, or None for a file outside one."""
    if not isinstance(ckpt_path, (str, Path)) or str(ckpt_path) in ("best", "last", "hpc") or "://" in str(ckpt_path):
        return None
    path = Path(ckpt_path)
    folder = path.parent.parent
    if not folder.name:  # given as checkpoints/f.ckpt from inside the run folder
        folder = folder.resolve()
    if path.parent.name != CHECKPOINTS or not any((folder / name).is_file() for name in RUN_FILES):
        return None
    return folder


def log_into_checkpoint_run(run: Any) -> Path | None:
    """Point the configured CSV and TensorBoard loggers at the checkpoint's run folder.

    Left alone: a configuration that names its run folder itself (a fixed logger version, as a
    sweep's ``config.yaml``), and loggers that keep their own folders (W&B alone).

    Returns:
        The run folder the loggers now write into, or None when nothing was changed.
    """
    folder = checkpoint_run_folder(run.get("ckpt_path"))
    trainer = lookup(run, "trainer")
    loggers = [logger for logger in as_list(lookup(trainer, "logger")) if hasattr(logger, "get")]
    file_loggers = [
        logger for logger in loggers if str(lookup(logger, "class_path", default="")).endswith(FILE_LOGGERS)
    ]
    if folder is None or not file_loggers or file_loggers[0] is not loggers[0] or fixed_run_folder(trainer) is not None:
        return None
    numbered = re.fullmatch(r"version_(\d+)", folder.name)
    version: int | str = int(numbered.group(1)) if numbered else folder.name
    for logger in file_loggers:
        if logger.get("init_args") is None:
            logger["init_args"] = type(logger)()
        args = logger["init_args"]
        args["save_dir"], args["name"], args["version"] = str(folder.parent.parent), folder.parent.name, version
    return folder


def _newest_last(folder: Path) -> Path | None:
    found = [path for path in folder.glob("last*.ckpt") if re.fullmatch(r"last(-v\d+)?\.ckpt", path.name)]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def find_last_checkpoint(trainer_config: Any) -> tuple[Path | None, int | str | None]:
    """The newest ``last.ckpt`` this trainer configuration writes, and the logger version it is in.

    Lightning resolves ``ckpt_path="last"`` inside the checkpoint folder of the *current* logger
    version, which a fresh process numbers anew (``version_{N+1}``), so it never finds the file.
    Here: a ``ModelCheckpoint`` with an explicit ``dirpath`` is looked in; else the first logger's
    ``<save_dir>/<name>/<version>/checkpoints`` when its version is fixed, else the highest
    ``version_N`` under ``<save_dir>/<name>`` that has ``checkpoints/last.ckpt``.

    Returns:
        ``(path, version)``: version is the ``N`` to log into (None when the configuration fixes
        the folder); path is None when nothing was found.
    """
    for callback in as_list(lookup(trainer_config, "callbacks")):
        if str(lookup(callback, "class_path", default="")).endswith("ModelCheckpoint"):
            dirpath = lookup(callback, "init_args", "dirpath")
            if dirpath:
                return _newest_last(Path(dirpath)), None
    located = _logger_root(trainer_config)
    if located is None:
        return None, None  # other loggers keep their own run folders: leave "last" to Lightning
    root, version = located
    if root is None:
        return _newest_last(Path(version) / "checkpoints"), None
    if version is not None:
        folder = root / (version if isinstance(version, str) else f"version_{version}")
        return _newest_last(folder / "checkpoints"), None
    versions = sorted(
        (int(folder.name.removeprefix("version_")), folder)
        for folder in (root.glob("version_*") if root.is_dir() else [])
        if folder.name.removeprefix("version_").isdigit()
    )
    for number, folder in reversed(versions):
        path = _newest_last(folder / "checkpoints")
        if path is not None:
            return path, number
    return None, None


def _logger_root(trainer_config: Any) -> tuple[Path | None, Any] | None:
    """Where the first file logger writes: ``(root, version)``, the run folder being
    ``root/version_N`` (or ``root/<version>`` for a string); ``(None, folder)`` when there is no
    logger and ``folder`` is the run folder itself; None for loggers that keep their own folders."""
    loggers = as_list(lookup(trainer_config, "logger"))
    default_root = Path(lookup(trainer_config, "default_root_dir", default=os.getcwd()))
    if not loggers or loggers[0] is False:
        return None, default_root
    first = loggers[0]
    if first is True:  # Lightning's default TensorBoardLogger
        return default_root / "lightning_logs", None
    if not str(lookup(first, "class_path", default="")).endswith(FILE_LOGGERS):
        return None
    args = lookup(first, "init_args")
    name = lookup(args, "name", default="lightning_logs")
    return Path(lookup(args, "save_dir", default=default_root)) / (name or ""), lookup(args, "version")


def fixed_run_folder(trainer_config: Any) -> Path | None:
    """The run folder when the configuration names it (a fixed logger version, as in the config.yaml
    of a sweep's run), else None: Lightning then numbers a new ``version_N`` for every run."""
    located = _logger_root(trainer_config)
    if located is None:
        return None
    root, version = located
    if root is None:
        return Path(version)
    if version is None:
        return None
    return root / (version if isinstance(version, str) else f"version_{version}")


def open_metrics_history(trainer: pl.Trainer, resume_step: int) -> None:
    """Open every CSV logger's ``metrics.csv`` keeping its rows logged before ``resume_step``.

    ``EVERY_ROW`` for evaluation (its rows are added after the run's), the checkpoint's step for a
    resumed ``fit``, 0 for a new one. Only global rank 0 writes CSV files (Lightning's CSVLogger).
    """
    from pytorch_lightning.loggers import CSVLogger

    if trainer.global_rank != 0:
        return
    for logger in trainer.loggers:
        # CSVLogger builds its writer on first use and takes no writer from outside: setting its private
        # `_experiment` before that use (in the folder its `_fs` would make) is the only way in.
        if isinstance(logger, CSVLogger) and logger._experiment is None:
            logger._fs.makedirs(logger.root_dir, exist_ok=True)
            logger._experiment = MetricsHistoryWriter(logger.log_dir, resume_step)


def _step(row: dict[str, str]) -> int:
    value = row.get("step") or ""
    return int(value) if value.isdigit() else -1  # a row without a step is never dropped


class MetricsHistoryWriter(ExperimentWriter):
    """Lightning's CSV experiment writer that appends to an existing ``metrics.csv`` and ``hparams.yaml``.

    Args:
        log_dir: The run folder.
        resume_step: Rows with a ``step`` at or after it are dropped (``EVERY_ROW`` keeps all).
    """

    def __init__(self, log_dir: str, resume_step: int = EVERY_ROW) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir=log_dir)
        hparams_file = Path(self.log_dir) / self.NAME_HPARAMS_FILE
        if self._fs.isfile(str(hparams_file)):  # an evaluation adds to the run's, never replaces them
            try:
                with self._fs.open(str(hparams_file), "r") as handle:
                    loaded = yaml.safe_load(handle)
            except (UnicodeDecodeError, yaml.YAMLError):
                # Damaged (a hand edit; runs before this writer's saves were atomic): kept aside, not
                # a reason to stop a resume or an evaluation; the hyper-parameters are logged again.
                aside = hparams_file.with_name(f"{hparams_file.name}.unreadable")
                self._fs.mv(str(hparams_file), str(aside))
                say(f"ablate: {hparams_file} could not be read; kept as {aside.name}, a new one is written")
                loaded = {}
            self.hparams = loaded if isinstance(loaded, dict) else {}

    def log_hparams(self, params: dict[str, Any]) -> None:
        # Lightning's rewrites hparams.yaml in place: a kill mid-write would leave half a file.
        if "://" in self.log_dir:
            super().log_hparams(params)
            return
        self.hparams.update(params)
        with atomic_path(Path(self.log_dir) / self.NAME_HPARAMS_FILE) as temporary:
            save_hparams_to_yaml(temporary, self.hparams)

    def _check_log_dir_exists(self) -> None:
        # Lightning's warns and deletes metrics.csv; here its rows stay and new ones are appended.
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            header, rows = list(reader.fieldnames or []), list(reader)
        kept = [row for row in rows if _step(row) < self.resume_step]
        # Lightning appends under its sorted list of keys: the file's header must be that list.
        self.metrics_keys = sorted(header)
        if len(kept) != len(rows) or header != self.metrics_keys:
            self._write(self.metrics_keys, kept)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # New columns (test metrics after training ones): the file is rewritten whole or not at all.
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            rows = list(csv.DictReader(handle))
        self._write(fieldnames, rows)

    def _write(self, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
        local = "://" not in self.metrics_file_path
        with (
            open_atomic(self.metrics_file_path, "w", newline="")
            if local
            else self._fs.open(self.metrics_file_path, "w", newline="")
        ) as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


def record_test_result(path: Path, key: str, result: dict[str, Any]) -> None:
    """Add ``{key: result}`` to a run's ``test_results.json``, keeping the entries already there.

    A file that cannot be read as JSON is kept aside as ``<name>.unreadable`` rather than overwritten.
    """
    import json

    from lightning_modules.files import write_json_atomic

    results: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
            results = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            path.replace(path.with_name(f"{path.name}.unreadable"))
    write_json_atomic(path, {**results, key: result})
