"""``ablate visualize``: first-layer filters and class activation maps of a trained run.

    ablate visualize runs/resnet_depth/short/resnet20/seed_0 --images 8 --out docs/analysis
    ablate visualize runs/quickstart_fast/version_0 --wandb     # also log the pictures to W&B

Filters: the weights of the first convolution (the one that reads the image, or ``--layer``), one
tile per output channel, each rescaled to [0, 1] on its own (RGB when it reads three channels).

Class activation maps (Zhou et al. 2016, "Learning Deep Features for Discriminative
Localization", https://arxiv.org/abs/1512.04150): for a network whose head is global average
pooling and then at most one linear layer, the map of class ``c`` is ``M_c = Σ_k w_ck f_k``, the
last feature maps ``f = forward_features(x)`` weighted by the linear layer's row ``c`` (ResNet,
GoogLeNet); where the last convolution outputs one map per class and the head only averages them
(NiN, All-CNN) those maps are the class maps themselves. Which case applies is checked
numerically against ``forward_head`` on the images, so a network whose head does anything else
(VGG and AlexNet's fully connected stacks) is refused with a message rather than drawn wrong.
The maps are upsampled (bilinear) to the image and each rescaled to [0, 1].
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from experiments.analysis import common


def first_conv(network: nn.Module, name: str | None = None) -> tuple[str, nn.Conv2d]:
    """``(name, module)`` of the convolution ``name``, or of the first one reading the input."""
    convs = [(n, m) for n, m in network.named_modules() if isinstance(m, nn.Conv2d)]
    if name is not None:
        found = dict(convs).get(name)
        if found is None:
            raise KeyError(f"no convolution named {name!r}; the first ones are {', '.join(n for n, _ in convs[:5])}")
        return name, found
    if not convs:
        raise ValueError(f"{type(network).__name__} has no Conv2d layer to draw")
    in_chans = getattr(network, "in_chans", None)
    reading_input = [(n, m) for n, m in convs if m.in_channels == in_chans]
    return (reading_input or convs)[0]


def filter_tiles(weight: torch.Tensor) -> torch.Tensor:
    """``(out, in, k, k)`` weights -> ``(out, 3 or 1, k, k)`` tiles, each rescaled to [0, 1] alone."""
    tiles = weight.detach().float().cpu()
    if tiles.shape[1] not in (1, 3):
        tiles = tiles.mean(dim=1, keepdim=True)  # no colour to show: the mean over input channels
    low = tiles.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
    high = tiles.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    return (tiles - low) / (high - low).clamp_min(1e-12)


def linear_head(network: nn.Module, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
    """The weight ``(classes, channels)`` of a linear layer that, applied to the average-pooled
    features, reproduces ``logits``; None if no linear layer does."""
    pooled = features.mean(dim=(2, 3))
    for module in reversed(list(network.modules())):
        if (
            isinstance(module, nn.Linear)
            and module.in_features == features.shape[1]
            and module.out_features == logits.shape[1]
        ):
            if torch.allclose(module(pooled), logits, rtol=1e-3, atol=1e-4):
                return module.weight.detach()
    return None


@torch.no_grad()
def class_activation_maps(network: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(maps (N, classes, h, w), logits (N, classes), kind)`` for a global-average-pooled network.

    ``kind`` is ``"linear"`` (maps weighted by the classifier, Zhou et al. 2016) or ``"class_maps"``
    (the last convolution's per-class maps, NiN / All-CNN).
    """
    name = type(network).__name__
    if not (hasattr(network, "forward_features") and hasattr(network, "forward_head")):
        raise ValueError(f"{name} has no forward_features/forward_head: class activation maps need both")
    network.eval()
    features = network.forward_features(images)
    logits = network.forward_head(features)
    logits = logits.logits if hasattr(logits, "logits") else logits
    if features.dim() != 4:
        raise ValueError(
            f"no class activation maps for {name}: forward_features returns shape "
            f"{tuple(features.shape)}, not feature maps"
        )
    if features.shape[1] == logits.shape[1] and torch.allclose(features.mean(dim=(2, 3)), logits, rtol=1e-3, atol=1e-4):
        return features, logits, "class_maps"
    weight = linear_head(network, features, logits)
    if weight is None:
        raise ValueError(
            f"no class activation maps for {name}: its head is not global average pooling followed by at "
            "most one linear layer (Zhou et al. 2016 need exactly that; e.g. VGG's and AlexNet's heads are not)"
        )
    return torch.einsum("kc,nchw->nkhw", weight, features), logits, "linear"


