"""``ablate bench``: how much this template costs against plain PyTorch, measured side by side.

    ablate bench overhead    [--steps 60 --repeats 3]         # ablate fit vs a plain loop, same batches
    ablate bench data        [--datasets mnist,cifar,folder]  # loader images/s vs training images/s
    ablate bench throughput  [--pattern 'resnet*']            # per architecture: images/s, memory, MFU
    ablate bench time-to-acc [--target 0.85]                  # ResNet-20 on CIFAR-10 to a test accuracy

Every comparison runs its two sides in a process pair, one process per side, taking turns
(A B, B A, A B, ...) for several repeats, and reports medians and the ratio: drift in a shared
machine's load hits both sides alike, and neither side runs in the heap, allocator or thread
pools the other has used. Each side's process collects its garbage between repeats, so a repeat
does not run beside the last one's unfreed trainer and data. Figures print as Markdown and,
with ``--json FILE``, as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from experiments import bench_throughput, bench_time_to_acc
from lightning_modules.files import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
REAL_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg"


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def cifar_dir(data_dir: Path | None) -> Path:
    """The given CIFAR-10, else the real JPEG copy, else synthetic pickles in a temporary folder."""
    from datamodules.synthetic import write_cifar10_pickles

    if data_dir is not None:
        return Path(data_dir)
    return REAL_CIFAR if REAL_CIFAR.is_dir() else write_cifar10_pickles(
        Path(tempfile.mkdtemp()), per_batch=2000, num_test=1000)


@functools.cache  # once per side's process: every repeat of the plain loop reads the same batches
def cifar_datamodule(data_dir: Path, batch_size: int):
    """The project's CIFAR-10 module, loaded into memory, with ``standard`` augmentation."""
    from datamodules import CIFAR10DataModule

    dm = CIFAR10DataModule(str(data_dir), batch_size=batch_size, val_size=0, augment="standard", download=False)
    dm.prepare_data()
    dm.setup("fit")
    return dm


