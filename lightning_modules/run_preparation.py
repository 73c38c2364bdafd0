"""What ``ablate fit|validate|test|predict`` checks and settles between parsing and the first batch.

``prepare_run`` works on the parsed configuration, before Lightning builds anything: the run's
guards (``run_guards``), ``--ckpt_path last`` resolved (``run_folders.find_last_checkpoint``), the
checkpoint loaded safely (``checkpoint_loading``). ``check_run`` works once the classes exist: the
checkpoint fits the network, a resume keeps the run's settings, and the run folder is locked for
this process (``run_lock``). Both run before any data is read, so a run that cannot work ends in
one line without having loaded anything (docs/reliability.md, "One line, always").
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

from lightning_modules import run_guards, run_lock
from lightning_modules.checkpoint_loading import check_checkpoint_fits, load_checkpoint
from lightning_modules.config_files import move_retired_keys
from lightning_modules.config_lookup import as_list
from lightning_modules.errors import CheckpointError, ConfigError
from lightning_modules.quiet import say
from lightning_modules.run_folders import (
    EVERY_ROW,
    find_last_checkpoint,
    fixed_run_folder,
    log_into_checkpoint_run,
    open_metrics_history,
)


def prepare_run(config: Any) -> dict[str, Any] | None:
    """Check and complete the parsed configuration of ``fit``/``validate``/``test``/``predict``.

    Sets ``weights_only`` to True unless given; resolves ``--ckpt_path last`` (for ``fit``, the
    resumed run logs into the checkpoint's ``version_N``); loads the checkpoint safely; refuses
    a missing data module and a learning rate of 0.

    Returns:
        The loaded checkpoint (for ``check_run``), or None when the run starts from scratch.
    """
    subcommand = config.get("subcommand")
    if subcommand is None:
        return None
    run = config[subcommand]
    if run.get("weights_only") is None:
        run["weights_only"] = True
    if run.get("data") is None:
        raise ConfigError(
            "no data module: give --data (e.g. --data datamodules.MNISTDataModule --data.data_dir DIR) "
            "or a --config that sets `data:`"
        )
    if subcommand == "fit":
        run_guards.check_learning_rate(run)
        run_guards.check_run_has_an_end(run)
        run_guards.check_test_after_fit_trains(run)
        run_guards.check_checkpointing(run)
        run_guards.refuse_to_overwrite_a_finished_run(run.get("trainer"), run.get("ckpt_path"))
    ckpt_path = run.get("ckpt_path")
    if ckpt_path == "last":
        path, version = find_last_checkpoint(run.get("trainer"))
        if path is None and subcommand != "fit":
            raise CheckpointError(
                f"--ckpt_path last: no last.ckpt in this configuration's run folders; nothing to {subcommand}. "
                "Give the checkpoint's path."
            )
        if path is None:
            say("ablate: --ckpt_path last: no last.ckpt yet in this experiment's run folders; starting a new run")
            run["ckpt_path"] = None
            return None
        if subcommand == "fit" and version is not None:
            # Log into the interrupted run's folder (other file loggers follow the first one's version).
            as_list(run["trainer"]["logger"])[0]["init_args"]["version"] = version
        say(f"ablate: --ckpt_path last: {'resuming from' if subcommand == 'fit' else 'using'} {path}")
        run["ckpt_path"] = ckpt_path = str(path)
    if subcommand in ("validate", "test", "predict"):
        log_into_checkpoint_run(run)  # the run the checkpoint belongs to, not a new version_N
    if ckpt_path in (None, "best", "hpc") or str(ckpt_path).startswith(("http://", "https://", "s3://", "gs://")):
        return None
    if not run["weights_only"]:
        return None  # the user vouched for the file (--weights_only false): Lightning loads it as asked
    return load_checkpoint(ckpt_path)


def _with_todays_defaults(parser: Any, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.yaml as today's parser reads it: a parameter the code gained since the run
    started gets its default, so a resume that sets it otherwise is a change. A file today's parser
    refuses (a parameter or class the code has since lost) is returned as saved."""
    exits = parser.exit_on_error
    parser.exit_on_error = False  # a refusal is handled here, not a usage message and exit
    try:
        parsed = parser.parse_object(move_retired_keys(copy.deepcopy(saved)))
        return yaml.safe_load(parser.dump(parsed, skip_none=False)) or {}
    except argparse.ArgumentError:
        return saved
    finally:
        parser.exit_on_error = exits


def check_run(cli: Any, checkpoint: dict[str, Any] | None) -> Path | None:
    """Checks once the classes exist: explicit ``num_classes``/``in_chans`` that contradict the
    data, ``fine_tune.freeze`` names that match no parameter, evaluation without trained weights,
    a checkpoint that does not fit the network (or holds non-finite weights), a resume that changes
    the run's settings; then the run folder is locked for this process. Runs before any data is read.

    Returns:
        The run folder this process now holds (``run_lock``; the CLI releases it when the run
        ends), or None.
    """
    subcommand = cli.subcommand
    run = cli.config[subcommand] if subcommand else cli.config  # run=False: no subcommand level
    run_guards.check_linked_values(run, cli.datamodule)
    run_guards.check_fine_tune_prefixes(run, cli.model)
    if subcommand:
        run_guards.check_needs_weights(subcommand, run)
    if checkpoint is not None:
        check_checkpoint_fits(cli.model, checkpoint, run["ckpt_path"])
    folder = run_lock.lock_run_folder(cli.trainer, run.get("trainer")) if subcommand else None
    try:
        if subcommand == "fit" and run.get("ckpt_path") not in (None, "best", "hpc"):
            # Compared as SaveConfigCallback would write it, so equal settings compare equal; LightningCLI
            # keeps the subcommand's parser, which writes it, behind its private `_parser` alone.
            parser = cli._parser(subcommand)
            current = yaml.safe_load(parser.dump(run, skip_none=False)) or {}
            run_guards.check_resumed_config(
                current,
                fixed_run_folder(run.get("trainer")),
                run["ckpt_path"],
                with_defaults=lambda saved: _with_todays_defaults(parser, saved),
            )
        if subcommand:
            # Evaluating a run in its own folder adds rows to its metrics.csv; a resumed fit keeps the
            # rows before its checkpoint's step (it logs the later ones again); a new fit starts empty.
            resume_step = EVERY_ROW if subcommand != "fit" else int((checkpoint or {}).get("global_step", 0))
            open_metrics_history(cli.trainer, resume_step)
            from lightning_modules.loggers import group_by_experiment

            group_by_experiment(cli.trainer.loggers)  # as experiments/presets/wandb.yaml promises
    except BaseException:
        if folder is not None:
            run_lock.release(folder)
        raise
    return folder
