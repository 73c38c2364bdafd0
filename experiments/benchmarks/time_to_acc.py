"""``ablate bench time-to-acc``: training wall time until the test accuracy reaches a target.

The same recipe runs three ways, each side in its own process, taking turns: through ``ablate fit``
with its defaults (the automatic speed setting included); through the plain PyTorch loop a careful
user would write (same network, seed, batches, augmentation, optimiser, schedule, loss, precision
and memory layout); and through the naive loop a user writes first (the same optimiser, schedule
and loss, but fp32, contiguous tensors and a torchvision dataset with per-image transforms behind a
``DataLoader``, as in PyTorch's CIFAR-10 tutorial). After every epoch every side is evaluated by
the same function on the test split with the clock stopped, so the figure is training time alone; a
side stops at the first epoch whose accuracy reaches the target (``--full-schedule``: trains on, so the
final accuracy is the whole recipe's). ``ratio`` is project time over plain time (1.0 = free);
``naive_over_ablate`` is how many times faster ``ablate fit`` gets there than the naive loop.
``--sides ablate,ablate-fp32`` instead asks whether accuracy pays for the automatic speed setting:
``ablate fit`` as it is against ``ablate fit`` in fp32 with contiguous tensors, same seed
(``fp32_over_auto``: how many times longer fp32 takes to the target).

The recipe is ``experiments/fast_cifar10.yaml`` (ideas from airbench and
hlb-CIFAR10, kept to what ``ablate fit`` offers): Nesterov SGD, a one-cycle schedule stepped
per batch, label smoothing, flip + translate augmentation on uint8 batches held in memory, and
flip test-time augmentation.
"""

from __future__ import annotations

import argparse
import functools
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import yaml

from experiments.benchmarks.side_by_side import REAL_CIFAR, interleaved, machine

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "experiments" / "fast_cifar10.yaml"


def recipe() -> dict:
    """The preset's optimiser, schedule, loss and data settings as plain values."""
    config = yaml.safe_load(RECIPE.read_text())
    model, data = config["model"], config["data"]["init_args"]
    return {
        "optimizer": model["optimizer"]["init_args"],
        "one_cycle": model["lr_scheduler"]["init_args"],
        "label_smoothing": model["label_smoothing"],
        "tta_flip": config["test_time"]["flip"],
        "batch_size": data["batch_size"],
        "augment": data["augment"],
        "max_shift": data["max_shift"],
        "epochs": config["trainer"]["max_epochs"],
    }


@torch.no_grad()
def test_accuracy(network: torch.nn.Module, dm, tta_flip: bool) -> float:
    """Top-1 accuracy on the test split; one function for both sides. Restores the train mode."""
    was_training = network.training
    network.eval()
    correct = total = 0
    for batch in dm.test_dataloader():
        images, labels = dm.transform_batch(batch, train=False)
        logits = network(images)
        if tta_flip:
            logits = logits + network(images.flip(3))
        correct += int((logits.argmax(1) == labels).sum())
        total += labels.numel()
    network.train(was_training)
    return correct / total


class _Clock:
    """Training seconds per epoch (evaluation excluded) and the accuracy after each epoch."""

    def __init__(self, target: float, stop_at_target: bool = True) -> None:
        self.target = target
        self.stop_at_target = stop_at_target
        self.train_seconds: list[float] = []
        self.accuracies: list[float] = []
        self._start = 0.0

    def epoch_start(self) -> None:
        self._start = time.perf_counter()

    def epoch_end(self, evaluate: Callable[[], float]) -> bool:
        """Stop the clock, evaluate, and say whether to stop: at the target, unless the whole schedule runs."""
        self.train_seconds.append(time.perf_counter() - self._start)
        self.accuracies.append(evaluate())
        return self.stop_at_target and self.accuracies[-1] >= self.target

    def result(self) -> dict:
        reached = next((i for i, acc in enumerate(self.accuracies) if acc >= self.target), None)
        return {
            "reached": reached is not None,
            "epochs": None if reached is None else reached + 1,
            "seconds": sum(self.train_seconds) if reached is None else sum(self.train_seconds[: reached + 1]),
            # Every epoch that ran: when only one side reaches the target, or neither, the time per
            # epoch still compares the two loops.
            "seconds_per_epoch": sum(self.train_seconds) / max(len(self.train_seconds), 1),
            "best_acc": max(self.accuracies, default=0.0),
            "final_acc": self.accuracies[-1] if self.accuracies else 0.0,
            "accuracies": self.accuracies,
            "train_seconds": self.train_seconds,
        }


