"""``ablate shapes``: per layer, output shape, receptive field, jump, parameters and multiply-adds.

    ablate shapes resnet20                      # any registered network, at its native input size
    ablate shapes inception_mnist --all         # every module call, the branches of each Inception block
    ablate shapes runs/resnet_depth/short/resnet20/seed_0 --format csv
    ablate shapes --conv 28x28x192 --out-chs 32 --kernel 5                  # 120,422,400 multiply-adds
    ablate shapes --conv 28x28x192 --out-chs 32 --kernel 5 --bottleneck 16  # 12,443,648
    ablate shapes --stack 3,3,3 --chs 64        # three 3x3 convs see 7x7, with fewer weights than one 7x7

Output size of a convolution or pooling layer (the lecture's formula): ``o = floor((i + 2p - k) / s) + 1``
with ``k`` the dilated kernel ``d (k - 1) + 1`` (``ceil`` for pools built with ``ceil_mode``).
Receptive field ``r`` and jump ``j`` (the distance in input pixels between neighbouring outputs,
i.e. the cumulative stride) follow the standard recurrence ``r_out = r_in + (k - 1) j_in``,
``j_out = j_in s``, from ``r = j = 1`` at the input. They are carried on every tensor of one
forward pass (a ``TorchFunctionMode``): convolutions and pooling, functional or modules, apply the
recurrence; element-wise ops and concatenations take the largest field of their inputs (so a
residual sum or an Inception block's concatenation sees its widest branch); strided slicing
multiplies the jump (option A shortcuts) and flattening a map widens the field to the whole map.
Rows are recorded by forward hooks on the modules, so each branch of an Inception block is its
own row. Multiply-adds come from ``torch.utils.flop_counter`` (FLOPs / 2) on the meta device, as
``ablate zoo``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.weak import WeakIdKeyDictionary

from architectures import count_params, create_model, model_info
from experiments.analysis import common

Pair = tuple[int, int]
LAYER_TYPES = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
WINDOWED = {"conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"}
FLATTENING = {"flatten", "view", "reshape"}


def _pair(value: Any) -> Pair:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1])) if value else (1, 1)
    return (int(value), int(value))


def output_size(i: int, k: int, s: int = 1, p: int = 0, d: int = 1, ceil: bool = False) -> int:
    """The lecture's ``o = floor((i + 2p - k) / s) + 1`` with the dilated kernel ``d (k - 1) + 1``.

    With ``ceil`` (pools built with ``ceil_mode``), PyTorch rounds up but drops a last window that
    would start in the right padding.
    """
    span = i + 2 * p - (d * (k - 1) + 1)
    o = (math.ceil(span / s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= i + p:
        o -= 1
    return o


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _argument(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _window(name: str, args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> tuple[Pair, Pair, Pair]:
    """``(kernel, stride, dilation)`` of a convolution or pooling call, per axis."""
    if name == "conv2d":
        kernel = tuple(args[1].shape[-2:])
        return kernel, _pair(_argument(args, kwargs, 3, "stride", 1)), _pair(_argument(args, kwargs, 5, "dilation", 1))
    if name.startswith("adaptive"):
        size_in, size_out = args[0].shape[-2:], out.shape[-2:]
        stride = tuple(i // o if o > 1 else i for i, o in zip(size_in, size_out, strict=True))
        kernel = tuple(i - (o - 1) * s for i, o, s in zip(size_in, size_out, stride, strict=True))
        return kernel, stride, (1, 1)
    kernel = _pair(_argument(args, kwargs, 1, "kernel_size", 1))
    stride = _argument(args, kwargs, 2, "stride", None)
    dilation = _argument(args, kwargs, 4, "dilation", 1) if name == "max_pool2d" else 1
    return kernel, _pair(stride) if stride not in (None, [], ()) else kernel, _pair(dilation)


class ReceptiveFieldMode(TorchFunctionMode):
    """Carries ``(r, j)`` per axis on every tensor of a forward pass (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def mark_input(self, tensor: torch.Tensor) -> None:
        self.fields[tensor] = ((1, 1), (1, 1))

    def field(self, tensor: torch.Tensor) -> tuple[Pair, Pair] | None:
        return self.fields.get(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        known = [self.fields[t] for t in _tensors((args, kwargs)) if t in self.fields]
        if not known:
            return out
        r = tuple(max(field[0][axis] for field in known) for axis in (0, 1))
        j = tuple(max(field[1][axis] for field in known) for axis in (0, 1))
        name = getattr(func, "__name__", "")
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        result = out[0] if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor) else out
        if name in WINDOWED and first is not None and isinstance(result, torch.Tensor):
            kernel, stride, dilation = _window(name, args, kwargs, result)
            r = tuple(r[a] + dilation[a] * (kernel[a] - 1) * j[a] for a in (0, 1))
            j = tuple(j[a] * stride[a] for a in (0, 1))
        elif name == "__getitem__" and first is not None and first.dim() == 4:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            spatial = [item for item in index if item is not Ellipsis][2:4] if Ellipsis not in index else index[-2:]
            steps = [item.step or 1 if isinstance(item, slice) else 1 for item in spatial] + [1, 1]
            j = (j[0] * steps[0], j[1] * steps[1])
        elif name in FLATTENING and first is not None and first.dim() == 4 and isinstance(result, torch.Tensor):
            if result.dim() < 4 and first.shape[-1] * first.shape[-2] > 1:
                r = tuple(r[a] + (first.shape[2 + a] - 1) * j[a] for a in (0, 1))
        for tensor in _tensors(out):
            self.fields[tensor] = (r, j)
        return out


def _size(pair: Pair) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _formula(module: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> str:
    """``⌊(i+2p−k)/s⌋+1 = o`` for the height of a conv or pooling module."""
    padding = getattr(module, "padding", 0)
    if isinstance(padding, str) or len(in_shape) != 4 or len(out_shape) != 4:
        return ""
    k = _pair(module.kernel_size)[0]
    s = _pair(module.stride if module.stride not in (None, [], ()) else module.kernel_size)[0]
    p, d = _pair(padding)[0], _pair(getattr(module, "dilation", 1))[0]
    ceil = bool(getattr(module, "ceil_mode", False))
    i, o = in_shape[2], output_size(in_shape[2], k, s, p, d, ceil)
    k_text = f"{d}·({k}−1)+1" if d > 1 else str(k)
    brackets = ("⌈", "⌉") if ceil else ("⌊", "⌋")
    text = f"{brackets[0]}({i}+2·{p}−{k_text})/{s}{brackets[1]}+1 = {o}"
    return text if o == out_shape[2] else f"{text} (actual {out_shape[2]})"


def _shape(value: Any) -> list[int]:
    tensors = _tensors(value)
    return list(tensors[0].shape[1:]) if tensors else []


def layer_table(
    network: nn.Module, input_size: Sequence[int], depth: int | None = None, show_all: bool = False
) -> dict[str, Any]:
    """Rows of output shape, receptive field, jump, parameters and multiply-adds per module call.

    Runs one forward pass of a single image on the meta device (the network is moved there).

    Args:
        network: Any image network.
        input_size: ``(channels, height, width)``.
        depth: Rows for the modules this many levels deep (``1``: the network's children), their
            parameters and multiply-adds summed over what they contain; None: the leaf modules.
        show_all: With ``depth`` None, every leaf call (ReLU, BN, dropout, ...) instead of only the
            layers that convolve, pool, are linear or change the shape.
    """
    network = network.to("meta").eval()
    names = {module: name for name, module in network.named_modules()}
    rows: list[dict[str, Any]] = []
    mode = ReceptiveFieldMode()
    counter = FlopCounterMode(display=False)
    started: dict[int, list[int]] = {}

    def selected(name: str, module: nn.Module) -> bool:
        if not name:
            return False
        leaf = next(module.children(), None) is None
        if depth is not None:
            level = name.count(".") + 1
            return level == depth or (leaf and level < depth)
        return leaf and (show_all or isinstance(module, LAYER_TYPES) or not isinstance(module, (nn.Identity,)))

    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        started.setdefault(id(module), []).append(counter.get_total_flops())

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        flops = counter.get_total_flops() - started[id(module)].pop()
        in_shape, out_shape = _shape(args), _shape(output)
        if depth is None and not show_all and not isinstance(module, LAYER_TYPES) and in_shape == out_shape:
            return
        tensors = _tensors(output)
        field = mode.field(tensors[0]) if tensors else None
        row = {
            "layer": names[module],
            "type": type(module).__name__,
            "output": out_shape,
            "rf": list(field[0]) if field else None,
            "jump": list(field[1]) if field else None,
            "params": count_params(module),
            "macs": flops // 2,
            "formula": _formula(module, [1, *in_shape], [1, *out_shape])
            if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))
            else "",
        }
        rows.append(row)

    handles = []
    for name, module in network.named_modules():
        if selected(name, module):
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
    try:
        image = torch.empty(1, *input_size, device="meta")
        with counter, mode, torch.no_grad():
            mode.mark_input(image)
            output = network(image)
    finally:
        for handle in handles:
            handle.remove()
    return {
        "input": list(input_size),
        "output": _shape(output),
        "rows": rows,
        "params": count_params(network),
        "macs": counter.get_total_flops() // 2,
    }


