"""Loggers with the defaults this template wants.

W&B with LightningCLI logs every hyper-parameter twice unless told otherwise (Lightning issue
19728): the CLI's resolved config never reaches W&B, and ``save_hyperparameters`` sends the
module's init arguments flat to the root of the run config. Here the full resolved config goes to
the W&B run config once (``SaveConfigToWandb``, the CLI's save-config callback) and
``WandbLogger.log_hyperparams`` then adds only the keys that config does not already hold
(``model/params`` and the like), so each hyper-parameter has exactly one place on the dashboard.
"""

from __future__ import annotations

import netrc
import os
from argparse import Namespace
from pathlib import Path
from typing import Any

import yaml
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

# Summaries that are not the last logged value: the best validation accuracy is the run's maximum,
# also when a run resumed into the same W&B run (`id=...`) starts its running maximum afresh
# (torchmetrics states are not checkpointed).
SUMMARIES = {"val/acc_best": "max"}


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
    ``wandb sync <save_dir>/wandb/offline-run-*``. ``val/acc_best`` is summarised as its maximum
    (``SUMMARIES``). With ``SaveConfigToWandb`` (what ``ablate`` uses) the run config is the full
    resolved config, and a name and tags left unset are derived from it.

    Args:
        project: W&B project.
        name: Run name shown on the dashboard (e.g. arm and seed); unset: ``<network>-seed<seed>``.
        group: Run group (e.g. the study and tier); unset: the experiment's name (its CSV logger's ``name``).
        tags: Run tags; unset: the network and the data module.
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
        # Absolute: a process started under another W&B process ($WANDB_SERVICE) logs through that
        # process's service, which would resolve a relative folder against its own working directory.
        save_dir = str(Path(save_dir).resolve())
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
        self._given_name = name
        self._tags = tags
        self._config_keys: set[str] | None = None  # init arguments the full config already holds

    @property
    def experiment(self) -> Any:
        """The W&B run (a no-op stand-in on ranks other than 0), with this template's summaries defined."""
        run = super().experiment
        if rank_zero_only.rank == 0 and not getattr(self, "_summaries_defined", False):
            for key, summary in SUMMARIES.items():
                run.define_metric(key, step_metric="trainer/global_step", summary=summary)
            self._summaries_defined = True
        return run

    @rank_zero_only
    def log_config(self, config: dict[str, Any]) -> None:
        """Log the full resolved config (as ``config.yaml`` holds it) to the run config, once per run.

        A run name and tags not given to the logger are derived from it (W&B allows both to change
        after the run started; its group does not: ``group_by_experiment`` sets it before).

        Args:
            config: The CLI's resolved config as plain data.
        """
        model = config.get("model") if isinstance(config.get("model"), dict) else {}
        data = config.get("data") if isinstance(config.get("data"), dict) else {}
        network = model.get("network") if isinstance(model.get("network"), dict) else {}
        network_name = (network.get("init_args") or {}).get("name") or str(network.get("class_path", "model"))
        network_name = network_name.rsplit(".", 1)[-1]
        run = self.experiment
        if self._given_name is None:
            run.name = f"{network_name}-seed{config.get('seed_everything')}"
        if self._tags is None:
            data_name = str(data.get("class_path", "")).rsplit(".", 1)[-1]
            run.tags = tuple(tag for tag in (network_name, data_name) if tag)
        # Module and data-module init arguments as LightningCLI resolved them: what save_hyperparameters
        # would otherwise log a second time, flat at the root of the run config.
        self._config_keys = set(model.get("init_args", model)) | set(data.get("init_args") or {})
        run.config.update(config, allow_val_change=True)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        """Add hyper-parameters to the run config, leaving out those the full config already holds."""
        params = dict(vars(params) if isinstance(params, Namespace) else params or {})
        if self._config_keys is not None:
            # `_instantiator` / `_class_path` are LightningCLI's bookkeeping, not hyper-parameters.
            params = {k: v for k, v in params.items() if k not in self._config_keys and not k.startswith("_")}
        if params:
            super().log_hyperparams(params)


def group_by_experiment(loggers: list[Any]) -> None:
    """Group W&B runs given no group by the experiment: the first CSV or TensorBoard logger's ``name``
    (``runs/<name>/version_N``).

    W&B fixes a run's group when the run starts, and Lightning starts it before any callback's
    ``setup`` (it touches every ``logger.experiment`` first), so this runs once the trainer exists.
    """
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    name = next((logger.name for logger in loggers if isinstance(logger, (CSVLogger, TensorBoardLogger))), None)
    for logger in loggers:
        # Lightning's logger takes the group only as a constructor argument and has no public way to ask
        # whether the run started: its `_experiment` and `_wandb_init` (the arguments of `wandb.init`) say.
        if isinstance(logger, WandbLogger) and logger._experiment is None and logger._wandb_init.get("group") is None:
            logger._wandb_init["group"] = name or None


class SaveConfigToWandb(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` writer that also logs the resolved config to every W&B logger.

    Runs once per process on global rank 0 (``SaveConfigCallback.setup``), before Lightning logs the
    module's hyper-parameters, so ``WandbLogger.log_hyperparams`` knows what to leave out.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # `ablate test` (validate, predict) of a run in its own folder keeps the config.yaml that
        # trained it and writes its own beside it.
        stage = str(getattr(stage, "value", stage))  # Lightning passes its TrainerFn enum
        if stage != "fit" and not self.already_saved:
            log_dir = trainer.log_dir  # a broadcast under DDP: every rank asks
            if log_dir and (Path(log_dir) / self.config_filename).is_file():
                self.config_filename = f"config_{stage}.yaml"
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb_loggers:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for logger in wandb_loggers:
                logger.log_config(config)
