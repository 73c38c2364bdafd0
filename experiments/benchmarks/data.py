"""Is the input pipeline fast enough? Loader images/s against training images/s, per dataset, on this machine.

Three data paths side by side, each against the network it feeds:

* **MNIST** (``MNISTDataModule``, in-memory uint8 tensors, presets ``none`` and ``shift``) against
  ``inception_mnist`` at batch 64, the network and batch of ``experiments/quickstart_fast.yaml``;
* **CIFAR-10** (``CIFAR10DataModule``, in-memory uint8 tensors, every batch augmentation preset)
  against ResNet-20 (He et al. 2015) at batch 128;
* **a JPEG image folder** (``ImageNetDataModule``: DataLoader workers read and decode each file and
  run the per-image ``imagenet`` preset, RandomResizedCrop + flip) on the CIFAR-10 JPEG tree at its
  own 32 px resolution, against ResNet-20 at batch 128 (``--folder-crop 224`` switches to ResNet-18
  at 224 px, the ImageNet setting).

Loader images/s is the training ``DataLoader`` over all the training images (``val_size=0``) plus
``transform_batch(train=True)`` (augmentation and normalisation, exactly what
``on_after_batch_transfer`` runs); training images/s is forward, loss, backward and SGD step on
random batches of the network's input shape (data cost excluded).
For CIFAR it also times decoding the source into the tensor cache (first run, then cached) and a
real loop of both, reporting the share of step time spent on data.

Measured on the CPU: the pessimistic case, where augmentation and decoding compete with the
network for the same cores; on a GPU the network moves off them and the data share only shrinks.
Target: loader >= 10x the images/s training consumes; data time < 5% of step time. The verdict is
a ratio of two rates taken on the same machine in the same run, so a loaded or slow machine slows
both and the ratio still says whether data keeps up. Batch transforms run with one CPU thread
(``datamodules.batch_augment.single_thread_on_cpu``): a batch's augmentation is many small ops,
which a thread pool slows down, the more so on busy cores. Measured figures, idle and loaded:
docs/benchmarks.md, "Data path".

Usage::

    ablate bench data                                   # all three, real data from ../shared/data
    ablate bench data --datasets folder --num-workers 4 --batches 100
    python -m experiments.benchmarks.data --data-dir ../shared/data/cifar10-jpeg --presets standard,autoaugment
    python -m experiments.benchmarks.data --datasets mnist,cifar --steps 5 --json bench.json

Missing data is replaced by small synthetic sets in the real formats, written to a temporary
folder and labelled ``synthetic`` in the output: MNIST IDX files, CIFAR-10 pickle batches, and a
JPEG tree for the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datamodules import CIFAR10DataModule, ImageNetDataModule, MNISTDataModule
from datamodules.image_folder import class_folders
from datamodules.mnist import MNIST_FILES
from datamodules.presets import BATCH_PRESETS
from datamodules.synthetic import write_cifar10_pickles, write_image_tree, write_mnist_idx
from datamodules.whitening import GCNZCAWhitener
from lightning_modules.files import write_text_atomic

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DEFAULT_DATA = SHARED_DATA / "cifar10-jpeg"
DATASETS = ("mnist", "cifar", "folder")
TITLES = {"mnist": "MNIST", "cifar": "CIFAR-10", "folder": "JPEG folder"}
# The batch each network trains with in the project's recipes (quickstart_fast.yaml for MNIST).
DEFAULT_BATCH = {"mnist": 64, "cifar": 128, "folder": 128}
MNIST_NETWORK = "inception_mnist"
CIFAR_NETWORK = "resnet20"


def note(message: str) -> None:
    """Progress on stderr: stdout carries the figures alone."""
    print(message, file=sys.stderr, flush=True)


def machine_info() -> dict:
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        # Other jobs on the box slow both sides of every ratio; the load says how busy it was.
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cpu",
    }


# ---------------------------------------------------------------------------------------------
# Measurements shared by every section
# ---------------------------------------------------------------------------------------------


def loader_throughput(dm, batches: int, warmup_batches: int = 1) -> float:
    """Training images/s through the DataLoader and ``transform_batch(train=True)``.

    ``warmup_batches`` are drawn before the clock starts: lazy state and first-call overheads, and
    with workers their start-up and the first round of batches they decode all at once.
    """
    loader = dm.train_dataloader()
    iterator = iter(loader)

    def next_batch():
        nonlocal iterator
        try:
            return next(iterator)
        except StopIteration:  # a small (synthetic) set: go round again
            iterator = iter(loader)
            return next(iterator)

    for _ in range(warmup_batches):
        dm.transform_batch(next_batch(), train=True)
    images_seen = 0
    started = time.perf_counter()
    for _ in range(batches):
        images, _ = dm.transform_batch(next_batch(), train=True)
        images_seen += len(images)
    return images_seen / (time.perf_counter() - started)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images, targets) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), targets).backward()
    optimizer.step()


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def build_network(name: str, num_classes: int, in_chans: int) -> nn.Module:
    from architectures import create_model

    return create_model(name, num_classes=num_classes, in_chans=in_chans)


def train_throughput(
    model: nn.Module, batch_size: int, steps: int, input_shape: Sequence[int], num_classes: int
) -> float:
    """Training images/s on random batches of ``input_shape`` (data cost excluded)."""
    optimizer = sgd(model)
    images, targets = torch.randn(batch_size, *input_shape), torch.randint(0, num_classes, (batch_size,))
    model.train()
    for _ in range(2):
        train_step(model, optimizer, images, targets)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, images, targets)
    return batch_size * steps / (time.perf_counter() - started)


class TrainingRates:
    """Training images/s per (network, batch, input, classes), measured once per run.

    The JPEG folder at 32 px feeds the same ResNet-20 batches as in-memory CIFAR: both rows then
    divide by the same figure instead of two noisy ones.
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.measured: dict[tuple, dict] = {}

    def __call__(self, network: str, batch_size: int, input_shape: Sequence[int], num_classes: int) -> dict:
        key = (network, batch_size, tuple(input_shape), num_classes)
        if key not in self.measured:
            model = build_network(network, num_classes, input_shape[0])
            rate = train_throughput(model, batch_size, self.steps, input_shape, num_classes)
            self.measured[key] = {"network": network, "input": list(input_shape), "images_per_s": rate}
        return self.measured[key]


