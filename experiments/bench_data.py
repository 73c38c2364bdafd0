"""Is the CIFAR input pipeline fast enough? Loader throughput against ResNet-20 training, on this machine.

Measures, on the CPU (the pessimistic case: augmentation competes with the network for the
same cores; on a GPU both run on the device and the data share only shrinks):

1. decoding the CIFAR-10 source into uint8 tensors on the first run, and loading the cache after;
2. training-loader images/s per augmentation preset: batch indexing + augmentation +
   normalisation (``transform_batch(train=True)``, exactly what ``on_after_batch_transfer`` runs);
3. ResNet-20 (He et al. 2015) training images/s at batch 128: forward, loss, backward, SGD step;
4. a real loop of both, reporting the share of step time spent on data.

Targets (issue #4): loader >= 10x the images/s training consumes; data time < 5% of step time.

Measured on the 2-core CPU dev box while other jobs kept it loaded (load average ~5), real
CIFAR-10 JPEG copy: decode 9.6 s first run, 1.2 s from the cache; ``standard`` preset
35,000 images/s against 48 images/s of ResNet-20 training (738x), 0.18% of step time on data;
the slowest preset (``randaugment``, per image) still 110x. Batch transforms run with one CPU
thread: with two, the same box gave ``standard`` 974 images/s (34x) - see
``datamodules.batch_augment.single_thread_on_cpu``.

Usage::

    python -m experiments.bench_data --data-dir ../shared/data/cifar10-jpeg
    python -m experiments.bench_data --presets standard,autoaugment --steps 5 --json bench.json

Without real data it writes synthetic CIFAR-10 pickle batches to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datamodules import CIFAR10DataModule
from datamodules.presets import BATCH_PRESETS
from datamodules.synthetic import write_cifar10_pickles
from datamodules.whitening import GCNZCAWhitener

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def build_network(num_classes: int = 10) -> tuple[nn.Module, str]:
    """ResNet-20 from the registry, or a clearly labelled stand-in while it is not registered."""
    try:
        from architectures import create_model

        return create_model("resnet20", num_classes=num_classes), "resnet20"
    except (ImportError, KeyError):
        layers: list[nn.Module] = []
        chans = 3
        for width, stride in ((16, 1), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1)):
            layers += [nn.Conv2d(chans, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            chans = width
        stand_in = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
        return stand_in, "stand-in (6 conv layers; resnet20 not registered)"


def time_decode(data_dir: Path) -> dict[str, float]:
    """Seconds to prepare + set up from an empty cache, then from the cache it wrote."""
    with tempfile.TemporaryDirectory() as cache:
        timings = {}
        for run in ("first_run_s", "cached_s"):
            started = time.perf_counter()
            dm = CIFAR10DataModule(str(data_dir), download=False, cache_dir=cache)
            dm.prepare_data()
            dm.setup("fit")
            timings[run] = time.perf_counter() - started
        return timings


def loader_throughput(dm: CIFAR10DataModule, batches: int) -> float:
    """Training images/s through the DataLoader and ``transform_batch(train=True)``."""
    loader = dm.train_dataloader()
    images_seen = 0
    iterator = iter(loader)
    dm.transform_batch(next(iterator), train=True)  # warm-up (lazy state, first-call overheads)
    started = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        images, _ = dm.transform_batch(batch, train=True)
        images_seen += len(images)
    return images_seen / (time.perf_counter() - started)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images, targets) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), targets).backward()
    optimizer.step()


def train_throughput(model: nn.Module, batch_size: int, steps: int) -> float:
    """ResNet-20 training images/s on random batches (data cost excluded)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images, targets = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    model.train()
    for _ in range(2):
        train_step(model, optimizer, images, targets)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, images, targets)
    return batch_size * steps / (time.perf_counter() - started)


