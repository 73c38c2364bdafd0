"""What decides a run's result, and a short hash of it: the key a study's runs are stored under.

A run's fingerprint covers its resolved configuration (network, data and augmentation, optimiser,
schedule, precision, seed, the trainer's stopping and evaluation settings), its tier, the code that
builds and trains it and the versions of the libraries that compute it. It leaves out what only
decides where or how the run happens: devices, strategy and nodes, loggers and output folders, the
data's location, loader workers, progress bars and summaries, checkpointing and bookkeeping
callbacks, the memory layout and compilation (``channels_last``, ``compile``: same arithmetic), and
the resume and test arguments a sweep adds itself. The precision is the one the run trains in: an
unset one is what ``--speed`` resolves it to on this machine (lightning_modules/speed.py), and equal
settings spelled differently (``32``, ``"32-true"``) give one fingerprint.

    planned = resolve_fit_config(["--config", "base.yaml", "--config", "arm.yaml"])
    record = Fingerprint.of(planned, tier="short")
    record.differs_from(Fingerprint.read(run_dir))   # ["model.optimizer.init_args.lr", ...]
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import subprocess
import warnings
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.files import write_json_atomic
from lightning_modules.speed import effective_precision

REPO = Path(__file__).resolve().parents[2]
FILE = "fingerprint.json"
# The code that builds, feeds and trains a network; changing any of it may change a result.
CODE = ("architectures", "datamodules", "lightning_modules")
LIBRARIES = ("torch", "torchvision", "pytorch-lightning", "torchmetrics")

# Flattened keys (and everything below them) that decide where or how a run happens, not its result.
WHERE_OR_HOW = (
    "ckpt_path", "weights_only", "test_after_fit", "test_checkpoint", "verbose",
    "trainer.accelerator", "trainer.strategy", "trainer.devices", "trainer.num_nodes", "trainer.logger",
    "trainer.default_root_dir", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.enable_checkpointing", "trainer.log_every_n_steps", "trainer.profiler", "trainer.barebones",
    "trainer.plugins", "trainer.num_sanity_val_steps", "trainer.enable_autolog_hparams",
    "trainer.model_registry", "trainer.detect_anomaly", "trainer.inference_mode",
    "trainer.use_distributed_sampler", "trainer.benchmark",
    "data.init_args.data_dir", "data.init_args.num_workers", "data.init_args.download",
    "data.init_args.cache_dir", "data.init_args.pin_memory",
    "model.channels_last", "model.compile", "speed",
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
    from lightning_modules.reliability import CheckpointOnSignal, ExactResume

    # StopOnDivergence changes only runs whose validation or weights went non-finite: it fails them, as
    # the model's check_finite fails a non-finite training loss; every other run trains the same.
    return (BasePredictionWriter, DeviceStatsMonitor, LearningRateMonitor, ModelCheckpoint, ModelSummary,
            ProgressBar, Timer, CheckpointOnSignal, ExactResume, StopOnDivergence)


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
    config = dict(config)
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    flat: dict[str, Any] = {}
    _flatten({key: value for key, value in config.items()}, "", flat)
    kept = {key: value for key, value in flat.items()
            if not key.startswith("trainer.callbacks")
            and not any(key == rule or key.startswith(rule + ".") for rule in WHERE_OR_HOW)}
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        class_path = callback.get("class_path", "") if isinstance(callback, dict) else str(callback)
        if _changes_training(class_path):
            kept[f"trainer.callbacks.{class_path}"] = (callback.get("init_args") if isinstance(callback, dict)
                                                       else None)
    kept["trainer.precision"] = effective_precision(config)
    return kept


@cache
def code_version() -> str:
    """A hash of the source files that build and train the networks (tracked or not, committed or not)."""
    digest = hashlib.sha256()
    for entry in CODE:
        path = REPO / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" not in file.parts:
                digest.update(str(file.relative_to(REPO)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


@cache
def git_commit() -> str:
    """HEAD of the checkout the runs come from, with ``-dirty`` when it has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@cache
def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@dataclass(frozen=True)
class Fingerprint:
    """A run's result-deciding configuration and its hash (``value``); ``commit`` is for people only."""

    value: str
    config: dict[str, Any] = field(default_factory=dict)
    commit: str = ""

    @classmethod
    def of(cls, config: dict[str, Any], tier: str) -> Fingerprint:
        """The fingerprint of a resolved ``fit`` config (``resolve_fit_config`` or a run's config.yaml)."""
        keys = {**result_config(config), "tier": tier, "code": code_version(),
                **{f"library.{name}": version for name, version in library_versions().items()}}
        text = json.dumps(keys, sort_keys=True, default=str)
        return cls(hashlib.sha256(text.encode()).hexdigest()[:12], json.loads(text), git_commit())

    @classmethod
    def of_file(cls, path: Path, tier: str) -> Fingerprint:
        return cls.of(yaml.safe_load(Path(path).read_text()) or {}, tier)

    @classmethod
    def read(cls, directory: Path) -> Fingerprint | None:
        """The fingerprint a run folder was planned with; None when it has none (or an unreadable one)."""
        try:
            data = json.loads((Path(directory) / FILE).read_text())
            return cls(str(data["fingerprint"]), dict(data["config"]), str(data.get("commit", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, directory: Path) -> None:
        write_json_atomic(Path(directory) / FILE,
                          {"fingerprint": self.value, "commit": self.commit, "config": self.config})

    def differs_from(self, other: Fingerprint) -> list[str]:
        """The keys whose values differ between the two (the key names, sorted)."""
        keys = set(self.config) | set(other.config)
        return sorted(key for key in keys if self.config.get(key, "<unset>") != other.config.get(key, "<unset>"))


def resolve_fit_config(args: list[str]) -> dict[str, Any]:
    """The complete ``ablate fit`` configuration these arguments resolve to (parsed, nothing built).

    Raises:
        StudyError: the arguments do not parse (the parser's last line says why).
    """
    from experiments.studies.study import StudyError
    from lightning_modules.ablate_cli import run_lightning_cli

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # LightningCLI warns when given args while the process has command-line arguments of its own.
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
            run_lightning_cli(["fit", *args, "--print_config"])
    except SystemExit as stop:
        if stop.code not in (0, None):
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            raise StudyError(f"the run's configuration does not parse: {lines[-1] if lines else stop.code}") from None
    return yaml.safe_load(out.getvalue()) or {}
