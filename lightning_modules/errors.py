"""The errors ``ablate`` reports as the user's to fix: one line, no traceback, exit status 2.

A file of their own, importing nothing, so every check can raise them without an import cycle.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, unsafe, or from another network."""


class ConfigError(ValueError):
    """A configuration that parses but cannot be what the user meant (the message says why)."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step, likely causes and the
    last good checkpoint."""
