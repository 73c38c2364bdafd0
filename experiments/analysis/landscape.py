"""``ablate landscape``: the loss surface around trained weights, after Li et al. 2018,
"Visualizing the Loss Landscape of Neural Nets" (https://arxiv.org/abs/1712.09913).

    ablate landscape runs/resnet_depth/short/resnet20/seed_0 runs/resnet_depth/short/plain20/seed_0 \\
        --steps 21 --span 1 --subset 1000 --surface --out docs/analysis

Two random Gaussian directions ``d1``, ``d2`` with the shapes of the weights are *filter-normalised*
(Sec. 4): every filter of ``d`` (a slice along dim 0 of a conv or linear weight) is rescaled to the
norm of the same filter of the trained weights ``θ``, so that a step of 1 means "as large as the
weights themselves" in every layer, whatever its scale. The loss ``L(θ + α d1 + β d2)`` is then
evaluated on a grid ``α, β ∈ [-span, span]`` on a fixed (seeded) subset of the training split, seen
through the eval transforms; the 1-D curve is the grid's row ``β = 0``.

Batch normalisation, as the paper does it (Sec. 4, and ``--xignore biasbn`` of its code): the
directions are zero for BN scales and shifts and for every other 1-D parameter (biases), so
those stay as trained; the network is evaluated in eval mode, so BN uses its running statistics
as trained (not re-estimated at each perturbed point). The loss is the classifier's own
objective on the main head (cross-entropy, with its label smoothing if it trained with one).
Results are deterministic given ``--seed`` (directions and subset).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from experiments.analysis import common


def filter_normalized_direction(network: nn.Module, generator: torch.Generator) -> list[torch.Tensor]:
    """A random direction in weight space, filter-normalised to ``network``'s weights.

    Every parameter with two or more dimensions gets ``N(0, 1)`` entries rescaled filter by filter
    (slices along dim 0) to the norms of the weights' filters; 1-D parameters (BN scales and shifts,
    biases) get zeros, i.e. they are not perturbed (Li et al. 2018, Sec. 4).

    Args:
        network: The trained network.
        generator: CPU generator the Gaussian entries are drawn from (the direction's seed).
    """
    direction = []
    for param in network.parameters():
        weights = param.detach()
        if weights.dim() <= 1:
            direction.append(torch.zeros_like(weights))
            continue
        raw = torch.randn(weights.shape, generator=generator, dtype=torch.float32).to(weights)
        raw_norms = raw.flatten(1).norm(dim=1).clamp_min(1e-10)
        weight_norms = weights.flatten(1).norm(dim=1)
        scale = (weight_norms / raw_norms).view(-1, *([1] * (weights.dim() - 1)))
        direction.append(raw * scale)
    return direction


def grid_axis(span: float, steps: int) -> np.ndarray:
    """``steps`` evenly spaced values in ``[-span, span]`` whose middle one is exactly 0."""
    if steps < 3 or steps % 2 == 0:
        raise ValueError(f"--steps must be odd and at least 3 so the trained weights lie on the grid, got {steps}")
    if span <= 0:
        raise ValueError(f"--span must be positive, got {span}")
    half = (steps - 1) // 2
    return span * (np.arange(steps) - half) / half


@torch.no_grad()
def loss_surface(
    module: Any,
    network: nn.Module,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    directions: list[list[torch.Tensor]],
    axis: np.ndarray,
    progress: Any = None,
) -> dict[str, np.ndarray]:
    """Loss and accuracy at ``θ + Σ_i c_i d_i`` for every point ``c`` of the grid ``axis^len(directions)``.

    The weights are restored afterwards; at the origin they are exactly ``θ``, so the value there is
    the model's own loss on ``data``.

    Returns:
        ``{"loss": array, "acc": array}`` of shape ``(len(axis),) * len(directions)``; for two
        directions, index ``[i, j]`` is ``α = axis[i]`` along the first, ``β = axis[j]`` along the second.
    """
    params = list(network.parameters())
    origin = [p.detach().clone() for p in params]
    shape = (len(axis),) * len(directions)
    loss, acc = np.zeros(shape), np.zeros(shape)
    try:
        for index in np.ndindex(*shape):
            coefficients = [float(axis[i]) for i in index]
            for param, theta, *steps in zip(params, origin, *directions, strict=True):
                point = theta.clone()
                for coefficient, step in zip(coefficients, steps, strict=True):
                    if coefficient != 0.0:
                        point.add_(step, alpha=coefficient)
                param.copy_(point)
            result = common.evaluate(module, network, data)
            loss[index], acc[index] = result["loss"], result["acc"]
            if progress is not None:
                progress()
    finally:
        for param, theta in zip(params, origin, strict=True):
            param.copy_(theta)
    return {"loss": loss, "acc": acc}


def landscape(
    run: common.LoadedRun,
    steps: int = 21,
    span: float = 1.0,
    subset: int = 1000,
    seed: int = 0,
    dims: int = 2,
    batch_size: int = 500,
    progress: Any = None,
) -> dict[str, Any]:
    """The loss surface of one loaded run; see the module docstring.

    Args:
        run: A run loaded with ``common.load_run``.
        steps: Grid points per axis (odd, so the trained weights are the middle point).
        span: The grid covers ``[-span, span]`` along each direction.
        subset: Training images the loss is averaged over (a seeded draw; 0 = all).
        seed: Seed of the directions and of the subset.
        dims: 2 for the surface (and its ``β = 0`` row as the 1-D curve), 1 for the curve alone.
        batch_size: Images per forward pass.
        progress: Called once per evaluated grid point.
    """
    if dims not in (1, 2):
        raise ValueError(f"--dims must be 1 or 2, got {dims}")
    axis = grid_axis(span, steps)
    network = run.network
    device = next(network.parameters()).device
    train = common.split_dataset(run.datamodule, "train")
    indices = common.subset_indices(len(train), subset, seed)
    data = common.cached_batches(run.datamodule, "train", indices, batch_size, device)
    generator = torch.Generator().manual_seed(seed)
    directions = [filter_normalized_direction(network, generator) for _ in range(dims)]
    started = time.time()
    surface = loss_surface(run.module, network, data, directions, axis, progress)
    middle = (steps - 1) // 2
    curve = {key: values[:, middle] if dims == 2 else values for key, values in surface.items()}
    result: dict[str, Any] = {
        "label": run.label,
        "run_dir": run.run_dir,
        "checkpoint": run.checkpoint,
        "axis": axis,
        "subset": len(indices),
        "origin_loss": float(curve["loss"][middle]),
        "origin_acc": float(curve["acc"][middle]),
        "loss_1d": curve["loss"],
        "acc_1d": curve["acc"],
        "seconds": round(time.time() - started, 1),
    }
    if dims == 2:
        result["loss_2d"], result["acc_2d"] = surface["loss"], surface["acc"]
    return result


# ----- pictures ---------------------------------------------------------------------------------


def _clip(results: list[dict[str, Any]], vmax: float) -> float:
    """The loss the pictures clip at: ``vmax``, unless every value lies above it (a diverged run)."""
    key = "loss_2d" if "loss_2d" in results[0] else "loss_1d"
    low = min(float(np.min(r[key])) for r in results)
    high = max(float(np.max(r[key])) for r in results)
    return vmax if low < vmax else high


def _levels(results: list[dict[str, Any]], clip: float) -> np.ndarray:
    low = min(float(np.min(r["loss_2d"])) for r in results)
    high = min(clip, max(float(np.max(r["loss_2d"])) for r in results))
    return np.linspace(low, max(high, low + 1e-3), 21)


def plot_contours(results: list[dict[str, Any]], path: Path, vmax: float) -> Path:
    """One contour panel per run, the same levels in all, the trained weights marked at (0, 0)."""
    plt = common.pyplot()
    vmax = _clip(results, vmax)
    levels = _levels(results, vmax)
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.2), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        axis = result["axis"]
        grid_a, grid_b = np.meshgrid(axis, axis, indexing="ij")
        lines = ax.contour(
            grid_a, grid_b, np.minimum(result["loss_2d"], vmax), levels=levels, cmap="viridis", linewidths=0.9
        )
        ax.clabel(lines, lines.levels[::4], fontsize=6, fmt="%.2f")
        ax.plot([0], [0], marker="*", color="crimson", markersize=9)
        ax.set_title(f"{result['label']}  (loss at θ: {result['origin_loss']:.3f})", fontsize=9)
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
        ax.set_aspect("equal")
    fig.suptitle("Training loss around the trained weights, filter-normalised directions (Li et al. 2018)", fontsize=9)
    fig.tight_layout()
    return common.save_figure(fig, path)


def plot_curves(results: list[dict[str, Any]], path: Path, vmax: float) -> Path:
    """Loss (solid) and accuracy (dashed, right axis) along direction 1, every run in one panel."""
    plt = common.pyplot()
    vmax = _clip(results, vmax)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    accuracy_axis = ax.twinx()
    colours = plt.get_cmap("tab10")
    for index, result in enumerate(results):
        colour = colours(index % 10)
        ax.plot(result["axis"], np.minimum(result["loss_1d"], vmax), color=colour, label=f"{result['label']} loss")
        accuracy_axis.plot(
            result["axis"],
            100 * np.asarray(result["acc_1d"]),
            color=colour,
            linestyle="--",
            label=f"{result['label']} accuracy",
        )
    ax.set_xlabel("α (direction 1)")
    ax.set_ylabel("training loss (subset)")
    accuracy_axis.set_ylabel("training accuracy (%, dashed)")
    accuracy_axis.set_ylim(0, 100)
    handles = ax.get_legend_handles_labels()[0] + accuracy_axis.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper center")
    ax.set_title("1-D loss along a filter-normalised direction (Li et al. 2018)", fontsize=9)
    fig.tight_layout()
    return common.save_figure(fig, path)


def plot_surfaces(results: list[dict[str, Any]], path: Path, vmax: float) -> Path:
    """3-D surface per run (loss clipped at ``vmax``), the paper's Fig. 5 view."""
    plt = common.pyplot()
    vmax = _clip(results, vmax)
    fig = plt.figure(figsize=(4.8 * len(results), 4.2))
    for index, result in enumerate(results, start=1):
        ax = fig.add_subplot(1, len(results), index, projection="3d")
        grid_a, grid_b = np.meshgrid(result["axis"], result["axis"], indexing="ij")
        ax.plot_surface(
            grid_a, grid_b, np.minimum(result["loss_2d"], vmax), cmap="viridis", linewidth=0, antialiased=True
        )
        ax.set_title(result["label"], fontsize=9)
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        ax.set_zlabel("loss")
        ax.view_init(elev=35, azim=-60)
    fig.tight_layout()
    return common.save_figure(fig, path)


def _rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        axis = result["axis"]
        if "loss_2d" in result:
            for i, j in np.ndindex(*result["loss_2d"].shape):
                rows.append(
                    {
                        "run": result["label"],
                        "alpha": float(axis[i]),
                        "beta": float(axis[j]),
                        "loss": float(result["loss_2d"][i, j]),
                        "acc": float(result["acc_2d"][i, j]),
                    }
                )
        else:
            for i, alpha in enumerate(axis):
                rows.append(
                    {
                        "run": result["label"],
                        "alpha": float(alpha),
                        "beta": 0.0,
                        "loss": float(result["loss_1d"][i]),
                        "acc": float(result["acc_1d"][i]),
                    }
                )
    return rows


# ----- command ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = common.tool_parser("landscape", __doc__)
    parser.add_argument("runs", nargs="+", help="run directories or checkpoints (several: side by side)")
    parser.add_argument("--steps", type=int, default=21, help="grid points per direction (odd)")
    parser.add_argument("--span", type=float, default=1.0, help="grid covers [-span, span] per direction")
    parser.add_argument("--subset", type=int, default=1000, help="training images the loss averages over (0 = all)")
    parser.add_argument("--dims", type=int, choices=(1, 2), default=2, help="2-D surface + 1-D slice, or 1-D only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the directions and the subset")
    parser.add_argument("--surface", action="store_true", help="also draw the 3-D surface (landscape_3d.png)")
    parser.add_argument("--vmax", type=float, default=10.0, help="clip the loss at this value in the pictures")
    parser.add_argument("--name", default="landscape", help="file name prefix")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_run_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    grid_axis(args.span, args.steps)  # bad settings fail before any loading
    device = common.resolve_device(args.device)
    runs = [common.load_run(path, args.checkpoint, args.data_dir, device) for path in args.runs]
    labels = common.unique_labels(runs)
    out = common.output_dir(args.out or runs[0].run_dir / "analysis")
    points = args.steps**args.dims
    results = []
    with common.progress_bar(len(runs) * points, "landscape", disable=args.no_progress) as advance:
        for run, label in zip(runs, labels, strict=True):
            run.label = label
            results.append(
                landscape(
                    run, args.steps, args.span, args.subset, args.seed, args.dims, args.batch_size, progress=advance
                )
            )
    settings = {
        "steps": args.steps,
        "span": args.span,
        "subset": args.subset,
        "seed": args.seed,
        "dims": args.dims,
        "loss": "the classifier's objective on the main head",
        "directions": "Gaussian, filter-normalised (Li et al. 2018, Sec. 4); zero for 1-D parameters "
        "(BN scale/shift, biases)",
        "batch_norm": "BN parameters not perturbed; running statistics as trained (eval mode)",
        "data": "seeded subset of the training split, eval transforms",
    }
    written = [
        common.write_json(out / f"{args.name}.json", {"settings": settings, "runs": results}),
        common.write_csv(out / f"{args.name}.csv", _rows(results)),
        plot_curves(results, out / f"{args.name}_1d.png", args.vmax),
    ]
    if args.dims == 2:
        written.append(plot_contours(results, out / f"{args.name}_2d.png", args.vmax))
        if args.surface:
            written.append(plot_surfaces(results, out / f"{args.name}_3d.png", args.vmax))
    for result in results:
        print(
            f"{result['label']}: loss at the trained weights {result['origin_loss']:.4f} "
            f"(accuracy {100 * result['origin_acc']:.2f}%) on {result['subset']} training images; "
            f"grid {args.steps}^{args.dims} over ±{args.span} in {result['seconds']:.0f} s"
        )
    for path in written:
        print(f"wrote {path}")
    return 0
