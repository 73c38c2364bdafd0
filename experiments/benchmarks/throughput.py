"""``ablate bench throughput``: images/s, peak memory and FLOPs utilisation per network in the zoo.

Every (network, variant) runs in a process of its own, so one network's peak memory is its own
(not the high-water mark of all the networks before it) and one that runs out of memory is a row
with its error, not the end of the benchmark. A variant is a way of executing the same network:

    fp32              float32, contiguous (NCHW) tensors, eager
    fp32-cl           float32, channels_last (NHWC) tensors
    bf16              bfloat16 autocast
    bf16-cl           bfloat16 autocast + channels_last tensors
    bf16-cl-compile   the same under torch.compile (its first steps, compilation, are warm-up)
    auto              what ``ablate fit``'s automatic speed setting picks on this device
                      (lightning_modules/speed.py; the row's ``auto_is`` names it)

On CPU the default is fp32 alone; on CUDA all of them. With ``--repeats N`` every variant of a
network is measured N times, the variants taking turns (in reversed order every other round),
and each row keeps its best round: load from other users of a shared machine only slows a round
down. ``warmup_s`` is the untimed first steps' time, which under torch.compile is the compilation.
Model FLOPs utilisation is the counted training FLOPs (6 per multiply-add: forward 2, backward 4)
per second over the device's dense bf16 peak (``--peak-tflops``, looked up for common GPUs).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import resource
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

VARIANTS = ("fp32", "fp32-cl", "bf16", "bf16-cl", "bf16-cl-compile", "auto")

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "throughput",
        help="train/inference images/s, peak memory, MFU per architecture",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--pattern", default="*", help="which registered networks: globs as in `ablate zoo`, comma-separated"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--variants", default=None, help=f"comma list of {', '.join(VARIANTS)} (default: fp32 on CPU, all on CUDA)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 128 on CUDA")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compilation, allocator)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds over the variants, taking turns; each row is its best round"
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense bf16 peak, for MFU (default: looked up by GPU name)",
    )
    return parser


@dataclasses.dataclass(frozen=True)
class Job:
    network: str
    variant: str
    device: str
    batch_size: int
    steps: int
    warmup: int


def _rss_mb(field: str) -> float | None:
    """VmRSS / VmHWM of this process in MiB (Linux); None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class _PeakMemory:
    """Peak memory a block added: CUDA allocator peak, or the CPU process's RSS high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = (
            torch.cuda.memory_allocated(device) / 2**20
            if device.type == "cuda"
            else _rss_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.baseline
        hwm = _rss_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return hwm - self.baseline


def _timed(step, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones, and the warm-up's seconds."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, warmup_s


def execution(variant: str, device_type: str) -> tuple[bool, bool, bool]:
    """(bf16 autocast, channels_last, compile) of a variant; ``auto`` as ``ablate fit`` resolves it."""
    if variant == "auto":
        from lightning_modules import speed

        choice = speed.choose(speed.probe(device_type))
        return "bf16" in choice.precision, choice.channels_last, False
    return variant.startswith("bf16"), "-cl" in variant, variant.endswith("compile")


def auto_variant(device_type: str) -> str:
    """The fixed variant the automatic setting equals on this device (e.g. ``bf16-cl``)."""
    bf16, channels_last, _ = execution("auto", device_type)
    return ("bf16" if bf16 else "fp32") + ("-cl" if channels_last else "")


def measure(job: Job) -> dict:
    """One network in one variant: inference first, then training (the CPU high-water mark only rises)."""
    from architectures import count_params, create_model, model_info

    device = torch.device(job.device)
    info = model_info(job.network)
    memory = _PeakMemory(device)
    bf16, channels_last, compiled = execution(job.variant, device.type)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = create_model(job.network, num_classes=info.num_classes).to(device, memory_format=layout)
    params = count_params(net)
    images = torch.randn(job.batch_size, *info.input_size, device=device).contiguous(memory_format=layout)
    labels = torch.randint(0, info.num_classes, (job.batch_size,), device=device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    model = torch.compile(net) if compiled else net
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def train_step() -> None:
        with autocast:
            out = model(images)
            loss = F.cross_entropy(out.logits if hasattr(out, "logits") else out, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.inference_mode(), autocast:
            model(images)

    net.eval()
    infer_s, infer_warmup_s = _timed(infer_step, job.steps, job.warmup, device)
    peak_infer = memory.peak_mb()
    net.train()
    train_s, train_warmup_s = _timed(train_step, job.steps, job.warmup, device)
    return {
        "train_img_s": job.steps * job.batch_size / train_s,
        "infer_img_s": job.steps * job.batch_size / infer_s,
        "warmup_s": infer_warmup_s + train_warmup_s,
        "params": params,
        "peak_train_mb": memory.peak_mb(),
        "peak_infer_mb": peak_infer,
    }


def _run_in_child(measure_fn, job: Job, sender) -> None:
    try:
        sender.send(measure_fn(job))
    except BaseException as error:  # noqa: BLE001 - reported as the row's error, e.g. out of memory
        sender.send(
            {
                "error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200],
                "traceback": traceback.format_exc(),
            }
        )


def run_isolated(job: Job, measure_fn=measure) -> dict:
    """``measure_fn(job)`` in a fresh, spawned process. Not forked: a child forked from a process whose
    OpenMP pool has run (a test session, a notebook) deadlocks in its first multi-threaded kernel, and
    one forked after CUDA was touched cannot use CUDA."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_run_in_child, args=(measure_fn, job, sender))
    child.start()
    sender.close()  # the child holds the only writer now: its death ends the pipe
    try:
        result = receiver.recv()  # before join: a large reply must not wait on a full pipe
    except EOFError:  # killed: the kernel's OOM killer, a segfault
        result = None
    child.join()
    return result or {"error": f"the measuring process died (exit code {child.exitcode})"}