def _unit(maps: torch.Tensor) -> torch.Tensor:
    low = maps.flatten(1).min(dim=1).values.view(-1, 1, 1)
    high = maps.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return (maps - low) / (high - low).clamp_min(1e-12)


def displayable(images: torch.Tensor) -> torch.Tensor:
    """Loader images as ``(N, H, W, 3 or 1)`` floats in [0, 1]: uint8 / 255, anything else rescaled."""
    images = images.detach().cpu()
    shown = (
        images.float() / 255 if images.dtype == torch.uint8 else _unit(images.float().flatten(1, 2)).view(images.shape)
    )
    return shown.permute(0, 2, 3, 1)


def plot_filters(weight: torch.Tensor, title: str, path: Path) -> Path:
    from torchvision.utils import make_grid

    plt = common.pyplot()
    tiles = filter_tiles(weight)
    columns = math.ceil(math.sqrt(len(tiles)))
    grid = make_grid(tiles, nrow=columns, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()
    fig, ax = plt.subplots(figsize=(4.2, 4.4))
    ax.imshow(
        grid if tiles.shape[1] == 3 else grid[..., 0],
        cmap=None if tiles.shape[1] == 3 else "gray",
        interpolation="nearest",
    )
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return common.save_figure(fig, path)


def plot_cams(
    shown: torch.Tensor,
    maps: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    classes: list[str],
    title: str,
    path: Path,
) -> Path:
    """Columns are images; rows: the image, the map of the predicted class, the map of the true class."""
    plt = common.pyplot()
    count = len(shown)
    size = shown.shape[1:3]
    upsampled = F.interpolate(maps.float().cpu(), size=tuple(size), mode="bilinear", align_corners=False)
    predicted = probs.argmax(dim=1)
    fig, axes = plt.subplots(3, count, figsize=(1.45 * count, 4.9), squeeze=False)
    for column in range(count):
        image = shown[column].numpy()
        image = image[..., 0] if image.shape[-1] == 1 else image
        pred, true = int(predicted[column]), int(labels[column])
        panels = [
            (None, f"{classes[true]}"),
            (pred, f"pred {classes[pred]} {100 * float(probs[column, pred]):.0f}%"),
            (true, f"true {classes[true]} {100 * float(probs[column, true]):.0f}%"),
        ]
        for row, (class_index, caption) in enumerate(panels):
            ax = axes[row][column]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="bilinear")
            if class_index is not None:
                cam = _unit(upsampled[column, class_index][None])[0].numpy()
                ax.imshow(cam, cmap="jet", alpha=0.45, interpolation="bilinear")
            ax.set_title(caption, fontsize=6.5, color="darkred" if row == 1 and pred != true else "black")
            ax.set_axis_off()
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return common.save_figure(fig, path, dpi=120)


def log_to_wandb(pictures: dict[str, Path], summary: dict[str, Any], out: Path, project: str, name: str) -> str:
    """Log the pictures as ``wandb.Image``s to a new W&B run; offline (``out/wandb``) without a key."""
    import wandb

    from lightning_modules.loggers import wandb_credentials_available

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_available() else "offline")
    run = wandb.init(
        project=project,
        name=name,
        job_type="analysis",
        dir=str(Path(out).resolve()),
        mode=mode,
        config=common.plain(summary),
        reinit="finish_previous",
    )
    try:
        run.log({f"visualize/{key}": wandb.Image(str(path)) for key, path in pictures.items()})
        return str(Path(run.dir).parent)
    finally:
        run.finish()


