"""Runs that cannot mean anything are refused before they start.

Where the guarantee is stated: docs/reliability.md, "A run runs what its config says".

- ``check_run_has_an_end``: ``max_epochs=-1`` with ``max_steps=-1`` and no ``max_time`` trains
  until the process is killed.
- ``check_learning_rate``: a learning rate of 0 trains nothing.
- ``check_test_after_fit_trains``: ``--test_after_fit`` of a run that takes no optimiser step
  would report the untrained network's accuracy as the run's result.
- ``check_checkpointing``: ``--ckpt_path last`` with nothing configured that writes ``last.ckpt``
  (a ``callbacks:`` list in a config replaces the defaults) would quietly start a new run.
- ``refuse_to_overwrite_a_finished_run``: a ``fit`` into a folder that holds a finished run, or
  checkpoints it does not resume from.
- ``check_needs_weights``: ``validate``/``test``/``predict`` of randomly initialised weights.
- ``check_linked_values``: ``num_classes``/``in_chans`` given for the network that contradict the
  data's (the CLI links the data's values in).
- ``check_resumed_config``: a resumed run whose settings differ from the run's saved
  ``config.yaml`` (the checkpoint restores the old optimiser state while the new config.yaml
  would record settings that never ran).
- ``check_restored_model_settings``: model settings the checkpoint's hyper-parameters replace.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.config_lookup import as_list, lookup
from lightning_modules.errors import ConfigError
from lightning_modules.quiet import say
from lightning_modules.run_folders import fixed_run_folder

# How long a run trains. A resumed run may change these only without a learning-rate schedule: a
# schedule's length is filled from them when the run starts and restored from the checkpoint
# afterwards, so the resumed run would follow the old length while its config said the new one.
LENGTH = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.min_epochs", "trainer.min_steps")
CALLBACKS_HINT = (
    "a `callbacks:` list in a config replaces the defaults of experiments/presets/defaults.yaml, "
    "their last.ckpt checkpoint included; write `callbacks+:` to add to them, or list a ModelCheckpoint "
    "with `filename: last` (or `save_last: true`) yourself"
)


def check_run_has_an_end(run: Any) -> None:
    trainer = lookup(run, "trainer")
    if lookup(trainer, "fast_dev_run") or lookup(trainer, "max_time"):
        return
    if lookup(trainer, "max_epochs") != -1 or lookup(trainer, "max_steps", default=-1) != -1:
        return
    if any(
        _is(callback, "pytorch_lightning.callbacks.EarlyStopping", "pytorch_lightning.callbacks.Timer")
        for callback in as_list(lookup(trainer, "callbacks"))
    ):
        return  # the user gave the run its end
    raise ConfigError(
        "this run has no end: trainer.max_epochs=-1 with trainer.max_steps=-1 trains until the process is "
        "killed. Give --trainer.max_epochs N, --trainer.max_steps N or --trainer.max_time DD:HH:MM:SS"
    )


def check_learning_rate(run: Any) -> None:
    # A negative rate fails when the classifier builds its optimiser (torch: "Invalid learning rate");
    # torch accepts 0, which trains nothing.
    lr = lookup(run, "model", "optimizer", "init_args", "lr")
    scheduler = lookup(run, "model", "lr_scheduler")
    sets_lr = lookup(scheduler, "init_args", "max_lr") is not None  # OneCycleLR, CyclicLR drive the rate
    if isinstance(lr, (int, float)) and lr == 0 and not sets_lr:
        raise ConfigError(
            "the learning rate must be positive, got model.optimizer.init_args.lr=0; with 0 the weights never change"
        )


def check_test_after_fit_trains(run: Any) -> None:
    if not run.get("test_after_fit") or run.get("ckpt_path") is not None:
        return  # a resumed run was trained before; `after_fit` checks that a step was taken
    trainer = lookup(run, "trainer")
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        if lookup(trainer, key) == 0:
            raise ConfigError(
                f"--test_after_fit with trainer.{key}=0 trains nothing: the test would report the untrained "
                "network's accuracy as this run's result. Train at least one step, or test a trained "
                "checkpoint with `ablate test --ckpt_path FILE`"
            )


def no_step_taken_error(trainer: Any) -> ConfigError:
    """For ``after_fit``: a fit that took no optimiser step has no result to test."""
    return ConfigError(
        f"--test_after_fit: the fit took no optimiser step (max_epochs={trainer.max_epochs}, "
        f"max_steps={trainer.max_steps}), so there is no trained model to test and no result to report. "
        "Train at least one step, or test a trained checkpoint with `ablate test --ckpt_path FILE`"
    )


def _is(callback: Any, *class_paths: str) -> bool:
    """Whether a callback's ``class_path`` names one of these classes or a subclass."""
    class_path = str(lookup(callback, "class_path", default=""))
    try:
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        bases = []
        for path in class_paths:
            base_module, _, base_name = path.rpartition(".")
            bases.append(getattr(importlib.import_module(base_module), base_name))
        return isinstance(cls, type) and issubclass(cls, tuple(bases))
    except (ImportError, AttributeError, ValueError):
        return class_path.rsplit(".", 1)[-1] in {path.rsplit(".", 1)[-1] for path in class_paths}


