"""``ablate lesion``: delete residual units at test time, after Veit, Wilber & Belongie 2016,
"Residual Networks Behave Like Ensembles of Relatively Shallow Networks"
(https://arxiv.org/abs/1605.06431, Fig. 3 and 5).

    ablate lesion runs/resnet_depth/short/resnet20/seed_0 runs/resnet_depth/short/plain20/seed_0 \\
        --random-k 1 2 3 4 5 --samples 10 --out docs/analysis

Deleting a unit leaves its shortcut: the residual branch's output is replaced by zeros inside the
unit, so it outputs ``h(x)`` passed through whatever the unit applies after the addition. For the
units of He et al. 2015 (``original``: ReLU after the addition, inputs already non-negative) that is
``y = x`` for identity shortcuts and ``y = h(x)`` for the units that change the shape: the strided,
zero-padded identity (option A) or the 1x1 projection (option B); pre-activation units give
``x + 0`` exactly. Veit et al. find that deleting a downsampling unit hurts more (Fig. 3b).

A plain net (``shortcut: none``) has no shortcut to fall back on: there "deleting" a unit replaces
it by the identity, which only its units that keep the shape allow (its downsampling units are
reported as n/a). The paper's point shows as the contrast: one deleted layer of a plain net is
catastrophic, one deleted unit of a ResNet is not.

Residual units are found by type: ``architectures.resnet_parts.ResidualUnit`` (every unit of the
``ResNet`` class: CIFAR and ImageNet ResNets, pre-activation, ResNeXt, wide and plain nets) and
Xception's ``Block`` (``rep(x) + shortcut(x)``; deleted, it outputs its shortcut: ``x`` in the
middle flow, the strided 1x1 projection in the entry and exit flows). The lesion is done with
forward hooks, so the network's code is untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from architectures.resnet_parts import NoShortcut, ResidualUnit
from architectures.xception import Block as XceptionBlock
from experiments.analysis import common


@dataclass(frozen=True)
class Unit:
    """One residual unit of a network.

    Attributes:
        name: Module name, e.g. ``layer2.0``.
        module: The unit.
        residual: It has a shortcut (False in plain nets).
        downsampling: It changes the shape (stride or channels).
    """

    name: str
    module: nn.Module
    residual: bool
    downsampling: bool

    @property
    def removable(self) -> bool:
        """Residual units always; plain units only where the identity has the right shape."""
        return self.residual or not self.downsampling


def residual_units(network: nn.Module) -> list[Unit]:
    """Every residual unit of ``network`` in module order; empty for a network without any."""
    units = []
    for name, module in network.named_modules():
        if isinstance(module, ResidualUnit):
            convs = [getattr(module, f"conv{i}") for i in range(1, module.depth + 1)]
            downsampling = convs[0].in_channels != convs[-1].out_channels or any(
                stride != 1 for conv in convs for stride in conv.stride
            )
            units.append(Unit(name, module, not isinstance(module.downsample, NoShortcut), downsampling))
        elif isinstance(module, XceptionBlock):
            units.append(Unit(name, module, residual=True, downsampling=module.skip is not None))
    return units


def require_units(network: nn.Module, label: str) -> list[Unit]:
    """``residual_units(network)``, or a clear error when it has none."""
    units = residual_units(network)
    if not units:
        raise ValueError(
            f"{label} ({type(network).__name__}) has no residual units: lesion deletes units of the ResNet "
            "family (architectures.resnet_parts.ResidualUnit, plain ResNets included) and Xception's blocks, "
            "and this network has none"
        )
    return units


def _zero_residual(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Pre-hook of a shortcut ``shortcut(x, residual)``: the residual branch contributes nothing."""
    x, residual, *rest = args
    return (x, torch.zeros_like(residual), *rest)


