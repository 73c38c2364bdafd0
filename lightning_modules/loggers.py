"""Loggers with the defaults this template wants."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger


def wandb_credentials_available() -> bool:
    """True when a W&B API key is configured: ``$WANDB_API_KEY`` or an entry in the netrc file.

    Only the presence of a key is checked; it is never read into a variable that could be logged.
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger, offline automatically when no credentials are configured.

    Offline runs are written under ``<save_dir>/wandb/`` and can be uploaded later with
    ``wandb sync <save_dir>/wandb/offline-run-*``.

    Args:
        project: W&B project.
        name: Run name shown on the dashboard (e.g. arm and seed).
        group: Run group (e.g. the study).
        tags: Run tags.
        save_dir: Local directory for W&B files.
        offline: Force offline (True) or online (False); None decides from the credentials
            (``$WANDB_MODE`` still wins when set).
        log_model: Upload checkpoints as W&B artifacts.
        kwargs: Passed to ``wandb.init``.
    """

    def __init__(
        self,
        project: str = "cnn-ablations",
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        save_dir: str = "runs",
        offline: bool | None = None,
        log_model: bool = False,
        **kwargs: Any,
    ) -> None:
        if offline is None:
            offline = os.environ.get("WANDB_MODE") != "online" and not wandb_credentials_available()
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(
            project=project,
            name=name,
            group=group,
            tags=tags,
            save_dir=save_dir,
            offline=offline,
            log_model=log_model,
            **kwargs,
        )


_WANDB_HEADER = 7  # ":W&B", a 2-byte magic and a version byte
_LOG_BLOCK = 32768  # the .wandb file uses LevelDB's log format: 32 KiB blocks of framed chunks


def _wandb_records(path: Path):
    """Yield the raw protobuf records of a ``run-<id>.wandb`` file (LevelDB log framing)."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    position, pending = _WANDB_HEADER, b""
    while position + 7 <= len(data):
        block_left = _LOG_BLOCK - position % _LOG_BLOCK
        if block_left < 7:  # trailer too short for a chunk header: zero padding
            position += block_left
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind in (1, 2):  # FULL or FIRST
            pending = chunk
        else:  # MIDDLE or LAST
            pending += chunk
        if kind in (1, 4):
            yield pending
            pending = b""


def read_wandb_run(run_dir: str | Path) -> dict[str, Any]:
    """Config, metric history and summary of a local (e.g. offline) W&B run, without syncing.

    Args:
        run_dir: A ``wandb/offline-run-*`` (or ``run-*``) directory.

    Returns:
        ``{"config": {...}, "history": [{...}, ...], "summary": {...}}`` with JSON-decoded values.
    """
    import json

    from wandb.proto import wandb_internal_pb2

    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}

    def key_of(item) -> str:
        return item.key or "/".join(item.nested_key)

    for raw in _wandb_records(files[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":  # wandb.init(config=...) arrives inside the run record
            config.update({key_of(item): json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({key_of(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({key_of(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            summary.update({key_of(item): json.loads(item.value_json) for item in record.summary.update})
    return {"config": config, "history": history, "summary": summary}
