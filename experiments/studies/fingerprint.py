"""What decides a run's result, and a short hash of it: the key a study's runs are stored under.

A run's fingerprint covers its resolved configuration (network, data and augmentation, optimiser,
schedule, precision, seed, the trainer's stopping and evaluation settings), its tier, the code that
builds and trains it and the versions of the libraries that compute it; not what only decides where or
how the run happens (devices, loggers, the data's location, bookkeeping callbacks: the rule is
``lightning_modules/result_config.py``'s, which a resumed run is checked against too).

    planned = resolve_fit_config(["--config", "base.yaml", "--config", "arm.yaml"])
    record = Fingerprint.of(planned, tier="short")
    record.differs_from(Fingerprint.read(run_dir))   # ["model.optimizer.init_args.lr", ...]
"""

from __future__ import annotations

import contextlib
import hashlib
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
from lightning_modules.result_config import result_config

REPO = Path(__file__).resolve().parents[2]
FILE = "fingerprint.json"
# The code that builds, feeds and trains a network; changing any of it may change a result.
CODE = ("architectures", "datamodules", "lightning_modules")
LIBRARIES = ("torch", "torchvision", "pytorch-lightning", "torchmetrics")


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
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
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
        keys = {
            **result_config(config),
            "tier": tier,
            "code": code_version(),
            **{f"library.{name}": version for name, version in library_versions().items()},
        }
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
        write_json_atomic(
            Path(directory) / FILE, {"fingerprint": self.value, "commit": self.commit, "config": self.config}
        )

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
