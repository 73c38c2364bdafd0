"""``python -m experiments.cli``: the ``ablate`` console script, for environments without it."""

from experiments.cli import console_main

console_main()
