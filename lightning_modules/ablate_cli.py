"""``AblateCLI``: LightningCLI as every ``ablate`` run builds it, and the files and exit statuses of a run.

The data module's ``num_classes`` and ``in_chans`` are linked into the network, so no config
states them twice. Defaults (loggers, checkpointing, progress bar) live in
``experiments/presets/defaults.yaml`` so ``--print_config`` shows a complete, re-runnable config.
``run_lightning_cli`` builds it for the ``ablate`` command (experiments/cli) and for whatever must see
a run exactly as ``ablate fit`` builds it: a study resolving its runs' configs, the benchmarks, the
analysis tools rebuilding a trained run.
"""

from __future__ import annotations

import contextvars
import os
import sys
import weakref
from pathlib import Path
from typing import Any, Literal

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from lightning_modules.files import write_json_atomic
from lightning_modules.preemption import last_checkpoint_path
from lightning_modules.quiet import say
from lightning_modules.run_folders import FINAL_CHECKPOINT

# The presets users name on the command line; defaults.yaml is the one every run starts from.
PRESETS = Path(__file__).parent.parent / "experiments" / "presets"
# Written by `fit --test_after_fit` into the run folder: {"final"|"best": {"metrics": {...}, ...}}.
TEST_RESULTS = "test_results.json"
# Exit statuses: a run that could not start (configuration, data, checkpoint) is the user's to fix and
# says nothing about the arm; a run that failed while training (divergence, a crash mid-run) is a result.
EXIT_TRAINING_FAILED = 1
EXIT_SETUP_ERROR = 2
# jsonargparse's notices about its own API, which Lightning calls, mean nothing to our users.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

# The trainer of the run in progress in this process: the `ablate` command's exit status depends on
# whether it had taken a step when an error came (experiments/cli).
_RUN: dict[str, Any] = {}


def running_trainer() -> Any:
    """The trainer of the run this process built last, while it is alive; None otherwise."""
    ref = _RUN.get("trainer")
    return ref() if ref is not None else None


def forget_run() -> None:
    """Forget the run in progress: the ``ablate`` command calls it when a run ends."""
    _RUN.clear()


