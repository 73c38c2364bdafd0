"""Lightning's argument parser with ``ablate``'s rules: parse errors in one line, configs saved whole.

``ConfigErrorParser`` (the CLI's ``parser_class``): jsonargparse's multi-line errors end with one
``ablate: error: ConfigError: <key and problem>`` line (exit 2); ``--config`` files are checked
before jsonargparse reads them (``config_files``); values that parse but cannot work and output
folders that cannot be written are refused at parse time (``value_ranges``, ``output_folders``);
the run's ``config.yaml`` is written whole or not at all (``files``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from pytorch_lightning.cli import LightningArgumentParser

from lightning_modules.errors import ConfigError

# Lines of jsonargparse's nested errors that list what it tried, not what is wrong.
_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Expected a <class 'NoneType'>",
    "Expected a path but",
)


def _moved_keys(text: str) -> str:
    """Where a model setting named on the command line went (config files are moved as they load)."""
    from lightning_modules.config_files import MOVED_MODEL_KEYS

    moved = [
        f"model.{old} is now {new}"
        for old, (new, _) in MOVED_MODEL_KEYS.items()
        if re.search(rf"\bmodel\.{old}\b", text)
    ]
    return f" ({'; '.join(moved)})" if moved else ""


def condense_parser_error(message: str) -> str:
    """A multi-line message (jsonargparse's nested ones: every subtype it tried) as one line naming
    the key and the problem."""
    lines = []
    for line in message.splitlines():
        line = line.strip()
        bare = line.removeprefix("- ")
        if not line or bare.startswith(_NOISE) or line.startswith(("Given value: NestedArg(", "Given value: Namesp")):
            continue
        if line.startswith("Given value:"):
            lines.append(f"(given: {line.removeprefix('Given value:').strip()})")
            continue
        lines.append(line.removeprefix("- "))
    text = " ".join(lines) or message.strip()
    text = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text)
    text = re.sub(r"Expected an? (\w+)", r"expected a value of type \1", text)
    return re.sub(r"\s+", " ", text) + _moved_keys(text)


class ConfigErrorParser(LightningArgumentParser):
    """Lightning's parser whose errors end with ``ablate: error: ConfigError: <one line>`` (exit 2),
    and whose saved configs (the run's ``config.yaml``) are written whole or not at all.

    jsonargparse prints the usage and a message that can span a dozen lines (every subtype it
    tried); the sweep and the user read the last line, so it names the key and the problem.
    """

    def save(
        self, cfg: Any, path: Any, *args: Any, multifile: bool = True, overwrite: bool = False, **kwargs: Any
    ) -> None:
        # jsonargparse opens config.yaml with "w" and writes: a kill or a full disk leaves it empty or cut.
        if multifile or "://" in str(path) or (not overwrite and Path(path).is_file()):
            # several files, a remote path, or jsonargparse's own refusal to overwrite: its way
            super().save(cfg, path, *args, multifile=multifile, overwrite=overwrite, **kwargs)
            return
        from lightning_modules.files import atomic_path

        with atomic_path(path) as temporary:
            super().save(cfg, temporary, *args, multifile=False, overwrite=True, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Every YAML jsonargparse loads (also `--data=file.yaml` and command-line values) is checked
        # for alias bombs first (lightning_modules/config_files.py).
        from lightning_modules import config_files

        config_files.install()
        super().__init__(*args, **kwargs)

    def add_function_arguments(
        self, function: Any, *args: Any, linked_targets: set[str] | None = None, **kwargs: Any
    ) -> list[str]:
        # A builder function as class_path (`architectures.resnet.resnet20`) is a target of the CLI's
        # data -> network links. jsonargparse hands a class_path's parser its link targets, which its
        # add_class_arguments takes and its add_function_arguments does not (4.53: "unexpected keyword
        # argument 'linked_targets'"). Its only use here is to make a linked parameter optional, which
        # jsonargparse does again right after this call (clear_required in get_class_parser).
        return super().add_function_arguments(function, *args, **kwargs)

    def parse_path(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        # Every --config file comes through here: an empty file or an alias bomb is refused naming
        # the file (jsonargparse said "Unexpected config:", or ran out of memory after 40 s).
        from lightning_modules import config_files

        try:
            config_files.check_config_file(path)
        except ValueError as refused:
            raise ConfigError(str(refused)) from None
        return super().parse_path(path, *args, **kwargs)

    def parse_args(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        # Values that parse but cannot work (a zero interval, a negative worker count) and output
        # folders that cannot be written: refused now, in one line, not mid-run as a traceback.
        # Sub-command parsers are called with _skip_validation; the root parser checks the whole config.
        cfg = super().parse_args(*args, **kwargs)
        if not kwargs.get("_skip_validation"):
            from lightning_modules.output_folders import check_output_folders
            from lightning_modules.value_ranges import check_value_ranges

            subcommand = cfg.get("subcommand")
            run = cfg.get(subcommand) if subcommand else cfg
            check_value_ranges(run)
            check_output_folders(run)
        return cfg

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        try:
            super().error(message, ex)
        except SystemExit as stop:
            if stop.code == 2:
                print(f"ablate: error: ConfigError: {condense_parser_error(message)}", file=sys.stderr)
            raise
