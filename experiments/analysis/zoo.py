"""``ablate zoo``: the registry as a table of parameters and multiply-adds.

Multiply-adds are counted by ``torch.utils.flop_counter`` at each network's native input size
(FLOPs / 2), on the meta device, so even VGG-19 costs no memory or compute to count.

    ablate zoo --format md
    ablate zoo --pattern "resnet*" --format json
    ablate zoo --plot zoo.png        # parameters vs operations (Canziani et al. 2016, Fig. 2)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

import architectures
from architectures import count_params, create_model, list_models, model_info


def multiply_adds(name: str, num_classes: int | None = None) -> int:
    """Multiply-adds of one forward pass of ``name`` on a single image of its native size."""
    info = model_info(name)
    with torch.device("meta"):
        net = create_model(name, num_classes=num_classes or info.num_classes).eval()
        image = torch.empty(1, *info.input_size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(image)
    return counter.get_total_flops() // 2


def zoo_rows(pattern: str = "*", family: str | None = None, with_macs: bool = True) -> list[dict]:
    """One dict per registered network: name, family, paper, params, input, macs, torchvision."""
    rows = []
    for name in list_models(pattern, family):
        info = model_info(name)
        with torch.device("meta"):
            params = count_params(create_model(name, num_classes=info.num_classes))
        rows.append(
            {
                "name": name,
                "family": info.family,
                "paper": info.paper,
                "params": params,
                "params_stated": info.params,
                "num_classes": info.num_classes,
                "input": "x".join(str(d) for d in info.input_size),
                "macs": multiply_adds(name) if with_macs else None,
                "torchvision": info.torchvision or "",
            }
        )
    return rows


def _markdown(rows: list[dict]) -> str:
    lines = [
        "| name | family | params | multiply-adds | input | classes | torchvision | paper |",
        "| --- | --- | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for row in rows:
        macs = f"{row['macs'] / 1e6:,.1f} M" if row["macs"] is not None else ""
        lines.append(
            f"| {row['name']} | {row['family']} | {row['params']:,} | {macs} | {row['input']} | "
            f"{row['num_classes']} | {row['torchvision']} | {row['paper']} |"
        )
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["name"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot(rows: list[dict], path: str) -> None:
    """Parameters against multiply-adds, one labelled point per network, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 7))
    families = sorted({row["family"] for row in rows})
    colours = plt.get_cmap("tab20")
    for index, family in enumerate(families):
        members = [row for row in rows if row["family"] == family and row["macs"]]
        ax.scatter(
            [r["macs"] / 1e9 for r in members],
            [r["params"] / 1e6 for r in members],
            color=colours(index % 20),
            label=family,
            s=30,
        )
        for row in members:
            ax.annotate(row["name"], (row["macs"] / 1e9, row["params"] / 1e6), fontsize=6, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("multiply-adds per image at native input size (G)")
    ax.set_ylabel("parameters (M)")
    ax.set_title("The zoo: parameters vs operations (after Canziani et al. 2016)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ablate zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=("md", "csv", "json"), default="md", help="output format")
    parser.add_argument("--pattern", default="*", help="shell-style name filter, e.g. 'resnet*'")
    parser.add_argument("--family", default=None, help="only this family")
    parser.add_argument("--no-macs", action="store_true", help="skip counting multiply-adds (faster)")
    parser.add_argument("--plot", default=None, metavar="PNG", help="also write a params-vs-operations chart")
    args = parser.parse_args(argv)
    if args.plot:  # before counting every network's operations (a minute), not after
        from lightning_modules.output_folders import why_unwritable

        reason = why_unwritable(os.path.dirname(os.path.abspath(args.plot)))
        if reason:
            raise ValueError(f"cannot write --plot {args.plot}: {reason}; choose another path")
    rows = zoo_rows(args.pattern, args.family, with_macs=not args.no_macs)
    if not rows:  # an error in ablate's one-line form, like every other (docs/reliability.md, "One line, always")
        family = f" in --family {args.family!r}" if args.family else ""
        raise KeyError(
            f"no registered network matches --pattern {args.pattern!r}{family} "
            f"(of {len(architectures.list_models())}); `ablate zoo` lists them all"
        )
    text = {"md": _markdown, "csv": _csv, "json": lambda r: json.dumps(r, indent=2)}[args.format](rows)
    print(text)
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