class AblateCLI(LightningCLI):
    """LightningCLI with the data -> model links and aligned logger versions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from lightning_modules import quiet

        with quiet.restored():  # the next run in this process starts from Lightning's own settings
            super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # `--verbose` is ablate's (everything Lightning prints). Trainer.validate/test have a `verbose` of
        # their own, printing the results table, which stays at its default: on.
        return {name: skip | {"verbose"} for name, skip in LightningCLI.subcommands().items()}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After `fit`, evaluate on the test split in the same run (which model: --test_checkpoint).",
        )
        parser.add_argument(
            "--test_checkpoint",
            type=Literal["best", "final", "both"],
            default="best",
            help="With --test_after_fit: the checkpoint with the best val/acc (best), the weights at the end "
            "of training (final: what the papers report), or both; results go to test_results.json in the run.",
        )
        parser.add_argument(
            "--verbose",
            type=bool,
            default=False,
            nargs="?",
            const=True,  # `--verbose` alone, or `--verbose true` as the other flags are written
            help="Print everything Lightning prints (its info lines, full model summary, library warnings); "
            "by default a run prints its folder and network (lightning_modules/quiet.py).",
        )
        parser.add_argument(
            "--speed",
            type=Literal["auto", "off"],
            default="auto",
            help="auto: where --trainer.precision or --channels_last is unset, use what is fastest on "
            "this device (bf16-mixed + channels_last where it has native bf16); off: unset means fp32, contiguous.",
        )
        # How the network runs, not what it computes (ImageClassifier.speed_up); beside --speed, which
        # fills in an unset --channels_last.
        parser.add_argument(
            "--channels_last",
            type=bool | None,
            default=None,
            help="NHWC memory layout of weights and inputs (faster convolutions on tensor cores and x86 CPUs; "
            "the same outputs). Unset: --speed decides.",
        )
        parser.add_argument(
            "--compile",
            type=bool,
            default=False,
            help="torch.compile the network, in place (checkpoint keys do not change).",
        )
        # Recipe parts that are callbacks, always present and off by default, so `--ema.decay 0.999` or a
        # preset's `ema:` composes with the other configs (a list under trainer.callbacks would replace them).
        from lightning_modules.ema import EMA
        from lightning_modules.evaluation import TestTime
        from lightning_modules.transfer import FineTune

        parser.add_lightning_class_args(EMA, "ema")
        parser.add_lightning_class_args(FineTune, "fine_tune")
        parser.add_lightning_class_args(TestTime, "test_time")
        parser.link_arguments("data.num_classes", "model.network.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.network.init_args.in_chans", apply_on="instantiate")

    def _instantiate_trainer(self, config: dict, callbacks: list):
        # A rich progress bar unless the user turned bars off or brought their own; as a default
        # callback it would clash with `--trainer.enable_progress_bar false`.
        from pytorch_lightning.callbacks import ProgressBar

        from lightning_modules.progress import ThrottledRichProgressBar

        configured = config.get("callbacks") or []
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(callback, ProgressBar) for callback in [*configured, *callbacks]
        ):
            # Updated and redrawn twice a second, not after every batch and 100 times a second
            # (lightning_modules/progress.py says why).
            callbacks = [*callbacks, ThrottledRichProgressBar()]
        if self._verbose():  # Lightning's full table too, beside the two lines of lightning_modules/run_summary.py
            from pytorch_lightning.callbacks import RichModelSummary

            callbacks = [*callbacks, RichModelSummary(max_depth=2)]
        # Checkpoints written beside their target, fsync'ed and renamed over it on any file system,
        # and never of non-finite weights (lightning_modules/checkpoint_io.py), unless the user brought
        # a CheckpointIO of their own. Given as a plugin, it becomes every strategy's checkpoint_io (DDP too).
        from lightning_fabric.plugins import CheckpointIO

        from lightning_modules.checkpoint_io import AtomicCheckpointIO

        plugins = config.get("plugins")
        plugins = [] if plugins is None else plugins if isinstance(plugins, list) else [plugins]
        if (
            not any(isinstance(plugin, CheckpointIO) for plugin in plugins)
            and getattr(config.get("strategy"), "_checkpoint_io", None) is None
        ):
            refuse = getattr(self.model, "check_finite", True)  # check_finite=False trains through NaN
            config["plugins"] = [*plugins, AtomicCheckpointIO(refuse_non_finite=refuse)]
        # The EMA first: its update of a step is in any checkpoint a later callback saves at that step's end
        # (CheckpointOnSignal's last.ckpt), so a resumed average has every step.
        from lightning_modules.ema import EMA

        averages = [callback for callback in callbacks if isinstance(callback, EMA)]
        callbacks = [callback for callback in callbacks if not isinstance(callback, EMA)]
        existing = config.get("callbacks")
        existing = [] if existing is None else existing if isinstance(existing, list) else [existing]
        config["callbacks"] = [*averages, *existing]
        trainer = super()._instantiate_trainer(config, callbacks)
        _align_logger_versions(trainer.loggers)
        # For the exit status (had training begun when an error came?); weak, so a finished run's
        # trainer, model and data are not kept alive by this module.
        _RUN["trainer"] = weakref.ref(trainer)
        return trainer

    def before_instantiate_classes(self) -> None:
        # The automatic speed setting (lightning_modules/speed.py): settings left unset are filled in
        # before the model and trainer are built, so config.yaml records what the run used.
        from lightning_fabric.utilities.rank_zero import rank_zero_only

        from lightning_modules import speed

        config = self.config.get(str(self.subcommand), self.config)
        choice, line = speed.resolve(
            config.get("speed") or "auto",
            config.trainer.get("accelerator"),
            config.trainer.get("precision"),
            config.get("channels_last"),
        )
        config.trainer.precision = choice.precision
        config.channels_last = choice.channels_last
        if line and rank_zero_only.rank == 0:  # one line per run, not one per DDP process
            print(line, flush=True)

    # --- Reliability (lightning_modules/run_preparation.py, docs/reliability.md) ----------------
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        # Before Lightning reads the checkpoint's hyper-parameters: weights_only defaults to True,
        # `--ckpt_path last` finds the newest last.ckpt (and fit logs into its version_N), the
        # checkpoint is loaded safely, and a missing data module or a learning rate of 0 is refused.
        from lightning_modules import run_preparation

        super().parse_arguments(parser, args)
        if not self._verbose():
            from lightning_modules import quiet

            quiet.quiet()
        self._checkpoint = run_preparation.prepare_run(self.config)
        if self.config.get("subcommand") == "fit" and self.config.fit.get("ckpt_path"):
            from lightning_modules import quiet

            quiet.resuming()

    def _parse_ckpt_path(self) -> None:
        # Lightning's (private; no public hook reads a checkpoint's hyper-parameters into the config),
        # from the checkpoint prepare_run already loaded safely, less the model settings that moved out
        # of the classifier (config_files.MOVED_MODEL_KEYS): a checkpoint written before names them,
        # jsonargparse would refuse them, and the run's config gives them now.
        from lightning_modules.config_files import MOVED_MODEL_KEYS

        checkpoint = getattr(self, "_checkpoint", None)
        if checkpoint is None or not self.config.get("subcommand"):
            return
        hparams = {
            key: value
            for key, value in (checkpoint.get("hyper_parameters") or {}).items()
            if key not in MOVED_MODEL_KEYS and key != "_instantiator"
        }
        if not hparams:
            return
        subcommand = self.config.subcommand
        given = self.config[subcommand].model
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise
        # The checkpoint's values replace the config's: a resume may not change them, an evaluation says so.
        from lightning_modules.run_guards import check_restored_model_settings

        restored = self.config[subcommand].model
        check_restored_model_settings(
            subcommand,
            {key: given.get(key) for key in hparams},
            {key: restored.get(key) for key in hparams},
            self.config[subcommand].get("ckpt_path"),
        )

    def after_instantiate_classes(self) -> None:
        # num_classes/in_chans given but contradicting the data; a checkpoint of another network or
        # of a diverged run; evaluation without trained weights; a resume with changed settings.
        # Then the run folder is locked: one process per run folder, until the run ends.
        from lightning_modules import run_preparation

        config = self.config.get(str(self.subcommand), self.config)
        self.model.speed_up(channels_last=bool(config.get("channels_last")), compile=bool(config.get("compile")))
        self._run_folder = run_preparation.check_run(self, getattr(self, "_checkpoint", None))
        self._checkpoint = None  # not kept in memory through training

    def _run_subcommand(self, subcommand: str) -> None:
        # The run folder is held through fit and --test_after_fit, and let go when they end; a crash
        # or kill lets go of it too (lightning_modules/run_lock.py).
        from lightning_modules import run_lock

        try:
            super()._run_subcommand(subcommand)
        finally:
            if getattr(self, "_run_folder", None) is not None:
                run_lock.release(self._run_folder)

    # --- end Reliability ------------------------------------------------------------------------

    def _verbose(self) -> bool:
        return bool(self.config.get(str(self.config.get("subcommand")), self.config).get("verbose"))

    def after_fit(self) -> None:
        if not self.config.fit.get("test_after_fit") or self.trainer.interrupted:
            return
        if self.trainer.global_step == 0:  # e.g. limit_train_batches=0: no result to report
            from lightning_modules.run_guards import no_step_taken_error

            raise no_step_taken_error(self.trainer)
        which = self.config.fit.get("test_checkpoint") or "best"
        callback = self.trainer.checkpoint_callback
        best = callback.best_model_path if callback is not None and callback.best_model_path else None
        if best is None and which == "best":
            say("ablate: no best checkpoint (no validation ran); testing the final weights")
        results: dict[str, dict | None] = {}
        final = None
        if which in ("final", "both") or best is None:
            # Kept as a file of its own and tested from it: after the best checkpoint's test has loaded
            # its weights, and because under SLURM Lightning swaps ckpt_path=None for a requeued run's
            # older pre-emption checkpoint.
            final = last_checkpoint_path(self.trainer).with_name(FINAL_CHECKPOINT)
            self.trainer.save_checkpoint(final, weights_only=True)
        if which in ("best", "both") and best:
            # By its path: ckpt_path="best" makes Lightning warn that there are two ModelCheckpoints (best, last).
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)
            results["best"] = self._test_summary("best checkpoint", checkpoint=best)
        # The final model is tested last, so the run's per-class files and last test rows are its own.
        if final is not None:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=str(final))
            results["final"] = self._test_summary("final model", checkpoint=str(final), step=self.trainer.global_step)
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask, not rank 0 alone
        if self.trainer.is_global_zero and log_dir:
            write_json_atomic(Path(log_dir) / TEST_RESULTS, results)

    def after_test(self) -> None:
        """``ablate test`` ends with the same one-line summary as ``fit --test_after_fit``, and records the
        metrics in the run folder's test_results.json under the checkpoint's file name (beside fit's
        "best" and "final", which it never replaces)."""
        from lightning_modules.run_folders import record_test_result

        ckpt_path = self.config.test.get("ckpt_path")
        result = self._test_summary(
            f"checkpoint {ckpt_path}" if ckpt_path else "the configured weights", checkpoint=ckpt_path
        )
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask, not rank 0 alone
        if result is not None and self.trainer.is_global_zero and log_dir:
            record_test_result(Path(log_dir) / TEST_RESULTS, Path(ckpt_path).name if ckpt_path else "weights", result)

    def after_validate(self) -> None:
        """``ablate validate`` says where its rows went (the checkpoint's run folder when it has one)."""
        metrics = self.trainer.callback_metrics
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask, not rank 0 alone
        if "val/acc" in metrics and self.trainer.is_global_zero:
            acc = 100 * float(metrics["val/acc"])
            print(f"val accuracy: {acc:.2f}%  val error: {100 - acc:.2f}%  run: {log_dir}")

    def _test_summary(self, model: str, **where: object) -> dict | None:
        """The test metrics just computed, and the one-line summary the demo ends with."""
        metrics = {key: float(value) for key, value in self.trainer.callback_metrics.items() if key.startswith("test/")}
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask, not rank 0 alone
        if "test/acc" not in metrics:
            return None
        if self.trainer.is_global_zero:
            acc = 100 * metrics["test/acc"]
            print(f"test accuracy: {acc:.2f}%  test error: {100 - acc:.2f}%  model: {model}  run: {log_dir}")
        return {"metrics": metrics, **where}


def _align_logger_versions(loggers: list) -> None:
    """Give every file logger the first one's version, so CSV and TensorBoard share one run folder.

    Each logger otherwise numbers its own ``version_N`` and a second logger pointed at the same
    root sees the first one's folder and takes the next number.
    """
    if len(loggers) < 2 or not hasattr(loggers[0], "version"):
        return
    version = loggers[0].version
    for logger in loggers[1:]:
        # Private: the loggers take a version only at construction, and the first logger's is known only
        # once it has looked at the folder; an unset `_version` is the one a logger would number itself.
        if hasattr(logger, "_version") and getattr(logger, "_version", None) is None:
            logger._version = version


def run_lightning_cli(
    args: list[str] | None = None, run: bool = True, main_parser: dict[str, Any] | None = None
) -> AblateCLI:
    """Parse ``args`` (None: ``sys.argv``) into an ``AblateCLI``; with ``run``, run the subcommand they name.

    Args:
        args: The command line after ``ablate``.
        run: False: no subcommand; the config's model, data and trainer are built and not run.
        main_parser: Keyword arguments of the top parser with ``run`` (the ``ablate --help`` text).
    """
    # Deferred so `ablate zoo` and `--help` of the tools do not pay for Lightning's import.
    from lightning_modules.classifier import ImageClassifier
    from lightning_modules.config_parser import ConfigErrorParser  # parse errors end with one line
    from lightning_modules.loggers import SaveConfigToWandb  # config.yaml, plus the W&B run config once

    defaults = {"default_config_files": [str(PRESETS / "defaults.yaml")]}
    # In a context of its own: jsonargparse leaves its last sub-parser in a ContextVar it never
    # resets, and through the parser's instantiators that keeps this CLI alive, with its trainer,
    # model and data (a whole in-memory dataset), after the caller is done with it: every run in
    # one process (a notebook, `ablate bench`) would keep its data alive.
    return contextvars.copy_context().run(
        AblateCLI,
        ImageClassifier,
        parser_class=ConfigErrorParser,
        subclass_mode_model=False,
        subclass_mode_data=True,
        parser_kwargs=(
            {**{command: defaults for command in ("fit", "validate", "test", "predict")}, **(main_parser or {})}
            if run
            else defaults
        ),
        save_config_callback=SaveConfigToWandb,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
