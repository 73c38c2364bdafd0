"""The last line ``ablate`` prints when it fails: ``ablate: error: <Type>: <one line>``.

What ``experiments.cli.main`` needs beyond printing the message:

- Under DDP the first real error must be the last line. Lightning starts ranks 1.. as child
  processes of rank 0 (``_SubprocessScriptLauncher``), running the same command, so each goes
  through ``main()``. When rank 0 fails, the others lose their peer and print gloo's "Connection
  closed by peer" after rank 0's line; so rank 0 stops them first (SIGKILL, as Lightning's own
  process observer does: a rank blocked in a collective ignores SIGTERM). When a child fails
  first, it prints its line and exits; rank 0 then meets only the lost connection, waits for the
  child, and prints nothing over the child's line.
- File-system errors as one line naming the path and what to do.
- The tools' argparse usage errors (``ablate sweep --tier bogus``) in the same format.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

# What torch.distributed says when the process at the other end went away (gloo, NCCL, the store).
_PEER_GONE = re.compile(
    r"Connection closed by peer|Connection reset by peer|remote worker crash|remote process exited"
    r"|Broken pipe|NCCL communicator was aborted|failed to recv, got 0 bytes|Socket Timeout",
    re.IGNORECASE,
)
# Exit statuses of main() that come with the rank's own error line (cli.EXIT_TRAINING_FAILED, EXIT_SETUP_ERROR).
_REPORTED = (1, 2)


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` only says that another process of the run went away."""
    return isinstance(error, RuntimeError) and bool(_PEER_GONE.search(str(error)))


def other_ranks(trainer: Any) -> list[subprocess.Popen]:
    """The processes this rank started for the other ranks of its machine (rank 0 of a DDP run), else []."""
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    return list(getattr(launcher, "procs", None) or [])


def _silence_process_observer() -> None:
    # Lightning watches the children from a thread and SIGKILLs this process when one of them exits
    # non-zero, which would cut rank 0 off before its line; the children are ours to end now.
    import threading

    from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    for thread in threading.enumerate():
        if isinstance(thread, _ChildProcessObserver):
            thread._run = lambda: True  # its loop ends at the next check, without killing anyone
            thread._finished = True


def end_other_ranks(children: list[subprocess.Popen], peer_failed: bool, wait_s: float = 30) -> int | None:
    """Stop the child ranks before this rank prints its line; returns the exit status of a child that
    printed its own error line (then this rank prints nothing), else None.

    Args:
        peer_failed: this rank's error is a lost connection: a child likely failed first and is
            printing its error; it is given ``wait_s`` to finish before it is stopped.
    """
    _silence_process_observer()
    if peer_failed:
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=wait_s)
    reported = None
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGKILL)
            child.wait()
        elif child.returncode in _REPORTED and reported is None:
            reported = child.returncode
    return reported if peer_failed else None


def os_error_message(error: OSError) -> str:
    """An ``OSError`` as one line naming the path and what to do."""
    if error.filename is None or not error.strerror:
        return str(error)
    path = error.filename if error.filename2 is None else f"{error.filename} -> {error.filename2}"
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"cannot write to {path}: {error.strerror}; free space there or write elsewhere"
    if error.errno in (errno.ENOENT,):
        return f"{path}: {error.strerror}; check the path"
    return (
        f"{path}: {error.strerror}; check the path, or choose another (runs write under --trainer.default_root_dir "
        "and the loggers' save_dir, ./runs by default; the tools under --out)"
    )


@contextlib.contextmanager
def one_line_usage_errors() -> Iterator[None]:
    """The experiment tools' argparse errors end with ``ablate: error: UsageError: <prog>: <message>``
    like every other error (argparse's own last line is ``<prog>: error: <message>``)."""
    original = argparse.ArgumentParser.error

    def error(self: argparse.ArgumentParser, message: str) -> None:
        self.print_usage(sys.stderr)
        self.exit(2, f"ablate: error: UsageError: {self.prog}: {message}\n")

    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]