class _StepTimer:
    """Wall time between the end of step ``warmup`` and the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None
        self.steps = 0

    def step_done(self) -> None:
        self.steps += 1
        if self.steps == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()

    def images_per_s(self, batch_size: int) -> float:
        return (self.steps - self.warmup) * batch_size / (self.end - self.start)


def plain_loop(net_name: str, data_dir: Path, batch_size: int, steps: int, warmup: int, seed: int) -> float:
    """The loop a careful user writes by hand: same batches, augmentation, optimiser, loss."""
    from architectures import create_model

    dm = cifar_datamodule(data_dir, batch_size)
    torch.manual_seed(seed)
    net = create_model(net_name, num_classes=10, in_chans=3).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    timer = _StepTimer(warmup)
    loader = dm.train_dataloader()
    while timer.steps < steps:
        for batch in loader:
            images, labels = dm.transform_batch(batch, train=True)
            loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            timer.step_done()
            if timer.steps >= steps:
                break
    return timer.images_per_s(dm.batch_size)


def project_fit(net_name: str, data_dir: Path, batch_size: int, steps: int, warmup: int, seed: int) -> float:
    """The same training through ``ablate fit`` (its defaults: loggers, checkpointing, progress bar)."""
    import pytorch_lightning as pl

    from experiments.cli import run_lightning_cli

    timer = _StepTimer(warmup)

    class Timing(pl.Callback):
        def on_train_batch_end(self, *args, **kwargs) -> None:
            timer.step_done()

    with tempfile.TemporaryDirectory() as workdir:
        cli = run_lightning_cli([
            "--model.network=architectures.ZooModel", f"--model.network.init_args.name={net_name}",
            '--model.optimizer={"class_path": "torch.optim.SGD", "init_args": '
            '{"lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4}}',
            "--data=datamodules.CIFAR10DataModule", f"--data.init_args.data_dir={data_dir}",
            f"--data.init_args.batch_size={batch_size}", "--data.init_args.download=false",
            "--data.init_args.val_size=0",
            f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1", "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0", "--trainer.accelerator=cpu", "--trainer.devices=1",
            f"--trainer.default_root_dir={workdir}", f"--seed_everything={seed}",
            "--speed=off",  # fp32 and contiguous, as the plain loop: this compares the loops' cost alone
            # The default CSV + TensorBoard loggers, pointed at a temporary folder.
            "--trainer.logger=" + json.dumps([
                {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": workdir}},
                {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                 "init_args": {"save_dir": workdir, "sub_dir": "tensorboard"}}]),
        ], run=False)
        cli.trainer.callbacks.append(Timing())
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.images_per_s(batch_size)


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
        # freed only when Python's cycle collector next makes a full pass, and the next repeat ran
        # beside it: for ResNet-20, 240 MB more RSS a repeat, page faults per step 9k -> 19k by the
        # third, per-repeat ratios against the plain loop down to 0.90 by the seventh. `ablate fit`
        # runs one fit per process and never meets this; collect here, between repeats and outside
        # the timed steps, on both sides alike.
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


def bench_overhead(args: argparse.Namespace) -> dict:
    data_dir = cifar_dir(args.data_dir)
    rows = []
    for net_name in args.networks.split(","):
        results = interleaved({
            "plain": functools.partial(plain_loop, net_name, data_dir, args.batch_size, args.steps, args.warmup, 0),
            "ablate": functools.partial(project_fit, net_name, data_dir, args.batch_size, args.steps, args.warmup, 0),
        }, args.repeats)
        plain, ours = statistics.median(results["plain"]), statistics.median(results["ablate"])
        rows.append({"network": net_name, "plain_img_s": plain, "ablate_img_s": ours, "ratio": ours / plain,
                     "runs_plain": results["plain"], "runs_ablate": results["ablate"]})
    return {"benchmark": "overhead", "machine": machine(), "steps": args.steps, "warmup": args.warmup,
            "batch_size": args.batch_size, "repeats": args.repeats, "rows": rows,
            "command": "ablate bench overhead " + " ".join(sys.argv[3:])}


def _cell(value) -> str:
    if isinstance(value, float) and abs(value) < 10:
        return f"{value:,.3f}"
    if isinstance(value, (int, float)):
        return f"{value:,.0f}"
    return "" if value is None else str(value)


def markdown(result: dict) -> str:
    rows = result["rows"]
    if not rows:
        return "no rows"
    # The union of the rows' keys, in order: an error row has fewer, a row with MFU one more.
    columns = list(dict.fromkeys(key for row in rows for key in row if not key.startswith("runs_")))
    columns = [c for c in columns if c != "error"] + ["error"] * ("error" in columns)
    lines = [f"### {result['benchmark']} — {result['machine']}", "",
             "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["data"]:
        # bench_data parses its own flags; argparse.REMAINDER would reject the rest when it starts with "--".
        from experiments import bench_data

        bench_data.main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="ablate bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="which", required=True)
    overhead = sub.add_parser("overhead", help="ablate fit vs a plain PyTorch loop")
    overhead.add_argument("--networks", default="resnet20,all_cnn_c")
    overhead.add_argument("--steps", type=int, default=60)
    overhead.add_argument("--warmup", type=int, default=10)
    overhead.add_argument("--repeats", type=int, default=3)
    overhead.add_argument("--batch-size", type=int, default=128)
    overhead.add_argument("--data-dir", type=Path, default=None)
    throughput = bench_throughput.add_parser(sub)
    time_to_acc = bench_time_to_acc.add_parser(sub)
    # Listed for --help only: main hands "data ..." to bench_data before parsing.
    sub.add_parser("data", help="loader images/s vs training images/s: MNIST, CIFAR-10, a JPEG folder "
                   "(experiments/bench_data.py)", add_help=False)
    for sp in (overhead, throughput, time_to_acc):
        sp.add_argument("--format", choices=("md", "json"), default="md", help="what to print")
        sp.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    run = {"overhead": bench_overhead, "throughput": bench_throughput.bench_throughput,
           "time-to-acc": bench_time_to_acc.bench_time_to_acc}[args.which]
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the figures alone (e.g. into jq)
        result = run(args)
    print(json.dumps(result, indent=2) if args.format == "json" else markdown(result))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2))  # a record: whole or not at all
    return 0