def device_peak_tflops(device: str, given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return given, "given"
    if not device.startswith("cuda"):
        return None, "no CPU peak is assumed; pass --peak-tflops"
    name = torch.cuda.get_device_name(torch.device(device))
    for key, tflops in PEAK_BF16_TFLOPS.items():  # most specific names first
        if key in name:
            return tflops, f"{name}: dense bf16 {tflops:g} TFLOP/s"
    return None, f"{name}: unknown peak; pass --peak-tflops"


def bench_throughput(args: argparse.Namespace) -> dict:
    from architectures import list_models, model_info
    from experiments.analysis.zoo import multiply_adds
    from experiments.benchmarks.side_by_side import machine

    on_cuda = args.device.startswith("cuda")
    variants = args.variants.split(",") if args.variants else (list(VARIANTS) if on_cuda else ["fp32"])
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"ablate bench throughput: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    batch_size = args.batch_size or (128 if on_cuda else 8)
    peak, peak_source = device_peak_tflops(args.device, args.peak_tflops)
    rows = []
    names = sorted({name for pattern in args.pattern.split(",") for name in list_models(pattern)})
    if not names:
        raise SystemExit(f"ablate bench throughput: no registered network matches {args.pattern!r} (see `ablate zoo`)")
    device_type = torch.device(args.device).type
    for name in names:
        macs = multiply_adds(name)
        best: dict[str, dict] = {}
        for repeat in range(args.repeats):
            for variant in variants if repeat % 2 == 0 else variants[::-1]:
                if "error" in best.get(variant, {}):  # failed once (out of memory): not tried again
                    continue
                job = Job(name, variant, args.device, batch_size, args.steps, args.warmup)
                print(f"[throughput] {name} {variant} ({repeat + 1}/{args.repeats}) ...", file=sys.stderr, flush=True)
                result = run_isolated(job)
                if "error" in result or result["train_img_s"] > best.get(variant, {}).get("train_img_s", -1):
                    best[variant] = result
        for variant in variants:
            result = best[variant]
            row = {
                "network": name,
                "variant": variant,
                "input": "x".join(map(str, model_info(name).input_size)),
                "macs": macs,
                **({"auto_is": auto_variant(device_type)} if variant == "auto" else {}),
            }
            if "error" in result:
                rows.append({**row, "error": result["error"]})
                print(result.get("traceback", result["error"]), file=sys.stderr)
                continue
            tflops = 6 * macs * result["train_img_s"] / 1e12
            rows.append(
                {
                    **row,
                    "params": result["params"],
                    "train_img_s": result["train_img_s"],
                    "infer_img_s": result["infer_img_s"],
                    "train_tflops": tflops,
                    **({"mfu": tflops / peak} if peak else {}),
                    "peak_train_mb": result["peak_train_mb"],
                    "peak_infer_mb": result["peak_infer_mb"],
                    "warmup_s": result["warmup_s"],
                }
            )
    return {
        "benchmark": "throughput",
        "machine": machine(),
        "device": args.device,
        "batch_size": batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "rows": rows,
        "note": (
            "each row in a fresh process; peak memory is what the network added to that process: "
            + (
                "the CUDA allocator's peak"
                if on_cuda
                else "the RSS high-water mark over the RSS before the network was built, which includes "
                "torch's kernel code paged in on first use (tens of MB)"
            )
        ),
    }
