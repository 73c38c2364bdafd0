"""Two sides of a comparison in a process pair, taking turns: what every ``ablate bench`` figure runs on.

Every comparison runs its two sides in a process pair, one process per side, taking turns
(A B, B A, A B, ...) for several repeats, and reports medians and the ratio: drift in a shared
machine's load hits both sides alike, and neither side runs in the heap, allocator or thread
pools the other has used. Each side's process collects its garbage between repeats, so a repeat
does not run beside the last one's unfreed trainer and data.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
REAL_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg"


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _side_process(conn, run: Callable[[], Any]) -> None:
    """One side's process: ``run()`` once per request from the parent, until told to stop."""
    os.dup2(2, 1)  # stdout carries the parent's figures alone: Lightning's prints go to stderr
    sys.stdout = sys.stderr
    while conn.recv():
        try:
            result = ("ok", run())
        except Exception as error:  # noqa: BLE001 - reported by the parent, which stops the comparison
            result = ("error", f"{type(error).__name__}: {error}")
        # Lightning's trainer, module and data module reference one another, so a finished fit is
        # freed only when Python's cycle collector next makes a full pass; until then each repeat
        # would run beside the garbage of the ones before it and slow down from one to the next, a
        # cost a user's `ablate fit` (one fit per process) never pays. Collect here, between repeats
        # and outside the timed steps, on both sides alike (what it cost: docs/benchmarks.md,
        # "How it got there").
        gc.collect()
        conn.send(result)


def interleaved(sides: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Each side's ``run()`` ``repeats`` times, each side in its own spawned process, taking turns.

    The order alternates (A B, B A, A B, ...), so a machine that slows down or speeds up during the
    comparison favours neither side. ``run`` must be picklable (a module-level function or a
    ``functools.partial`` of one).
    """
    context = multiprocessing.get_context("spawn")  # no fork after torch's OpenMP pool (it deadlocks)
    workers = {}
    try:
        for name, run in sides.items():
            conn, child_conn = context.Pipe()
            process = context.Process(target=_side_process, args=(child_conn, run), daemon=True)
            process.start()
            child_conn.close()
            workers[name] = (process, conn)
        results: dict[str, list[Any]] = {name: [] for name in sides}
        names = list(sides)
        for repeat in range(repeats):
            for name in names if repeat % 2 == 0 else names[::-1]:
                process, conn = workers[name]
                conn.send(True)
                try:
                    status, value = conn.recv()
                except EOFError:
                    process.join(5)
                    raise RuntimeError(f"the {name} side's process died (exit status {process.exitcode})") from None
                if status == "error":
                    raise RuntimeError(f"the {name} side failed: {value}")
                results[name].append(value)
        return results
    finally:
        for process, conn in workers.values():
            with contextlib.suppress(OSError):
                conn.send(False)
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