def finish_section(section: dict, train: dict) -> dict:
    section["train"] = train
    section["loader_over_train"] = {
        name: rate / train["images_per_s"] for name, rate in section["loader_images_per_s"].items()
    }
    return section


# ---------------------------------------------------------------------------------------------
# MNIST: in-memory tensors
# ---------------------------------------------------------------------------------------------


def has_mnist(data_dir: Path) -> bool:
    raw = data_dir / "MNIST" / "raw"
    return all((raw / name).is_file() or (raw / f"{name}.gz").is_file() for name in MNIST_FILES)


def mnist_section(args: argparse.Namespace, scratch: Path, training: TrainingRates) -> dict:
    data_dir = Path(args.mnist_dir)
    real = has_mnist(data_dir)
    if not real:
        data_dir = write_mnist_idx(scratch / "mnist", num_train=10_000, num_test=1_000)
    batch_size = args.batch_size or DEFAULT_BATCH["mnist"]
    rates = {}
    for preset in args.mnist_presets.split(","):
        dm = MNISTDataModule(str(data_dir), batch_size=batch_size, val_size=0, augment=preset, download=False)
        dm.setup("fit")
        rates[preset] = loader_throughput(dm, args.batches)
    section = {
        "data": str(data_dir / "MNIST" / "raw") if real else "synthetic MNIST IDX files (10k train)",
        "synthetic": not real,
        "batch_size": batch_size,
        "loader_images_per_s": rates,
    }
    return finish_section(section, training(MNIST_NETWORK, batch_size, (1, 28, 28), 10))


# ---------------------------------------------------------------------------------------------
# CIFAR-10: in-memory tensors, batch augmentation presets
# ---------------------------------------------------------------------------------------------


def time_decode(data_dir: Path) -> dict[str, float]:
    """Seconds to prepare + set up from an empty cache, then from the cache it wrote."""
    with tempfile.TemporaryDirectory() as cache:
        timings = {}
        for run in ("first_run_s", "cached_s"):
            started = time.perf_counter()
            dm = CIFAR10DataModule(str(data_dir), val_size=0, download=False, cache_dir=cache)
            dm.prepare_data()
            dm.setup("fit")
            timings[run] = time.perf_counter() - started
        return timings


def data_share(dm: CIFAR10DataModule, model: nn.Module, steps: int) -> dict[str, float]:
    """A real training loop: seconds per step spent fetching + augmenting, and in the network."""
    optimizer = sgd(model)
    iterator = iter(dm.train_dataloader())
    data_s = total_s = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        images, targets = dm.transform_batch(next(iterator), train=True)
        fetched = time.perf_counter()
        train_step(model, optimizer, images, targets)
        if step > 0:  # step 0 warms up
            data_s += fetched - started
            total_s += time.perf_counter() - started
    return {
        "data_ms_per_step": 1000 * data_s / steps,
        "step_ms": 1000 * total_s / steps,
        "data_percent": 100 * data_s / total_s,
    }