def data_share(dm: CIFAR10DataModule, model: nn.Module, steps: int) -> dict[str, float]:
    """A real training loop: seconds per step spent fetching + augmenting, and in the network."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
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


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="CIFAR-10 source; synthetic if missing")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=50, help="loader batches timed per preset")
    parser.add_argument("--steps", type=int, default=10, help="ResNet-20 training steps timed")
    parser.add_argument("--presets", default=",".join(BATCH_PRESETS), help="comma-separated presets")
    parser.add_argument("--skip-decode", action="store_true", help="do not time decoding from scratch")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(args.data_dir)
        real = data_dir.is_dir()
        if not real:
            data_dir = write_cifar10_pickles(Path(scratch) / "data", per_batch=2000, num_test=1000)
        results: dict = {
            "machine": {
                "cpu_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "device": "cpu",
            },
            "data": str(data_dir) if real else "synthetic CIFAR-10 pickles (10k train)",
            "batch_size": args.batch_size,
        }
        if not args.skip_decode:
            results["decode"] = time_decode(data_dir)

        cache = str(Path(scratch) / "cache")
        loader_rates = {}
        for preset in args.presets.split(","):
            dm = CIFAR10DataModule(
                str(data_dir), batch_size=args.batch_size, augment=preset, download=False, cache_dir=cache
            )
            dm.prepare_data()
            dm.setup("fit")
            loader_rates[preset] = loader_throughput(dm, args.batches)
        extras = {
            "standard+mixup/cutmix+erasing": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "random_erasing": 0.5},
            "standard+gcn_zca (apply only)": {},
        }
        for name, knobs in extras.items():
            dm = CIFAR10DataModule(
                str(data_dir), batch_size=args.batch_size, download=False, cache_dir=cache, **knobs
            )
            dm.setup("fit")
            if "gcn_zca" in name:  # time applying the 3072x3072 whitening; fitting it is a one-off
                dm.whitener = GCNZCAWhitener()
                dm.whitener.mean, dm.whitener.matrix = torch.zeros(3072), torch.randn(3072, 3072) / 55
            loader_rates[name] = loader_throughput(dm, args.batches)
        results["loader_images_per_s"] = loader_rates

        model, network = build_network()
        train_rate = train_throughput(model, args.batch_size, args.steps)
        results["train"] = {"network": network, "images_per_s": train_rate}
        results["loader_over_train"] = {name: rate / train_rate for name, rate in loader_rates.items()}
        dm = CIFAR10DataModule(str(data_dir), batch_size=args.batch_size, download=False, cache_dir=cache)
        dm.setup("fit")
        results["loop_standard"] = data_share(dm, model, args.steps)

    print(json.dumps(results, indent=2))
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def markdown(results: dict) -> str:
    """The figures as a Markdown summary."""
    train = results["train"]
    lines = [
        f"### CIFAR data pipeline vs {train['network']} training (CPU, {results['machine']['cpu_threads']} "
        f"threads, batch {results['batch_size']})",
        "",
    ]
    if "decode" in results:
        decode = results["decode"]
        lines += [
            f"Decode + set up: first run {decode['first_run_s']:.1f} s, cached {decode['cached_s']:.1f} s.",
            "",
        ]
    lines += [
        "| pipeline | loader images/s | x training rate |",
        "|---|---:|---:|",
        *(
            f"| {name} | {rate:,.0f} | {results['loader_over_train'][name]:.1f}x |"
            for name, rate in results["loader_images_per_s"].items()
        ),
        f"| **{train['network']} training** | {train['images_per_s']:,.0f} | 1.0x |",
        "",
    ]
    loop = results["loop_standard"]
    lines.append(
        f"Training loop with `standard` augmentation: {loop['data_ms_per_step']:.1f} ms data of "
        f"{loop['step_ms']:.0f} ms per step = **{loop['data_percent']:.2f}% data time** (target < 5%); "
        f"loader/training = **{results['loader_over_train'].get('standard', float('nan')):.0f}x** "
        "(target >= 10x)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
