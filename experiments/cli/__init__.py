"""``ablate``: LightningCLI's fit/validate/test/predict plus the experiment tools.

    ablate fit --config experiments/quickstart.yaml
    ablate test --config experiments/quickstart.yaml --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt
    ablate zoo --format md

The subcommands run ``lightning_modules/ablate_cli.py``'s LightningCLI; each tool is the ``main(argv)``
of the module ``TOOLS`` names, in the room of its job (experiments/studies, experiments/benchmarks,
experiments/analysis, or this one). This module turns whatever a run raises into one line and an exit
status. No module of the rooms below imports it.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from jsonargparse import DefaultHelpFormatter

from lightning_modules.ablate_cli import (
    EXIT_SETUP_ERROR,
    EXIT_TRAINING_FAILED,
    forget_run,
    run_lightning_cli,
    running_trainer,
)

# Tools beside LightningCLI's subcommands: name -> "module:function" taking argv.
TOOLS: dict[str, str] = {
    "zoo": "experiments.analysis.zoo:main",
    "sweep": "experiments.studies.sweep:main",
    "report": "experiments.studies.report:main",
    "slurm": "experiments.studies.slurm:main",
    "bench": "experiments.benchmarks.bench:main",
    "landscape": "experiments.analysis.landscape:main",
    "lesion": "experiments.analysis.lesion:main",
    "shapes": "experiments.analysis.shapes:main",
    "visualize": "experiments.analysis.visualize:main",
    "cache": "experiments.cli.cache:main",
}

# What `ablate --help` says of each tool, after Lightning's four subcommands (one line each; the
# modules are not imported for it: `--help` stays fast).
TOOL_SUMMARIES: dict[str, str] = {
    "zoo": "the registered networks: parameters and multiply-adds, against the papers' counts",
    "sweep": "run every arm x seed of a study (experiments/studies/<name>), each in its own folder",
    "report": "a study's numbers next to the paper's, as Markdown, CSV and PNG (and W&B)",
    "slurm": "an sbatch script for one config, or a job array for a whole study",
    "bench": "what the template costs against plain PyTorch, measured side by side",
    "landscape": "the loss surface around a run's trained weights (Li et al. 2018)",
    "lesion": "delete residual units of a trained run at test time (Veit et al. 2016)",
    "shapes": "per layer: output shape, receptive field, parameters and multiply-adds",
    "visualize": "first-layer filters and class activation maps of a trained run",
    "cache": "the decode cache's folder, entries and sizes; --clear empties it",
}


def _tools_epilog() -> str:
    width = max(len(name) for name in TOOL_SUMMARIES)
    lines = [f"  {name:<{width}}  {summary}" for name, summary in TOOL_SUMMARIES.items()]
    return "experiment tools (`ablate <tool> --help` for each):\n" + "\n".join(lines)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the epilog's lines kept as written (the tools' table)."""


# `ablate --help`: the description and the tools after Lightning's subcommands.
_MAIN_PARSER = {
    "description": "Train, evaluate and compare CNN ablations: Lightning's fit/validate/test/predict,\n"
    "and the experiment tools listed below.",
    "epilog": _tools_epilog(),
    "formatter_class": _HelpFormatter,
}


def _classify(error: BaseException) -> int:
    """The exit status of an error: a failure of training, or a run that could not start.

    Divergence is always a training outcome. Configuration, data and checkpoint errors never are,
    wherever they surface (a corrupt image can be met mid-epoch). Anything else counts as a training
    failure once an optimiser step has been taken, and as a setup error before.
    """
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from datamodules.base import DataFormatError, DataNotFoundError
    from experiments.studies.study import StudyError
    from lightning_modules.errors import CheckpointError, ConfigError, NonFiniteLossError

    if isinstance(error, NonFiniteLossError):
        return EXIT_TRAINING_FAILED
    if isinstance(
        error, (DataNotFoundError, DataFormatError, ConfigError, CheckpointError, StudyError, MisconfigurationException)
    ):
        return EXIT_SETUP_ERROR
    trainer = running_trainer()
    return EXIT_TRAINING_FAILED if trainer is not None and trainer.global_step > 0 else EXIT_SETUP_ERROR


def _run_tool(name: str, argv: list[str]) -> int:
    import importlib

    module_name, function = TOOLS[name].split(":")
    return int(getattr(importlib.import_module(module_name), function)(argv) or 0)