def _writes_last(callback: Any) -> bool:
    if _is(callback, "lightning_modules.preemption.CheckpointOnSignal"):
        return True  # on SIGTERM/SIGUSR1: the preempted run can be resumed
    if not _is(callback, "pytorch_lightning.callbacks.ModelCheckpoint"):
        return False
    args = lookup(callback, "init_args")
    return bool(lookup(args, "save_last")) or (
        lookup(args, "filename") == "last" and lookup(args, "save_top_k", default=1) != 0
    )


def check_checkpointing(run: Any) -> None:
    """Refuse ``fit --ckpt_path last`` when nothing writes ``last.ckpt``; warn a fit that saves none."""
    trainer = lookup(run, "trainer")
    callbacks = as_list(lookup(trainer, "callbacks"))
    if any(_writes_last(callback) for callback in callbacks):
        return
    off = lookup(trainer, "enable_checkpointing") is False
    why = (
        "trainer.enable_checkpointing=false saves no checkpoint"
        if off
        else f"trainer.callbacks configures nothing that writes last.ckpt ({CALLBACKS_HINT})"
    )
    if run.get("ckpt_path") == "last":
        raise ConfigError(f"--ckpt_path last resumes from the run's last.ckpt, but {why}")
    if lookup(trainer, "fast_dev_run"):
        return  # saves nothing anyway, by design
    if off:
        say(
            "ablate: warning: trainer.enable_checkpointing=false: nothing of this run will be saved; it cannot "
            "be resumed or tested afterwards"
        )
    else:
        say(
            f"ablate: warning: no last.ckpt will be saved, so this run cannot be resumed with --ckpt_path last: "
            f"{CALLBACKS_HINT}"
        )


def refuse_to_overwrite_a_finished_run(trainer_config: Any, ckpt_path: Any) -> None:
    """A ``fit`` into a folder that holds a finished run would replace its metrics.csv, its
    ``last.ckpt`` and its best checkpoint, while its ``result.json`` kept the old numbers."""
    folder = fixed_run_folder(trainer_config)
    if folder is None or not folder.is_dir():
        return
    fresh = "give the run a folder of its own (e.g. --trainer.logger.init_args.save_dir runs/again)"
    if (folder / "result.json").is_file():
        raise ConfigError(
            f"{folder} holds a finished run (result.json): fitting into it would replace its metrics and "
            f"checkpoints. To train this configuration again, {fresh}."
        )
    checkpoints = sorted((folder / "checkpoints").glob("*.ckpt")) if (folder / "checkpoints").is_dir() else []
    if checkpoints and ckpt_path is None:
        raise ConfigError(
            f"{folder} already holds checkpoints ({', '.join(path.name for path in checkpoints[:3])}): a new run "
            f"would overwrite them. Resume it with --ckpt_path last, or {fresh}."
        )


def check_needs_weights(subcommand: str, run: Any) -> None:
    if subcommand not in ("validate", "test", "predict") or run.get("ckpt_path") is not None:
        return
    if lookup(run, "fine_tune", "weights"):
        return
    raise ConfigError(
        f"{subcommand} needs trained weights: give --ckpt_path FILE|last|best or --fine_tune.weights FILE; without "
        f"them it would {'predict with' if subcommand == 'predict' else 'evaluate'} a randomly initialised network"
    )


def check_fine_tune_prefixes(run: Any, model: Any) -> None:
    """``fine_tune.freeze`` names parts of the network: a name that matches none is refused now, not
    when the FineTune callback sets up (after the data is prepared)."""
    from lightning_modules.param_groups import check_prefixes

    prefixes = lookup(run, "fine_tune", "freeze")
    network = getattr(model, "network", None)
    if prefixes and network is not None:
        try:
            check_prefixes(network, list(prefixes), "fine_tune.freeze")
        except ValueError as error:
            raise ConfigError(str(error)) from None


