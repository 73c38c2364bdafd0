"""Values read out of a parsed configuration, whatever holds them.

The checks run on jsonargparse's ``Namespace``, on the plain dicts of a loaded ``config.yaml`` and
on attribute objects alike, and a key may be missing at any level; these two helpers read all of
them the same way.
"""

from __future__ import annotations

from typing import Any


def lookup(namespace: Any, *keys: str, default: Any = None) -> Any:
    """``namespace[keys[0]][keys[1]]...``, or ``default`` where a level is missing or None."""
    for key in keys:
        if namespace is None:
            return default
        namespace = namespace.get(key) if hasattr(namespace, "get") else getattr(namespace, key, None)
    return default if namespace is None else namespace


def as_list(value: Any) -> list:
    """A setting that takes one item or a list of them (``trainer.logger``, ``trainer.callbacks``), as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