def build_parser() -> argparse.ArgumentParser:
    parser = common.tool_parser("visualize", __doc__)
    parser.add_argument("run", help="run directory or checkpoint")
    parser.add_argument("--images", type=int, default=8, help="test images to draw maps for")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image draw (-1: the first ones)")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test", help="split the images come from")
    parser.add_argument("--layer", default=None, help="convolution whose filters to draw (default: the first)")
    parser.add_argument("--no-cam", action="store_true", help="filters only")
    parser.add_argument("--wandb", action="store_true", help="also log the pictures to W&B (offline without a key)")
    parser.add_argument("--wandb-project", default="cnn-ablations", help="W&B project")
    parser.add_argument("--name", default="visualize", help="file name prefix")
    common.add_run_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.images < 1:
        raise ValueError(f"--images must be at least 1, got {args.images}")
    run = common.load_run(args.run, args.checkpoint, args.data_dir, common.resolve_device(args.device))
    network = run.network
    out = common.output_dir(args.out or run.run_dir / "analysis")
    layer, conv = first_conv(network, args.layer)
    summary: dict[str, Any] = {
        "run": run.label,
        "run_dir": run.run_dir,
        "checkpoint": run.checkpoint,
        "filters": {
            "layer": layer,
            "shape": list(conv.weight.shape),
            "norms": conv.weight.detach().flatten(1).norm(dim=1).tolist(),
        },
    }
    pictures = {
        "filters": plot_filters(
            conv.weight,
            f"{run.label}: {layer}, {conv.out_channels} filters "
            f"{conv.kernel_size[0]}x{conv.kernel_size[1]}x{conv.in_channels}",
            out / f"{args.name}_filters.png",
        )
    }
    if not args.no_cam:
        dataset = common.split_dataset(run.datamodule, args.split)
        indices = common.subset_indices(len(dataset), args.images, None if args.seed < 0 else args.seed)
        # The index reported is the image's position in the official split (the data modules hold
        # evaluation splits in class-interleaved order, remembering each image's ``source_index``).
        source = getattr(dataset, "source_index", None)
        positions = indices if source is None else source[indices]
        raw, labels = next(iter(common.raw_batches(run.datamodule, args.split, indices, len(indices))))
        images, labels = common.model_input(run.datamodule, raw, labels, next(network.parameters()).device)
        maps, logits, kind = class_activation_maps(network, images)
        probs = logits.softmax(dim=1).cpu()
        classes = list(getattr(run.datamodule, "classes", None) or [str(i) for i in range(probs.shape[1])])
        labels = labels.cpu()
        source = "classifier-weighted features" if kind == "linear" else "the last convolution's class maps"
        pictures["cam"] = plot_cams(
            displayable(raw),
            maps,
            labels,
            probs,
            classes,
            f"{run.label}: class activation maps ({source}) of the predicted (middle) and true class (bottom)",
            out / f"{args.name}_cam.png",
        )
        summary["cam"] = {
            "kind": kind,
            "split": args.split,
            "map_size": list(maps.shape[-2:]),
            "images": [
                {
                    "index": int(index),
                    "label": classes[int(label)],
                    "predicted": classes[int(p.argmax())],
                    "probability": float(p.max()),
                }
                for index, label, p in zip(positions, labels, probs, strict=True)
            ],
        }
    summary["pictures"] = {key: path.name for key, path in pictures.items()}
    if args.wandb:
        summary["wandb"] = log_to_wandb(pictures, summary, out, args.wandb_project, f"visualize-{run.label}")
    written = [common.write_json(out / f"{args.name}.json", summary), *pictures.values()]
    for path in written:
        print(f"wrote {path}")
    if args.wandb:
        print(f"logged to W&B: {summary['wandb']}")
    return 0