def check_linked_values(run: Any, datamodule: Any) -> None:
    """The CLI links ``data.num_classes``/``data.in_chans`` into the network, overwriting any value
    given for them; a given value that differs from the data's is an error, not silently replaced."""
    network = lookup(run, "model", "network")
    class_path, args = lookup(network, "class_path"), lookup(network, "init_args")
    if not class_path or args is None or datamodule is None:
        return
    try:
        module_name, _, name = class_path.rpartition(".")
        parameters = inspect.signature(getattr(importlib.import_module(module_name), name)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return
    for key in ("num_classes", "in_chans"):
        given, data_value = lookup(args, key), getattr(datamodule, key, None)
        default = parameters[key].default if key in parameters else inspect.Parameter.empty
        # Equal to the class default: cannot tell "given" from "left out", and the link sets it.
        if given is None or data_value is None or given == default or given == data_value:
            continue
        raise ConfigError(
            f"model.network.init_args.{key}={given} contradicts the data: {type(datamodule).__name__} has "
            f"{key}={data_value}, which the CLI links into the network. Drop the {key} setting, or use data "
            f"with {given} {'classes' if key == 'num_classes' else 'channels'}."
        )


def saved_configs(run_folder: Path | None, ckpt_path: str) -> list[Path]:
    """The ``config.yaml`` files a resumed run must agree with: the run folder it logs into (whose
    config.yaml it would rewrite) and the run folder its checkpoint comes from (whose optimiser
    state it restores)."""
    candidates = []
    if run_folder is not None:
        candidates.append(run_folder / "config.yaml")
    checkpoint = Path(ckpt_path)
    if checkpoint.parent.name == "checkpoints":
        candidates.append(checkpoint.parent.parent / "config.yaml")
    elif checkpoint.name.startswith("hpc_ckpt_"):  # SLURM's pre-emption checkpoints lie in the run folder
        candidates.append(checkpoint.parent / "config.yaml")
    found: dict[Path, Path] = {}
    for path in candidates:
        if path.is_file():
            found.setdefault(path.resolve(), path)
    return list(found.values())


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The result-deciding keys (``lightning_modules.result_config``) whose values differ.

    Where and how a run happens (devices, data location, workers, loggers, bookkeeping callbacks)
    may change on resume. A key present on one side only is left out unless it names a callback
    that changes training: a parameter added to the code since the run started is not a change of
    the run. The length (``LENGTH``) may change when no learning-rate schedule is configured.
    """
    from lightning_modules.result_config import result_config

    old, new = result_config(saved), result_config(current)
    scheduled = lookup(current, "model", "lr_scheduler") is not None
    changes = {}
    for key in sorted(set(old) | set(new)):
        if key not in old or key not in new:
            if not key.startswith("trainer.callbacks."):
                continue
        elif old[key] == new[key] or (key in LENGTH and not scheduled):
            continue
        changes[key] = (old.get(key, "<absent>"), new.get(key, "<absent>"))
    return changes


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def check_resumed_config(
    current: dict[str, Any],
    run_folder: Path | None,
    ckpt_path: str,
    with_defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Refuse a resume whose result-deciding settings differ from the run's saved config.yaml.

    ``with_defaults`` reads a saved config as today's parser would, filling in the parameters the
    code gained since the run started with their defaults, so that setting one otherwise on resume is
    a change (``config_changes`` leaves out keys on one side only).
    """
    for path in saved_configs(run_folder, ckpt_path):
        try:
            saved = yaml.safe_load(path.read_text())
            problem = (
                None
                if isinstance(saved, dict)
                else "it is empty"
                if saved is None
                else f"it holds a {type(saved).__name__}, not a config"
            )
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            problem = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if problem:
            # Written atomically, so only a hand edit or a failing disk gets here; resuming unchecked
            # could change the run without a word.
            raise ConfigError(
                f"cannot check this resume against the run's saved config {path} ({problem}). It records what "
                "the run started with: restore it, or move it aside to resume without the check (the resumed run "
                "writes a new one)"
            )
        if with_defaults is not None:
            saved = with_defaults(saved)
        changes = config_changes(saved, current)
        if not changes:
            continue
        shown = "; ".join(f"{key}: {_show(old)} -> {_show(new)}" for key, (old, new) in list(changes.items())[:6])
        more = f" (and {len(changes) - 6} more)" if len(changes) > 6 else ""
        length = (
            " A learning-rate schedule is restored from the checkpoint with the old length, so the length "
            "can change only in runs without one."
            if set(changes) & set(LENGTH)
            else ""
        )
        raise ConfigError(
            f"resuming {ckpt_path} with settings that differ from the run's saved config {path}: {shown}{more}. "
            "The checkpoint restores the old optimiser and schedule state, and config.yaml would record settings "
            f"that never ran.{length} {_start_a_new_run(ckpt_path)}"
        )


def _start_a_new_run(ckpt_path: str) -> str:
    return (
        f"Start a new run (another folder; --fine_tune.weights {ckpt_path} starts from its weights), "
        "or resume without changing them"
    )


def check_restored_model_settings(
    subcommand: str, given: dict[str, Any], restored: dict[str, Any], ckpt_path: str
) -> None:
    """Lightning reads the classifier's hyper-parameters from the checkpoint over the config's
    (``given``). A resume asked to change one would train on with the old value: refused. An
    evaluation keeps the checkpoint's (the model as it was trained) and says which it replaced."""
    replaced = {key: (given.get(key), value) for key, value in restored.items() if given.get(key) != value}
    if not replaced:
        return
    shown = "; ".join(
        f"model.{key}: {_show(mine)} given, {_show(theirs)} in the checkpoint"
        for key, (mine, theirs) in replaced.items()
    )
    if subcommand == "fit":
        raise ConfigError(
            f"resuming {ckpt_path} with model settings that differ from its own: {shown}. A resumed run goes on as "
            f"it started. {_start_a_new_run(ckpt_path)}"
        )
    say(f"ablate: {subcommand} uses the checkpoint's model settings, not the config's: {shown}")