def cifar_data(data_dir: Path, r: dict, seed: int):
    from datamodules import CIFAR10DataModule

    dm = CIFAR10DataModule(
        str(data_dir),
        batch_size=r["batch_size"],
        val_size=0,
        augment=r["augment"],
        max_shift=r["max_shift"],
        download=False,
        seed=seed,
    )
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def _one_cycle(optimizer: torch.optim.Optimizer, total_steps: int, one_cycle: dict):
    """The recipe's OneCycleLR as ``ablate fit`` builds it: a run too short for the warm-up floor
    (lightning_modules/schedules.py) warms up longer to a lower peak; full-length runs are unchanged."""
    from lightning_modules.schedules import WARMUP_FLOOR_STEPS, floored_warmup

    settings = dict(one_cycle)
    pct_start = settings.pop("pct_start", 0.3)  # OneCycleLR's default
    plan = floored_warmup(int(pct_start * total_steps), total_steps, WARMUP_FLOOR_STEPS)
    if plan.note is not None:
        pct_start = plan.steps / total_steps
        settings["max_lr"] = settings["max_lr"] * plan.peak_scale
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, total_steps=total_steps, pct_start=pct_start, **settings)


def _optimise(loss: torch.Tensor, optimizer: torch.optim.Optimizer, schedule) -> None:
    """One optimiser and schedule step, as both hand-written loops take it."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()


def plain_side(
    network: str, data_dir: Path, epochs: int, target: float, seed: int, stop_at_target: bool = True
) -> dict:
    """The recipe by hand: the loop, optimiser, schedule and loss written out in plain PyTorch, in the
    precision and memory layout ``ablate fit`` picks on this CPU."""
    from architectures import create_model
    from lightning_modules import speed

    r = recipe()
    choice = speed.choose(speed.probe("cpu"))
    layout = torch.channels_last if choice.channels_last else torch.contiguous_format
    torch.manual_seed(seed)
    dm = cifar_data(data_dir, r, seed)
    net = create_model(network, num_classes=10, in_chans=3).train().to(memory_format=layout)
    optimizer = torch.optim.SGD(net.parameters(), **r["optimizer"])
    loader = dm.train_dataloader()
    schedule = _one_cycle(optimizer, epochs * len(loader), r["one_cycle"])
    clock = _Clock(target, stop_at_target)
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # what Lightning does before every epoch: a new order
        clock.epoch_start()
        for batch in loader:
            images, labels = dm.transform_batch(batch, train=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in choice.precision):
                logits = net(images.contiguous(memory_format=layout))
                loss = F.cross_entropy(logits, labels, label_smoothing=r["label_smoothing"])
            _optimise(loss, optimizer, schedule)
        if clock.epoch_end(lambda: test_accuracy(net, dm, r["tta_flip"])):
            break
    return clock.result()


class _UncheckedCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR-10 without its md5 check of the official archive's batches (a copy
    written again, or a synthetic one, has other sums but the same format)."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as file:
            self.classes = pickle.load(file, encoding="latin1")[self.meta["key"]]


def naive_side(
    network: str, data_dir: Path, epochs: int, target: float, seed: int, stop_at_target: bool = True
) -> dict:
    """The recipe as a user first writes it: fp32, contiguous, torchvision's dataset and per-image
    transforms behind a ``DataLoader`` with its default of no worker processes (a side runs in a
    daemonic process, which may not start workers of its own)."""
    from torchvision import transforms as T

    from architectures import create_model

    r = recipe()
    torch.manual_seed(seed)
    dm = cifar_data(data_dir, r, seed)  # for the shared evaluation only
    augment = T.Compose(
        [T.RandomCrop(32, padding=r["max_shift"]), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(dm.mean, dm.std)]
    )
    if (Path(data_dir) / "train").is_dir():
        dataset = torchvision.datasets.ImageFolder(str(Path(data_dir) / "train"), transform=augment)
    else:
        dataset = _UncheckedCIFAR10(str(data_dir), train=True, transform=augment, download=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=r["batch_size"], shuffle=True)
    net = create_model(network, num_classes=10, in_chans=3).train()
    optimizer = torch.optim.SGD(net.parameters(), **r["optimizer"])
    schedule = _one_cycle(optimizer, epochs * len(loader), r["one_cycle"])
    clock = _Clock(target, stop_at_target)
    for _ in range(epochs):
        clock.epoch_start()
        for images, labels in loader:
            loss = F.cross_entropy(net(images), labels, label_smoothing=r["label_smoothing"])
            _optimise(loss, optimizer, schedule)
        if clock.epoch_end(lambda: test_accuracy(net, dm, r["tta_flip"])):
            break
    return clock.result()


def project_side(
    network: str,
    data_dir: Path,
    epochs: int,
    target: float,
    seed: int,
    stop_at_target: bool = True,
    overrides: tuple[str, ...] = (),
) -> dict:
    """The same recipe through ``ablate fit``: the preset, the CLI's defaults (loggers, checkpoints),
    then ``overrides`` (command-line arguments, e.g. the fp32 contiguous setting auto replaces)."""
    import pytorch_lightning as pl

    from lightning_modules.ablate_cli import run_lightning_cli

    r = recipe()
    clock = _Clock(target, stop_at_target)

    class TimeToAccuracy(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            clock.epoch_start()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            dm = trainer.datamodule
            if clock.epoch_end(lambda: test_accuracy(pl_module.network, dm, r["tta_flip"])):
                trainer.should_stop = True

    with tempfile.TemporaryDirectory() as workdir:
        cli = run_lightning_cli(
            [
                "--config",
                str(RECIPE),
                f"--model.network.init_args.name={network}",
                f"--data.init_args.data_dir={data_dir}",
                "--data.init_args.download=false",
                "--data.init_args.val_size=0",
                f"--data.init_args.seed={seed}",
                f"--seed_everything={seed}",
                f"--trainer.max_epochs={epochs}",
                "--trainer.accelerator=cpu",
                "--trainer.devices=1",
                "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={workdir}",
                '--trainer.logger={"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": '
                f'{{"save_dir": "{workdir}"}}}}',
                *overrides,
            ],
            run=False,
        )
        cli.trainer.callbacks.append(TimeToAccuracy())
        dm = cli.datamodule
        dm.prepare_data()
        dm.setup("test")  # the callback evaluates on the test split
        cli.trainer.fit(cli.model, datamodule=dm)
    return clock.result()


def bench_time_to_acc(args: argparse.Namespace) -> dict:
    from lightning_modules import speed

    data_dir = args.data_dir or REAL_CIFAR
    if not (Path(data_dir) / "train").is_dir() and not (Path(data_dir) / "cifar-10-batches-py").is_dir():
        raise FileNotFoundError(
            f"no CIFAR-10 under {data_dir}: give --data-dir (train/ + test/ class folders, or cifar-10-batches-py/)"
        )
    sides = {
        "naive": functools.partial(naive_side, stop_at_target=not args.full_schedule),
        "plain": functools.partial(plain_side, stop_at_target=not args.full_schedule),
        "ablate": functools.partial(project_side, stop_at_target=not args.full_schedule),
        # ``ablate fit`` with the automatic speed setting switched back to what it replaces: does
        # accuracy pay for the speed?
        "ablate-fp32": functools.partial(
            project_side,
            stop_at_target=not args.full_schedule,
            overrides=("--trainer.precision=32-true", "--channels_last=false"),
        ),
    }
    runs = interleaved(
        {
            side: functools.partial(sides[side], args.network, data_dir, args.epochs, args.target, args.seed)
            for side in args.sides
        },
        args.repeats,
    )
    row: dict = {"network": args.network, "target": args.target, "epochs_budget": args.epochs}
    for side in args.sides:
        reached = [run for run in runs[side] if run["reached"]]
        row[f"{side}_epochs"] = reached[0]["epochs"] if reached else "not reached"
        row[f"{side}_s"] = statistics.median(run["seconds"] for run in reached) if reached else float("nan")
        row[f"{side}_best_acc"] = max(run["best_acc"] for run in runs[side])
        row[f"{side}_final_acc"] = statistics.median(run["final_acc"] for run in runs[side])
    # Seconds per training epoch over all epochs run: the loops' cost ratio even when the target is missed.
    per_epoch = {side: statistics.median(run["seconds_per_epoch"] for run in runs[side]) for side in runs}
    for name, slow, fast in (
        ("ratio", "ablate", "plain"),
        ("naive_over_ablate", "naive", "ablate"),
        ("fp32_over_auto", "ablate-fp32", "ablate"),
    ):
        if slow in runs and fast in runs:
            row[name] = row[f"{slow}_s"] / row[f"{fast}_s"]
    for name, slow, fast in (
        ("epoch_ratio", "ablate", "plain"),
        ("naive_over_ablate_epoch", "naive", "ablate"),
        ("fp32_over_auto_epoch", "ablate-fp32", "ablate"),
    ):
        if slow in runs and fast in runs:
            row[name] = per_epoch[slow] / per_epoch[fast]
    choice = speed.choose(speed.probe("cpu"))
    return {
        "benchmark": "time-to-acc",
        "machine": machine(),
        "recipe": str(RECIPE.relative_to(REPO)),
        "speed": {"precision": choice.precision, "channels_last": choice.channels_last},
        "repeats": args.repeats,
        "rows": [row],
        "runs": runs,
    }


SIDES = ("naive", "plain", "ablate", "ablate-fp32")


def _sides(text: str) -> list[str]:
    chosen = [side.strip() for side in text.split(",") if side.strip()]
    unknown = [side for side in chosen if side not in SIDES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown side {', '.join(unknown) or '(none given)'}; choose from {', '.join(SIDES)}"
        )
    return list(dict.fromkeys(chosen))


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("time-to-acc", help="training seconds to a CIFAR-10 test accuracy, ablate vs plain")
    parser.add_argument("--network", default="resnet20")
    parser.add_argument("--target", type=float, default=0.85, help="test accuracy to reach (0..1)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=recipe()["epochs"],
        help="the schedule's length (default: the preset's max_epochs); a side stops at the target",
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None, help="CIFAR-10 (default: ../shared/data/cifar10-jpeg)")
    parser.add_argument(
        "--sides",
        type=_sides,
        default=["naive", "plain", "ablate"],
        help="which sides run, comma-separated: naive, plain, ablate (ablate fit as it is) and "
        "ablate-fp32 (ablate fit in fp32 contiguous, what the automatic speed setting replaces)",
    )
    parser.add_argument(
        "--full-schedule",
        action="store_true",
        help="train every epoch of the schedule instead of stopping at the target: the time to the "
        "target is still read off, and the final accuracy is the whole recipe's",
    )
    return parser
