"""``ablate bench overhead``: ``ablate fit`` against the plain PyTorch loop a careful user writes.

Both sides train the same network on the same CIFAR-10 batches, augmentation, optimiser and loss,
in fp32 with contiguous tensors, and time the steps after a warm-up; the ratio is what the
template's loop, loggers, checkpointing and progress bar cost.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.benchmarks.side_by_side import REAL_CIFAR, interleaved, machine


def cifar_dir(data_dir: Path | None) -> Path:
    """The given CIFAR-10, else the real JPEG copy, else synthetic pickles in a temporary folder."""
    from datamodules.synthetic import write_cifar10_pickles

    if data_dir is not None:
        return Path(data_dir)
    return (
        REAL_CIFAR
        if REAL_CIFAR.is_dir()
        else write_cifar10_pickles(Path(tempfile.mkdtemp()), per_batch=2000, num_test=1000)
    )


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

    from lightning_modules.ablate_cli import run_lightning_cli

    timer = _StepTimer(warmup)

    class Timing(pl.Callback):
        def on_train_batch_end(self, *args, **kwargs) -> None:
            timer.step_done()

    with tempfile.TemporaryDirectory() as workdir:
        cli = run_lightning_cli(
            [
                "--model.network=architectures.ZooModel",
                f"--model.network.init_args.name={net_name}",
                '--model.optimizer={"class_path": "torch.optim.SGD", "init_args": '
                '{"lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4}}',
                "--data=datamodules.CIFAR10DataModule",
                f"--data.init_args.data_dir={data_dir}",
                f"--data.init_args.batch_size={batch_size}",
                "--data.init_args.download=false",
                "--data.init_args.val_size=0",
                f"--trainer.max_steps={steps}",
                "--trainer.max_epochs=-1",
                "--trainer.limit_val_batches=0",
                "--trainer.num_sanity_val_steps=0",
                "--trainer.accelerator=cpu",
                "--trainer.devices=1",
                f"--trainer.default_root_dir={workdir}",
                f"--seed_everything={seed}",
                "--speed=off",  # fp32 and contiguous, as the plain loop: this compares the loops' cost alone
                # The default CSV + TensorBoard loggers, pointed at a temporary folder.
                "--trainer.logger="
                + json.dumps(
                    [
                        {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": workdir}},
                        {
                            "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                            "init_args": {"save_dir": workdir, "sub_dir": "tensorboard"},
                        },
                    ]
                ),
            ],
            run=False,
        )
        cli.trainer.callbacks.append(Timing())
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.images_per_s(batch_size)


def bench_overhead(args: argparse.Namespace) -> dict:
    data_dir = cifar_dir(args.data_dir)
    rows = []
    for net_name in args.networks.split(","):
        results = interleaved(
            {
                "plain": functools.partial(plain_loop, net_name, data_dir, args.batch_size, args.steps, args.warmup, 0),
                "ablate": functools.partial(
                    project_fit, net_name, data_dir, args.batch_size, args.steps, args.warmup, 0
                ),
            },
            args.repeats,
        )
        plain, ours = statistics.median(results["plain"]), statistics.median(results["ablate"])
        rows.append(
            {
                "network": net_name,
                "plain_img_s": plain,
                "ablate_img_s": ours,
                "ratio": ours / plain,
                "runs_plain": results["plain"],
                "runs_ablate": results["ablate"],
            }
        )
    return {
        "benchmark": "overhead",
        "machine": machine(),
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "rows": rows,
        "command": "ablate bench overhead " + " ".join(sys.argv[3:]),
    }


def add_parser(sub) -> argparse.ArgumentParser:
    overhead = sub.add_parser("overhead", help="ablate fit vs a plain PyTorch loop")
    overhead.add_argument("--networks", default="resnet20,all_cnn_c")
    overhead.add_argument("--steps", type=int, default=60)
    overhead.add_argument("--warmup", type=int, default=10)
    overhead.add_argument("--repeats", type=int, default=3)
    overhead.add_argument("--batch-size", type=int, default=128)
    overhead.add_argument("--data-dir", type=Path, default=None)
    return overhead
