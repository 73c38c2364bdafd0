"""Config files that cannot be what the user meant, refused in one line before jsonargparse reads them.

- An empty file (or one of comments only): jsonargparse said "Unexpected config:" without the file.
- A YAML alias bomb ("billion laughs": anchors whose aliases nest, each level multiplying the
  last): PyYAML builds it as a small graph of shared nodes, but jsonargparse copies and walks it as a
  tree, exponentially larger than the file: a few hundred bytes exhaust time and memory. Aliases are
  counted as they would expand, on the composed graph, in time proportional to the file, and a
  document that would grow past ``MAX_EXPANDED_NODES`` is refused; so is one whose alias points into
  itself (a cycle).

``install()`` puts the check in front of jsonargparse's YAML loader (``jsonargparse.set_loader``),
so every YAML jsonargparse loads is guarded: ``--config`` files, ``--data=file.yaml`` and values
given on the command line. ``check_config_file`` says the same with the file's name.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# Nodes a document may have once its aliases are expanded. A complete LightningCLI config has a few
# hundred; a bomb of nine levels of nine has 387 million.
MAX_EXPANDED_NODES = 100_000


class ConfigFileError(yaml.YAMLError):
    """A YAML document refused before it is used (a ``yaml.YAMLError``, which jsonargparse reports)."""


def expanded_size(node: yaml.Node) -> int:
    """How many nodes ``node`` has with every alias expanded, counted on the shared graph (each
    distinct node once). Raises ``ConfigFileError`` for an alias that refers back into itself."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    # Iterative post-order walk: a deep document must not hit Python's recursion limit.
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        key = id(current)
        if children_done:
            on_path.discard(key)
            sizes[key] = min(1 + sum(sizes[id(child)] for child in _children(current)), MAX_EXPANDED_NODES + 1)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ConfigFileError("an alias refers to the node that contains it (a recursive YAML document)")
        on_path.add(key)
        stack.append((current, True))
        stack.extend((child, False) for child in _children(current) if id(child) not in sizes)
    return sizes[id(node)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def check_yaml_text(text: str) -> None:
    """Refuse a document whose aliases would expand past ``MAX_EXPANDED_NODES`` nodes."""
    if "*" not in text:  # no alias, nothing can expand: the common case costs one scan
        return
    for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
        if node is not None and expanded_size(node) > MAX_EXPANDED_NODES:
            raise ConfigFileError(
                f"its YAML aliases expand to more than {MAX_EXPANDED_NODES:,} values (nested anchors and aliases, "
                "a 'billion laughs' document); write the values out or use fewer nested aliases"
            )


def check_config_file(path: str | Path) -> None:
    """Raise ``ValueError`` naming ``path`` if it is empty or an alias bomb; other problems are
    left to jsonargparse (missing file, syntax errors, unknown keys)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"config file {path} is not UTF-8 text (byte {error.start}: {error.reason}); give a YAML file"
        ) from None
    except OSError:
        return  # missing, a folder, unreadable: jsonargparse says so with the path
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        raise ValueError(
            f"config file {path} is empty; it should hold the run's settings "
            "(a YAML mapping such as `trainer:`, `model:`, `data:`), or leave out that --config"
        )
    try:
        check_yaml_text(text)
        content = yaml.safe_load(text)
    except ConfigFileError as refused:
        raise ValueError(f"config file {path} refused: {refused}") from None
    except yaml.YAMLError as error:  # jsonargparse's message named neither the file nor, on one line, the place
        raise ValueError(f"config file {path} is not valid YAML{describe_yaml_error(error)}; fix the file") from None
    if content is not None and not isinstance(content, dict):
        raise ValueError(
            f"config file {path} holds a {type(content).__name__}, not a mapping of settings "
            "(`trainer:`, `model:`, `data:`)"
        )


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """`` at line L, column C: <problem>`` of a PyYAML syntax error (lines counted from 1)."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or (str(error).splitlines() or [type(error).__name__])[0]
    return f"{where}: {problem}"


# Model settings that became callbacks' (ema.EMA, transfer.FineTune, evaluation.TestTime) or `ablate`'s
# own (--channels_last, --compile, beside --speed): new key and the value each had when unset. Every
# run's config.yaml written before names them all, so they are moved as a config is read, not refused.
MOVED_MODEL_KEYS = {
    "ema_decay": ("ema.decay", 0.0),
    "ema_eval": ("ema.evaluate", False),
    "weights": ("fine_tune.weights", None),
    "skip_mismatched_head": ("fine_tune.skip_mismatched_head", True),
    "freeze": ("fine_tune.freeze", None),
    "freeze_bn_stats": ("fine_tune.freeze_bn_stats", True),
    "head_lr_multiplier": ("fine_tune.head_lr_multiplier", 1.0),
    "tta_flip": ("test_time.flip", False),
    "confusion_matrix": ("test_time.confusion_matrix", True),
    "channels_last": ("channels_last", None),
    "compile": ("compile", False),
}


def move_retired_keys(config: object) -> object:
    """A loaded config with its ``model`` settings of ``MOVED_MODEL_KEYS`` under their new keys (those
    at their unset value dropped; a new key the config also sets wins)."""
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        return config
    model = config["model"]
    for settings in (model, model.get("init_args")):
        if not isinstance(settings, dict):
            continue
        for old, (new, unset) in MOVED_MODEL_KEYS.items():
            if old not in settings:
                continue
            value = settings.pop(old)
            if value == unset or (value == [] and unset is None):
                continue
            group, _, key = new.rpartition(".")
            if group and not isinstance(config.get(group), dict):
                config[group] = {}
            (config[group] if group else config).setdefault(key, value)
    return config


_installed = False


def install() -> None:
    """Guard jsonargparse's YAML loader (once per process; the loader it had is kept and called)."""
    global _installed
    if _installed:
        return
    from jsonargparse import get_loader, set_loader

    original = get_loader("yaml")

    def guarded_yaml_load(stream):
        if isinstance(stream, str):
            check_yaml_text(stream)  # composing does not depend on jsonargparse's resolvers
        return move_retired_keys(original(stream))

    set_loader("yaml", guarded_yaml_load, exceptions=(yaml.YAMLError,))
    _installed = True