# Errors that are the user's to fix: print their message alone, no traceback. Any other type is a
# bug, whose report needs the traceback; its last line is still the one-line `ablate: error:`.
def _user_error_types() -> tuple[type[BaseException], ...]:
    from lightning_fabric.utilities.exceptions import MisconfigurationException  # Lightning's "bad setting"

    from lightning_modules.errors import NonFiniteLossError

    # ValueError covers ConfigError, CheckpointError, StudyError, DataFormatError; OSError covers
    # FileNotFoundError, DataNotFoundError, a path that cannot be written, a full disk.
    return (ValueError, KeyError, TypeError, OSError, NonFiniteLossError, MisconfigurationException)


def _is_user_error(error: BaseException) -> bool:
    if isinstance(error, _user_error_types()):
        return True
    # A package a chosen setting needs and this environment lacks (`--trainer.accelerator tpu` wants
    # torch_xla; Lightning raises it without a module name): the user's to install. A module of this
    # repository that fails to import is a bug.
    missing = getattr(error, "name", None) or ""
    return isinstance(error, ImportError) and missing.split(".")[0] not in _OWN_PACKAGES


_OWN_PACKAGES = ("architectures", "datamodules", "experiments", "lightning_modules", "tests")


def _one_line(error: BaseException, peer_failed: bool) -> str:
    """``<Type>: <message>`` on one line, naming what to fix."""
    from experiments.cli.error_lines import os_error_message
    from lightning_modules.config_parser import condense_parser_error

    if isinstance(error, KeyError) and error.args:
        message = str(error.args[0])
    elif isinstance(error, OSError):
        message = os_error_message(error)
    else:
        message = str(error)
    if "\n" in message.strip():  # jsonargparse's and Lightning's multi-line messages
        message = condense_parser_error(message)
    message = message.strip() or "(no message; run with ABLATE_DEBUG=1 for the traceback)"
    if peer_failed:  # this rank only lost its peer: say so, not gloo's file and line
        rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "?"
        message = (
            f"rank {rank} lost another process of this DDP run, which ended first ({message[:160]}); "
            "its own error, if it printed one, is above"
        )
    return f"{type(error).__name__}: {message}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ablate`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The user's own modules (`--model.network.class_path my_ablation.MyNet`) import from the working
    # directory, as under `python -m`: a console script has only its bin folder on sys.path. Other
    # import roots go on PYTHONPATH. DDP's children re-run this script in the same folder, and
    # spawned workers inherit sys.path, so they import them too.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # A W&B service inherited from whatever started this process (a notebook, a test runner, a script
    # that itself uses wandb) would own this run's W&B files and may stop before flushing them.
    os.environ.pop("WANDB_SERVICE", None)
    try:
        if argv and argv[0] in TOOLS:
            from experiments.cli.error_lines import one_line_usage_errors

            with one_line_usage_errors():
                return _run_tool(argv[0], argv[1:])
        # LightningCLI reads sys.argv itself when args is None (and warns when given both).
        run_lightning_cli(None if argv == sys.argv[1:] else argv, main_parser=_MAIN_PARSER)
        return 0
    except KeyboardInterrupt:
        print("ablate: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ablate zoo | head`: the reader left; stop quietly (Python's documented recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except SystemExit as stop:  # a SIGTERM stop must not exit 0 like a finished run
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if not isinstance(stop, SIGTERMException):
            raise
        if stop.code is None:
            print("ablate: interrupted by SIGTERM; resume with --ckpt_path last", file=sys.stderr)
        return int(stop.code or 143)
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into an exit status
        from experiments.cli import error_lines

        # The last line printed is this error's, in one line (docs/reliability.md, "One line, always"): under DDP the
        # other ranks of this machine are stopped first, or, when one of them failed first and said
        # so, this rank prints nothing over its line.
        peer_failed = error_lines.is_peer_failure(error)
        children = error_lines.other_ranks(running_trainer())
        if children:
            reported = error_lines.end_other_ranks(children, peer_failed)
            if reported is not None:
                return reported
        if os.environ.get("ABLATE_DEBUG") or not (peer_failed or _is_user_error(error)):
            traceback.print_exc()
        print(f"ablate: error: {_one_line(error, peer_failed)}", file=sys.stderr)
        return _classify(error)
    finally:
        forget_run()


def console_main() -> None:
    sys.exit(main())
