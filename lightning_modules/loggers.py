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
