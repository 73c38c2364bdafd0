"""``ablate bench``: how much this template costs against plain PyTorch, measured side by side.

    ablate bench overhead    [--steps 60 --repeats 3]         # ablate fit vs a plain loop, same batches
    ablate bench data        [--datasets mnist,cifar,folder]  # loader images/s vs training images/s
    ablate bench throughput  [--pattern 'resnet*']            # per architecture: images/s, memory, MFU
    ablate bench time-to-acc [--target 0.85]                  # ResNet-20 on CIFAR-10 to a test accuracy

Each comparison runs its two sides in a process pair, taking turns (side_by_side.py), and reports
medians and the ratio. Figures print as Markdown and, with ``--json FILE``, as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from experiments.benchmarks import overhead, throughput, time_to_acc
from lightning_modules.files import write_text_atomic


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
    lines = [
        f"### {result['benchmark']} — {result['machine']}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["data"]:
        # The data benchmark parses its own flags; argparse.REMAINDER would reject the rest when it starts with "--".
        from experiments.benchmarks import data

        data.main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="ablate bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="which", required=True)
    parsers = [overhead.add_parser(sub), throughput.add_parser(sub), time_to_acc.add_parser(sub)]
    # Listed for --help only: main hands "data ..." to the data benchmark before parsing.
    sub.add_parser(
        "data",
        help="loader images/s vs training images/s: MNIST, CIFAR-10, a JPEG folder (experiments/benchmarks/data.py)",
        add_help=False,
    )
    for sp in parsers:
        sp.add_argument("--format", choices=("md", "json"), default="md", help="what to print")
        sp.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    run = {
        "overhead": overhead.bench_overhead,
        "throughput": throughput.bench_throughput,
        "time-to-acc": time_to_acc.bench_time_to_acc,
    }[args.which]
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the figures alone (e.g. into jq)
        result = run(args)
    print(json.dumps(result, indent=2) if args.format == "json" else markdown(result))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2))  # a record: whole or not at all
    return 0
