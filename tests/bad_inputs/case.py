"""One case of the bad-input corpus, and the argument fragments the case tables share."""

from __future__ import annotations

from dataclasses import dataclass

MARKER = "pwned.txt"  # what a malicious file's payload would create in the run's folder


@dataclass(frozen=True)
class Case:
    id: str
    args: str  # after `ablate`; {placeholders} from the write_inputs functions
    expect: str  # fragment of the last stderr line
    xfail: str = ""  # why it cannot pass yet


FIT = "fit --config {config}"
TEST = "test --config {config}"
CIFAR = "--data=datamodules.CIFAR10DataModule --data.download=false --data.val_size=10 --data.data_dir"