def _zeros(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a residual branch that ends before the addition (Xception's ``rep``)."""
    return torch.zeros_like(output)


def _identity(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """Forward hook replacing a (plain) unit's output by its input."""
    return args[0]


@contextlib.contextmanager
def lesioned(units: Sequence[Unit]) -> Iterator[None]:
    """Within the block, the given units are deleted (see the module docstring)."""
    handles = []
    try:
        for unit in units:
            if not unit.removable:
                raise ValueError(f"unit {unit.name} changes the shape and has no shortcut: it cannot be removed")
            if isinstance(unit.module, XceptionBlock):
                handles.append(unit.module.rep.register_forward_hook(_zeros))
            elif unit.residual:
                handles.append(unit.module.downsample.register_forward_pre_hook(_zero_residual))
            else:
                handles.append(unit.module.register_forward_hook(_identity))
        yield
    finally:
        for handle in handles:
            handle.remove()


def lesion_study(
    run: common.LoadedRun,
    split: str = "test",
    limit: int = 0,
    random_k: Sequence[int] = (),
    samples: int = 10,
    seed: int = 0,
    batch_size: int = 500,
    progress: Any = None,
) -> dict[str, Any]:
    """Error with no unit deleted, with each removable unit deleted alone, and with random sets of k.

    Args:
        run: A run loaded with ``common.load_run``.
        split: Split evaluated (``test``, as the paper).
        limit: Evaluate only the first ``limit`` images of the split (0 = all).
        random_k: Sizes of the random sets of units deleted together (Veit et al. Fig. 5a).
        samples: Random sets drawn per size.
        seed: Seed of the random sets.
        batch_size: Images per forward pass.
        progress: Called once per evaluation.
    """
    network = run.network
    units = require_units(network, run.label)
    removable = [unit for unit in units if unit.removable]
    too_many = [k for k in random_k if not 1 <= k <= len(removable)]
    if too_many:
        raise ValueError(f"--random-k {too_many[0]}: {run.label} has {len(removable)} removable units")
    device = next(network.parameters()).device
    dataset = common.split_dataset(run.datamodule, split)
    data = common.cached_batches(
        run.datamodule, split, common.subset_indices(len(dataset), limit, None), batch_size, device
    )
    tick = progress or (lambda: None)

    def error(deleted: Sequence[Unit]) -> float:
        with lesioned(deleted):
            value = common.evaluate(run.module, network, data)["err"]
        tick()
        return value

    base = error([])
    single = []
    for unit in units:
        row = {"unit": unit.name, "downsampling": unit.downsampling, "residual": unit.residual}
        if unit.removable:
            err = error([unit])
            row.update(err=err, delta=err - base)
        else:
            row.update(err=None, delta=None)
        single.append(row)
    rng = random.Random(seed)
    sets = []
    for k in random_k:
        errs, chosen = [], []
        for _ in range(samples):
            picked = rng.sample(removable, k)
            errs.append(error(picked))
            chosen.append([unit.name for unit in picked])
        sets.append(
            {
                "k": k,
                "samples": samples,
                "err_mean": float(np.mean(errs)),
                "err_std": float(np.std(errs)),
                "errs": errs,
                "units": chosen,
            }
        )
    return {
        "label": run.label,
        "run_dir": run.run_dir,
        "checkpoint": run.checkpoint,
        "split": split,
        "images": sum(len(labels) for _, labels in data),
        "plain": not any(u.residual for u in units),
        "err_none": base,
        "single": single,
        "random": sets,
    }


def evaluations(run: common.LoadedRun, random_k: Sequence[int], samples: int) -> int:
    units = residual_units(run.network)
    return 1 + sum(unit.removable for unit in units) + len(random_k) * samples


# ----- report -----------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| run | deleted | downsampling | error % | Δ vs none |", "| --- | --- | :---: | ---: | ---: |"]
    for result in results:
        lines.append(f"| {result['label']} | none | | {_fmt(result['err_none'])} | |")
        for row in result["single"]:
            delta = "" if row["delta"] is None else f"{row['delta']:+.2f}"
            lines.append(
                f"| {result['label']} | {row['unit']} | {'yes' if row['downsampling'] else ''} | "
                f"{_fmt(row['err'])} | {delta} |"
            )
        for row in result["random"]:
            delta = row["err_mean"] - result["err_none"]
            lines.append(
                f"| {result['label']} | random {row['k']} (x{row['samples']}) | | "
                f"{row['err_mean']:.2f} ± {row['err_std']:.2f} | {delta:+.2f} |"
            )
    return "\n".join(lines)


def csv_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        rows.append(
            {
                "run": result["label"],
                "deleted": "none",
                "k": 0,
                "downsampling": "",
                "err": result["err_none"],
                "err_std": "",
                "delta": 0.0,
            }
        )
        for row in result["single"]:
            rows.append(
                {
                    "run": result["label"],
                    "deleted": row["unit"],
                    "k": 1,
                    "downsampling": row["downsampling"],
                    "err": row["err"],
                    "err_std": "",
                    "delta": row["delta"],
                }
            )
        for row in result["random"]:
            rows.append(
                {
                    "run": result["label"],
                    "deleted": f"random {row['k']}",
                    "k": row["k"],
                    "downsampling": "",
                    "err": row["err_mean"],
                    "err_std": row["err_std"],
                    "delta": row["err_mean"] - result["err_none"],
                }
            )
    return rows


def plot(results: list[dict[str, Any]], path: Any) -> Any:
    """Per run, the error with each unit deleted (downsampling units in red, the intact net dashed);
    with random sets, the error against the number of units deleted (Veit et al. Fig. 3 and 5a)."""
    plt = common.pyplot()
    with_random = any(result["random"] for result in results)
    panels = len(results) + int(with_random)
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.8), squeeze=False)
    for ax, result in zip(axes[0], results, strict=False):
        names = [row["unit"] for row in result["single"]]
        errs = [row["err"] if row["err"] is not None else 0.0 for row in result["single"]]
        colours = ["tab:red" if row["downsampling"] else "tab:blue" for row in result["single"]]
        bars = ax.bar(range(len(names)), errs, color=colours)
        for bar, row in zip(bars, result["single"], strict=True):
            if row["err"] is None:
                ax.text(bar.get_x() + bar.get_width() / 2, 2, "n/a", ha="center", fontsize=6, rotation=90)
        ax.axhline(
            result["err_none"],
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"none deleted: {result['err_none']:.1f}%",
        )
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_ylabel(f"{result['split']} error (%)")
        kind = "plain: unit -> identity" if result["plain"] else "residual: unit -> shortcut"
        ax.set_title(f"{result['label']}, one unit deleted\n({kind}; red: downsampling)", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    if with_random:
        ax = axes[0][-1]
        for result in results:
            if result["random"]:
                ks = [0] + [row["k"] for row in result["random"]]
                means = [result["err_none"]] + [row["err_mean"] for row in result["random"]]
                stds = [0.0] + [row["err_std"] for row in result["random"]]
                ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=result["label"])
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("units deleted at random (k)")
        ax.set_ylabel("error (%), mean ± std")
        ax.set_ylim(0, 100)
        ax.set_title("random sets of k units deleted", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return common.save_figure(fig, path)


# ----- command ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = common.tool_parser("lesion", __doc__)
    parser.add_argument("runs", nargs="+", help="run directories or checkpoints (several: side by side)")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test", help="split evaluated")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images of the split (0 = all)")
    parser.add_argument(
        "--random-k",
        type=int,
        nargs="*",
        default=[],
        metavar="K",
        help="also delete random sets of K units (one or more sizes)",
    )
    parser.add_argument("--samples", type=int, default=10, help="random sets drawn per K")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sets")
    parser.add_argument("--name", default="lesion", help="file name prefix")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_run_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples < 1:
        raise ValueError(f"--samples must be at least 1, got {args.samples}")
    device = common.resolve_device(args.device)
    runs = [common.load_run(path, args.checkpoint, args.data_dir, device) for path in args.runs]
    for run, label in zip(runs, common.unique_labels(runs), strict=True):
        run.label = label
        require_units(run.network, label)  # fail before any data is read
    out = common.output_dir(args.out or runs[0].run_dir / "analysis")
    total = sum(evaluations(run, args.random_k, args.samples) for run in runs)
    results = []
    with common.progress_bar(total, "lesion", disable=args.no_progress) as advance:
        for run in runs:
            results.append(
                lesion_study(
                    run,
                    args.split,
                    args.limit,
                    args.random_k,
                    args.samples,
                    args.seed,
                    args.batch_size,
                    progress=advance,
                )
            )
    print(markdown(results))
    written = [
        common.write_json(out / f"{args.name}.json", {"results": results}),
        common.write_csv(out / f"{args.name}.csv", csv_rows(results)),
        plot(results, out / f"{args.name}.png"),
    ]
    for path in written:
        print(f"wrote {path}")
    return 0