def cifar_loader_rates(data_dir: Path, cache: str, batch_size: int, args: argparse.Namespace) -> dict[str, float]:
    """Loader images/s per batch preset, then with the costliest extras switched on."""
    rates = {}
    for preset in args.presets.split(","):
        dm = CIFAR10DataModule(
            str(data_dir), batch_size=batch_size, val_size=0, augment=preset, download=False, cache_dir=cache
        )
        dm.prepare_data()
        dm.setup("fit")
        rates[preset] = loader_throughput(dm, args.batches)
    extras = {
        "standard+mixup/cutmix+erasing": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "random_erasing": 0.5},
        "standard+gcn_zca (apply only)": {},
    }
    for name, knobs in extras.items():
        dm = CIFAR10DataModule(
            str(data_dir), batch_size=batch_size, val_size=0, download=False, cache_dir=cache, **knobs
        )
        dm.setup("fit")
        if "gcn_zca" in name:  # time applying the 3072x3072 whitening; fitting it is a one-off
            dm.whitener = GCNZCAWhitener()
            dm.whitener.mean, dm.whitener.matrix = torch.zeros(3072), torch.randn(3072, 3072) / 55
        rates[name] = loader_throughput(dm, args.batches)
    return rates


def cifar_section(args: argparse.Namespace, scratch: Path, training: TrainingRates) -> dict:
    data_dir = Path(args.data_dir)
    real = data_dir.is_dir()
    if not real:
        data_dir = write_cifar10_pickles(scratch / "cifar", per_batch=2000, num_test=1000)
    batch_size = args.batch_size or DEFAULT_BATCH["cifar"]
    section: dict = {
        "data": str(data_dir) if real else "synthetic CIFAR-10 pickles (10k train)",
        "synthetic": not real,
        "batch_size": batch_size,
    }
    if not args.skip_decode:
        section["decode"] = time_decode(data_dir)
    cache = str(scratch / "cifar-cache")
    section["loader_images_per_s"] = cifar_loader_rates(data_dir, cache, batch_size, args)
    finish_section(section, training(CIFAR_NETWORK, batch_size, (3, 32, 32), 10))
    dm = CIFAR10DataModule(str(data_dir), batch_size=batch_size, val_size=0, download=False, cache_dir=cache)
    dm.setup("fit")
    section["loop_standard"] = data_share(dm, build_network(CIFAR_NETWORK, 10, 3), args.steps)
    return section


# ---------------------------------------------------------------------------------------------
# JPEG image folder: files decoded per image in DataLoader workers
# ---------------------------------------------------------------------------------------------


def has_image_tree(tree: Path) -> bool:
    return (tree / "train").is_dir() and ((tree / "val").is_dir() or (tree / "test").is_dir())


def imagenet_layout(tree: Path, scratch: Path) -> Path:
    """``tree`` as ``ImageNetDataModule`` expects it: ``train/`` + ``val/``.

    Image-folder copies of CIFAR name their held-out split ``test/``; links give it the ``val/``
    name without copying 60k files.
    """
    if (tree / "val").is_dir():
        return tree
    view = scratch / "folder-layout"
    view.mkdir()
    (view / "train").symlink_to((tree / "train").resolve(), target_is_directory=True)
    (view / "val").symlink_to((tree / "test").resolve(), target_is_directory=True)
    return view


def folder_network(crop_size: int) -> str:
    """ResNet-20 for CIFAR-sized crops (its 3 stages expect ~32 px), ResNet-18 for ImageNet-sized ones."""
    return CIFAR_NETWORK if crop_size <= 64 else "resnet18"


def folder_section(args: argparse.Namespace, scratch: Path, training: TrainingRates) -> dict:
    tree = Path(args.folder_dir)
    real = has_image_tree(tree)
    if not real:
        tree = scratch / "jpeg"
        write_image_tree(tree, per_class={"train": 100, "test": 10}, size=(32, 32), formats=("jpg",))
    root = imagenet_layout(tree, scratch)
    num_classes = len(class_folders(root / "train"))
    batch_size = args.batch_size or DEFAULT_BATCH["folder"]
    crop = args.folder_crop
    rates = {}
    for preset in args.folder_presets.split(","):
        dm = ImageNetDataModule(
            str(root), batch_size=batch_size, val_size=0, num_workers=args.num_workers, num_classes=num_classes,
            augment=preset, crop_size=crop, pin_memory=False,  # batches stay on the CPU here
        )  # fmt: skip
        dm.setup("fit")
        # Workers start together and hand in their first batches together: skip that round.
        rates[f"{preset} {crop}px"] = loader_throughput(dm, args.batches, warmup_batches=max(1, args.num_workers))
    section = {
        "data": str(tree) if real else f"synthetic JPEG tree ({100 * num_classes} train images, 32x32)",
        "synthetic": not real,
        "batch_size": batch_size,
        "num_workers": args.num_workers,
        "crop_size": crop,
        "loader_images_per_s": rates,
    }
    return finish_section(
        section, training(args.folder_network or folder_network(crop), batch_size, (3, crop, crop), num_classes)
    )