# ----- the lecture's arithmetic -----------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int, int]:
    """``"28x28x192"`` (height x width x channels, the lecture's order) -> ``(192, 28, 28)``."""
    try:
        height, width, channels = (int(part) for part in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"--conv takes HxWxC, e.g. 28x28x192; got {text!r}") from None
    return channels, height, width


def conv_arithmetic(
    input_hwc: str,
    out_chs: int,
    kernel: int,
    stride: int = 1,
    padding: int | None = None,
    bottleneck: int | None = None,
    bias: bool = False,
) -> dict[str, Any]:
    """The Inception lecture's cost of a convolution, with or without a 1x1 bottleneck first.

    Args:
        input_hwc: Input as ``HxWxC``, e.g. ``28x28x192``.
        out_chs: Output channels of the convolution.
        kernel: Its kernel size.
        stride: Its stride.
        padding: Its padding (default ``kernel // 2``, "same" at stride 1).
        bottleneck: Channels of a 1x1 convolution put before it (Szegedy et al. 2014, Fig. 2b).
        bias: Count biases in the parameters (multiply-adds never include them).
    """
    channels, height, width = parse_size(input_hwc)
    if min(out_chs, kernel, stride) < 1 or (bottleneck is not None and bottleneck < 1):
        raise ValueError("--out-chs, --kernel, --stride and --bottleneck must be positive")
    padding = kernel // 2 if padding is None else padding
    layers: list[nn.Module] = []
    if bottleneck:
        layers.append(nn.Conv2d(channels, bottleneck, 1, bias=bias))
    layers.append(nn.Conv2d(bottleneck or channels, out_chs, kernel, stride, padding, bias=bias))
    table = layer_table(nn.Sequential(*layers), (channels, height, width))
    rows, current = [], [channels, height, width]
    for row, layer in zip(table["rows"], layers, strict=True):
        c_out, h_out, w_out = row["output"]
        k_h, k_w = layer.kernel_size
        closed_form = h_out * w_out * c_out * k_h * k_w * layer.in_channels
        if closed_form != row["macs"]:  # the flop counter and H·W·C_out·k·k·C_in must agree
            raise AssertionError(f"flop counter {row['macs']} != closed form {closed_form}")
        rows.append(
            {
                "layer": f"{k_h}x{k_w} conv, {layer.out_channels}",
                "input": _hwc(current),
                "output": _hwc(row["output"]),
                "params": row["params"],
                "macs": row["macs"],
                "product": f"{h_out}·{w_out}·{c_out}·{k_h}·{k_w}·{layer.in_channels}",
            }
        )
        current = row["output"]
    result = {"input": input_hwc, "rows": rows, "macs": table["macs"], "params": table["params"]}
    if bottleneck:
        naive = conv_arithmetic(input_hwc, out_chs, kernel, stride, padding, None, bias)
        result["without_bottleneck"] = {"macs": naive["macs"], "params": naive["params"]}
    return result


