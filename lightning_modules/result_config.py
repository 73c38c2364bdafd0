"""What decides a run's result: its resolved ``fit`` config without what only decides where or how it runs.

Left out: devices, strategy and nodes, loggers and output folders, the data's location, loader
workers, progress bars and summaries, checkpointing and bookkeeping callbacks, the memory layout
and compilation (``channels_last``, ``compile``: same arithmetic), and the resume and test
arguments a sweep adds itself. The precision is the one the run trains in: an unset one is what
``--speed`` resolves it to on this machine (lightning_modules/speed.py), and equal settings spelled
differently (``32``, ``"32-true"``) are one value. A resumed run is refused when these keys changed
(lightning_modules/run_guards.py); a study's runs are stored under their hash
(experiments/studies/fingerprint.py).
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

from lightning_modules.config_files import move_retired_keys
from lightning_modules.speed import effective_precision

# Flattened keys (and everything below them) that decide where or how a run happens, not its result.
WHERE_OR_HOW = (
    "ckpt_path",
    "weights_only",
    "test_after_fit",
    "test_checkpoint",
    "verbose",
    "trainer.accelerator",
    "trainer.strategy",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.enable_checkpointing",
    "trainer.log_every_n_steps",
    "trainer.profiler",
    "trainer.barebones",
    "trainer.plugins",
    "trainer.num_sanity_val_steps",
    "trainer.enable_autolog_hparams",
    "trainer.model_registry",
    "trainer.detect_anomaly",
    "trainer.inference_mode",
    "trainer.use_distributed_sampler",
    "trainer.benchmark",
    "data.init_args.data_dir",
    "data.init_args.num_workers",
    "data.init_args.download",
    "data.init_args.cache_dir",
    "data.init_args.pin_memory",
    "channels_last",
    "compile",
    "speed",
)


def _bookkeeping_callbacks() -> tuple[type, ...]:
    from pytorch_lightning.callbacks import (
        BasePredictionWriter,
        DeviceStatsMonitor,
        LearningRateMonitor,
        ModelCheckpoint,
        ModelSummary,
        ProgressBar,
        Timer,
    )

    from lightning_modules.divergence import StopOnDivergence
    from lightning_modules.exact_resume import ExactResume
    from lightning_modules.preemption import CheckpointOnSignal

    # StopOnDivergence changes only runs whose validation or weights went non-finite: it fails them, as
    # the model's check_finite fails a non-finite training loss; every other run trains the same.
    return (
        BasePredictionWriter,
        DeviceStatsMonitor,
        LearningRateMonitor,
        ModelCheckpoint,
        ModelSummary,
        ProgressBar,
        Timer,
        CheckpointOnSignal,
        ExactResume,
        StopOnDivergence,
    )


def _changes_training(class_path: str) -> bool:
    """Whether a callback may change what is trained (anything but known bookkeeping; unknown: yes)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return True
    return not (isinstance(cls, type) and issubclass(cls, _bookkeeping_callbacks()))


def _flatten(value: Any, prefix: str, into: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), into)
    else:
        into[prefix] = value


def result_config(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened keys of a resolved ``fit`` config that decide the result (see the module's rule)."""
    # A config saved before settings left the model names them there: read where they are now, so a
    # resume or a sweep compares like with like (model.tta_flip is test_time.flip).
    config = move_retired_keys(copy.deepcopy(config))
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    flat: dict[str, Any] = {}
    _flatten({key: value for key, value in config.items()}, "", flat)
    kept = {
        key: value
        for key, value in flat.items()
        if not key.startswith("trainer.callbacks")
        and not any(key == rule or key.startswith(rule + ".") for rule in WHERE_OR_HOW)
    }
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        class_path = callback.get("class_path", "") if isinstance(callback, dict) else str(callback)
        if _changes_training(class_path):
            kept[f"trainer.callbacks.{class_path}"] = callback.get("init_args") if isinstance(callback, dict) else None
    kept["trainer.precision"] = effective_precision(config)
    return kept