# ---------------------------------------------------------------------------------------------
# Command line and report
# ---------------------------------------------------------------------------------------------

SECTIONS = {"mnist": mnist_section, "cifar": cifar_section, "folder": folder_section}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ablate bench data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: mnist, cifar, folder")
    parser.add_argument("--mnist-dir", default=str(SHARED_DATA), help="folder holding MNIST/raw/; synthetic if missing")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="CIFAR-10 source; synthetic if missing")
    parser.add_argument(
        "--folder-dir",
        default=str(DEFAULT_DATA),
        help="image-folder tree train/<class>/* + test/ (or val/); synthetic JPEGs if missing",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="every section's batch (default: MNIST 64, CIFAR 128, folder 128)"
    )
    parser.add_argument("--batches", type=int, default=50, help="loader batches timed per pipeline")
    parser.add_argument("--steps", type=int, default=10, help="training steps timed per network")
    parser.add_argument("--presets", default=",".join(BATCH_PRESETS), help="CIFAR batch presets, comma-separated")
    parser.add_argument("--mnist-presets", default="none,shift", help="MNIST presets, comma-separated")
    parser.add_argument("--folder-presets", default="imagenet", help="per-image presets of the JPEG folder")
    parser.add_argument("--folder-crop", type=int, default=32, help="training crop of the JPEG folder, in pixels")
    parser.add_argument(
        "--folder-network",
        default=None,
        help="network the folder feeds (default resnet20 up to 64 px crops, else resnet18)",
    )
    parser.add_argument("--num-workers", type=int, default=2, help="decoding workers of the JPEG folder")
    parser.add_argument("--skip-decode", action="store_true", help="do not time CIFAR decoding from scratch")
    parser.add_argument("--format", choices=("md", "json"), default="md", help="what to print")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    args.datasets = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = sorted(set(args.datasets) - set(DATASETS))
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    results: dict = {"machine": machine_info(), "datasets": args.datasets}
    training = TrainingRates(args.steps)
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.datasets:
            note(f"bench data: {TITLES[name]} ...")
            results[name] = SECTIONS[name](args, Path(scratch), training)
    results["machine"]["load_average_after"] = [round(load, 2) for load in os.getloadavg()]

    print(json.dumps(results, indent=2) if args.format == "json" else markdown(results))
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(results, indent=2))  # a record: whole or not at all
    return results


def section_title(name: str, section: dict) -> str:
    title = TITLES[name]
    if name == "folder":
        workers = section["num_workers"]
        title += f" ({workers} workers, per image)" if workers else " (main process, per image)"
    return title + (" **synthetic**" if section["synthetic"] else "")


def markdown(results: dict) -> str:
    """The figures as a Markdown summary: one side-by-side table, then CIFAR's decode and loop."""
    machine = results["machine"]
    load = "/".join(f"{value:.1f}" for value in machine["load_average"])
    lines = [
        f"### Data pipeline vs training (CPU: {machine['processor']}, {machine['cpu_count']} cores, "
        f"{machine['cpu_threads']} torch thread(s), load average {load} at start)",
        "",
        "| data | pipeline | batch | loader images/s | network (input) | training images/s | loader / training |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for name in results["datasets"]:
        section, train = results[name], results[name]["train"]
        network = f"{train['network']} ({'x'.join(map(str, train['input']))})"
        for pipeline, rate in section["loader_images_per_s"].items():
            lines.append(
                f"| {section_title(name, section)} | {pipeline} | {section['batch_size']} | {rate:,.0f} | {network} "
                f"| {train['images_per_s']:,.0f} | {section['loader_over_train'][pipeline]:,.1f}x |"
            )
    lines += ["", "Data: " + "; ".join(f"{TITLES[name]}: {results[name]['data']}" for name in results["datasets"])]
    if "cifar" in results:
        lines += ["", *cifar_details(results["cifar"])]
    return "\n".join(lines)


def cifar_details(cifar: dict) -> list[str]:
    lines = []
    if "decode" in cifar:
        decode = cifar["decode"]
        lines.append(
            f"CIFAR-10 decode + set up: first run {decode['first_run_s']:.1f} s, cached {decode['cached_s']:.1f} s."
        )
    loop = cifar["loop_standard"]
    lines.append(
        f"CIFAR-10 training loop with `standard` augmentation: {loop['data_ms_per_step']:.1f} ms data of "
        f"{loop['step_ms']:.0f} ms per step = **{loop['data_percent']:.2f}% data time** (target < 5%); "
        f"loader/training = **{cifar['loader_over_train'].get('standard', float('nan')):.0f}x** (target >= 10x)."
    )
    return lines


if __name__ == "__main__":
    main()