def _hwc(chw: Sequence[int]) -> str:
    return f"{chw[1]}x{chw[2]}x{chw[0]}"


def stack_arithmetic(spec: str, chs: int | None = None, size: int = 64) -> dict[str, Any]:
    """Receptive field of stacked convolutions, e.g. ``"3,3"`` (5x5) or ``"3,3,3"`` (7x7); ``k/s`` adds a stride.

    With ``chs`` channels throughout, also the weights of the stack against one convolution as
    large as its receptive field (Simonyan & Zisserman 2014, Sec. 2.3: 27C² against 49C²).
    """
    layers = []
    for item in spec.split(","):
        kernel, _, stride = item.strip().partition("/")
        try:
            layers.append((int(kernel), int(stride or 1)))
        except ValueError:
            raise ValueError(f"--stack takes kernel sizes like 3,3,3 or 7/2,3/2; got {spec!r}") from None
    width = chs or 1
    network = nn.Sequential(*(nn.Conv2d(width, width, k, s, k // 2, bias=False) for k, s in layers))
    table = layer_table(network, (width, size, size))
    rows = [
        {
            "layer": f"{k}x{k} conv" + (f", stride {s}" if s > 1 else ""),
            "rf": row["rf"][0],
            "jump": row["jump"][0],
            "params": row["params"] if chs else None,
        }
        for (k, s), row in zip(layers, table["rows"], strict=True)
    ]
    result: dict[str, Any] = {"stack": spec, "rows": rows, "rf": rows[-1]["rf"], "jump": rows[-1]["jump"]}
    if chs:
        result["params"] = table["params"]
        result["single_conv_params"] = result["rf"] ** 2 * chs * chs
    return result


# ----- report -----------------------------------------------------------------------------------


def markdown(table: dict[str, Any], title: str) -> str:
    lines = [
        f"{title}: input {'x'.join(map(str, table['input']))} (CxHxW)",
        "",
        "| layer | type | output (CxHxW) | RF | jump | params | multiply-adds | o = ⌊(i+2p−k)/s⌋+1 |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in table["rows"]:
        rf = _size(tuple(row["rf"])) if row["rf"] else ""
        jump = _size(tuple(row["jump"])) if row["jump"] else ""
        lines.append(
            f"| {row['layer']} | {row['type']} | {'x'.join(map(str, row['output']))} | {rf} | {jump} | "
            f"{row['params']:,} | {row['macs']:,} | {row['formula']} |"
        )
    lines.append(
        f"| **total** | | {'x'.join(map(str, table['output']))} | | | **{table['params']:,}** | "
        f"**{table['macs']:,}** | |"
    )
    return "\n".join(lines)


def arithmetic_markdown(result: dict[str, Any]) -> str:
    lines = [
        "| layer | input (HxWxC) | output | params | multiply-adds | = |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['layer']} | {row['input']} | {row['output']} | {row['params']:,} | {row['macs']:,} | "
            f"{row['product']} |"
        )
    lines.append(f"\ntotal multiply-adds: {result['macs']:,} (parameters: {result['params']:,})")
    if "without_bottleneck" in result:
        naive = result["without_bottleneck"]["macs"]
        lines.append(f"without the 1x1 bottleneck: {naive:,} ({naive / result['macs']:.1f}x as many)")
    return "\n".join(lines)


def stack_markdown(result: dict[str, Any]) -> str:
    lines = ["| layer | receptive field | jump | params |", "| --- | ---: | ---: | ---: |"]
    for row in result["rows"]:
        params = f"{row['params']:,}" if row["params"] is not None else ""
        lines.append(f"| {row['layer']} | {row['rf']}x{row['rf']} | {row['jump']} | {params} |")
    summary = f"\n{len(result['rows'])} stacked: receptive field {result['rf']}x{result['rf']}, jump {result['jump']}"
    if "params" in result:
        summary += (
            f"; {result['params']:,} weights against {result['single_conv_params']:,} for one "
            f"{result['rf']}x{result['rf']} convolution"
        )
    return "\n".join(lines) + summary


def plot(table: dict[str, Any], title: str, path: Path) -> Path:
    """Receptive field and jump per layer (log scale, input size dashed) over multiply-adds per layer."""
    plt = common.pyplot()
    rows = [row for row in table["rows"] if row["rf"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.22 * len(rows) + 2), 5.6), sharex=True)
    positions = range(len(rows))
    top.plot(positions, [max(row["rf"]) for row in rows], marker="o", markersize=3, label="receptive field")
    top.plot(positions, [max(row["jump"]) for row in rows], marker="s", markersize=3, label="jump (stride)")
    top.axhline(max(table["input"][1:]), color="grey", linestyle="--", linewidth=1, label="input size")
    top.set_yscale("log", base=2)
    top.yaxis.set_major_formatter("{x:g}")
    top.set_ylabel("pixels of the input")
    top.legend(fontsize=7)
    top.set_title(title, fontsize=9)
    bottom.bar(positions, [row["macs"] / 1e6 for row in rows], color="tab:green")
    bottom.set_ylabel("multiply-adds (M)")
    bottom.set_xticks(list(positions), [row["layer"] for row in rows], rotation=90, fontsize=6)
    fig.tight_layout()
    return common.save_figure(fig, path)


def plot_arithmetic(result: dict[str, Any], path: Path) -> Path:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    labels, values = [], []
    if "without_bottleneck" in result:
        labels.append("without bottleneck")
        values.append(result["without_bottleneck"]["macs"] / 1e6)
    labels += [row["layer"] for row in result["rows"]]
    values += [row["macs"] / 1e6 for row in result["rows"]]
    if len(result["rows"]) > 1:
        labels.append("total")
        values.append(result["macs"] / 1e6)
    bars = ax.barh(labels, values, color="tab:blue")
    ax.bar_label(bars, [f"{v:,.1f} M" for v in values], fontsize=7)
    ax.set_xlabel(f"multiply-adds on {result['input']} (M)")
    ax.invert_yaxis()
    fig.tight_layout()
    return common.save_figure(fig, path)


# ----- command ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = common.tool_parser("shapes", __doc__)
    parser.add_argument("target", nargs="?", help="registered architecture name, run directory or checkpoint")
    parser.add_argument(
        "--input",
        default=None,
        metavar="CxHxW",
        help="input size (default: the network's native size, or the run's data)",
    )
    parser.add_argument("--depth", type=int, default=None, help="rows for modules this deep (1: the children)")
    parser.add_argument("--all", action="store_true", help="every leaf module call, not only the layers")
    parser.add_argument("--format", choices=("md", "csv", "json"), default="md", help="stdout format")
    parser.add_argument("--out", default=None, help="also write shapes.json/.csv and shapes.png to this folder")
    parser.add_argument("--name", default="shapes", help="file name prefix")
    lecture = parser.add_argument_group("arithmetic (no network)")
    lecture.add_argument("--conv", metavar="HxWxC", help="input of one convolution, e.g. 28x28x192")
    lecture.add_argument("--out-chs", type=int, default=32, help="its output channels")
    lecture.add_argument("--kernel", type=int, default=5, help="its kernel size")
    lecture.add_argument("--stride", type=int, default=1, help="its stride")
    lecture.add_argument("--padding", type=int, default=None, help="its padding (default kernel // 2)")
    lecture.add_argument("--bottleneck", type=int, default=None, help="channels of a 1x1 convolution before it")
    lecture.add_argument("--stack", metavar="K[/S],...", help="receptive field of stacked convolutions, e.g. 3,3,3")
    lecture.add_argument("--chs", type=int, default=None, help="with --stack: channels, to compare weights")
    return parser


def _network(target: str, input_arg: str | None) -> tuple[nn.Module, tuple[int, ...], str]:
    path = Path(target).expanduser()
    if path.exists() or target.endswith(".ckpt") or "/" in target:
        run = common.load_run(target, checkpoint="none")
        dm = run.datamodule
        size = (int(dm.in_chans), *(int(s) for s in dm.image_size))
        network, title = run.module.network, f"{run.label} ({run.run_dir})"
    else:
        info = model_info(target)
        with torch.device("meta"):
            network = create_model(target, num_classes=info.num_classes)
        size, title = info.input_size, target
    if input_arg:
        try:
            size = tuple(int(part) for part in input_arg.lower().split("x"))
        except ValueError:
            raise ValueError(f"--input takes CxHxW, e.g. 3x32x32; got {input_arg!r}") from None
    return network, size, title


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    modes = sum(x is not None for x in (args.target, args.conv, args.stack))
    if modes != 1:
        raise ValueError("give one of: an architecture or run, --conv HxWxC, or --stack K,K,...")
    out = common.output_dir(args.out) if args.out else None
    if args.conv or args.stack:
        if args.conv:
            result = conv_arithmetic(args.conv, args.out_chs, args.kernel, args.stride, args.padding, args.bottleneck)
            text, rows = arithmetic_markdown(result), result["rows"]
        else:
            result = stack_arithmetic(args.stack, args.chs)
            text, rows = stack_markdown(result), result["rows"]
        print(json.dumps(result, indent=2) if args.format == "json" else text)
        if out:
            common.write_json(out / f"{args.name}.json", result)
            common.write_csv(out / f"{args.name}.csv", rows)
            if args.conv:
                plot_arithmetic(result, out / f"{args.name}.png")
        return 0
    network, size, title = _network(args.target, args.input)
    table = layer_table(network, size, args.depth, args.all)
    table["network"] = title
    csv_rows = [
        {
            **row,
            "output": "x".join(map(str, row["output"])),
            "rf": "x".join(map(str, row["rf"] or [])),
            "jump": "x".join(map(str, row["jump"] or [])),
        }
        for row in table["rows"]
    ]
    if args.format == "md":
        print(markdown(table, title))
    elif args.format == "json":
        print(json.dumps(table, indent=2))
    else:
        import csv
        import sys

        writer = csv.DictWriter(sys.stdout, fieldnames=list(csv_rows[0]) if csv_rows else ["layer"])
        writer.writeheader()
        writer.writerows(csv_rows)
    if out:
        common.write_json(out / f"{args.name}.json", table)
        common.write_csv(out / f"{args.name}.csv", csv_rows)
        plot(table, f"{title}: receptive field, jump and multiply-adds per layer", out / f"{args.name}.png")
    return 0
