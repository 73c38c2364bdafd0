"""The automatic speed setting: the fastest precision and memory layout this device computes in.

A run that leaves ``trainer.precision`` and ``channels_last`` unset (null) gets, on start:

    bf16-mixed + channels_last   a CUDA GPU with bf16, or a CPU with AMX-BF16: bf16 autocast halves the
                                 bytes moved and uses the bf16 matrix units
    32-true + channels_last      other x86 CPUs with AVX2/AVX-512 (AVX-512 BF16 included: bf16 measured
                                 slower there): oneDNN's NHWC convolutions are faster
    32-true                      anything else (a GPU without bf16, MPS, other CPUs)

A value the user set, in a YAML file or on the command line, is never changed; ``--speed off`` turns
the choice off (unset means fp32, contiguous). torch.compile is not part of it: on CPU its compile time
is not repaid within a short run (docs/benchmarks/speed_auto_cpu.md); ``--compile true`` asks for it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch

Speed = Literal["auto", "off"]
FP32 = "32-true"
BF16 = "bf16-mixed"


@dataclasses.dataclass(frozen=True)
class Device:
    """What the choice depends on: the device type and, why it matters, its bf16 and NHWC support."""

    type: str  # "cpu", "cuda", "mps", ...
    native_bf16: str | None  # why bf16 is fast here ("CPU has AMX-BF16"), None where it is not
    fast_channels_last: bool  # NHWC convolutions beat NCHW in fp32 (oneDNN on x86)


@dataclasses.dataclass(frozen=True)
class Choice:
    precision: str  # a Lightning precision
    channels_last: bool
    reason: str


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def probe(device_type: str) -> Device:
    """The capabilities of this machine's ``device_type`` ("cpu" or "cuda"; others get fp32)."""
    if device_type == "cuda":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return Device("cuda", "GPU supports bf16" if bf16 else None, fast_channels_last=False)
    if device_type != "cpu":
        return Device(device_type, None, fast_channels_last=False)
    flags = _cpu_flags()
    # bf16 pays on CPUs with AMX tiles (oneDNN's bf16 matrix units). AVX-512 BF16 alone does not: on
    # such a CPU, bf16 autocast trained ResNet-20/110 and All-CNN-C slower than fp32 + channels_last
    # (docs/benchmarks/speed_auto_cpu.md). torch's own probe (mkldnn bf16 support) says yes for any
    # AVX-512 CPU, so the instruction-set flags decide.
    native = "CPU has AMX-BF16" if "amx_bf16" in flags else None
    vector = torch.backends.cpu.get_cpu_capability()
    return Device("cpu", native, fast_channels_last=vector in ("AVX2", "AVX512"))


def device_type(accelerator: Any) -> str:
    """The device type a trainer's ``accelerator`` setting ("auto", "gpu", "cpu", an instance) runs on."""
    if accelerator is None:
        accelerator = "auto"
    name = (accelerator if isinstance(accelerator, str) else type(accelerator).__name__).lower()
    if name in ("cpu",) or name.startswith("cpu"):
        return "cpu"
    if name in ("auto", "gpu", "cuda") or name.startswith("cuda"):
        if torch.cuda.is_available():
            return "cuda"
        if name == "auto" and torch.backends.mps.is_available():
            return "mps"
        return "cpu" if name == "auto" else "cuda"
    return name


def choose(device: Device, precision: str | None = None, channels_last: bool | None = None) -> Choice:
    """The fastest settings for ``device``; a ``precision`` or ``channels_last`` given is kept."""
    if precision is None:
        precision = BF16 if device.native_bf16 else FP32
    reduced = "16" in precision  # bf16 or fp16
    if channels_last is None:
        # NHWC pays with bf16 (tensor cores, oneDNN's bf16 kernels) and with fp32 on oneDNN's x86 CPUs.
        channels_last = device.fast_channels_last or (reduced and device.native_bf16 is not None)
    reason = device.native_bf16 or f"{device.type.upper()} without native bf16"
    if channels_last and not reduced and device.fast_channels_last:
        reason += "; NHWC convolutions are faster here"
    return Choice(precision, channels_last, reason)


def resolve(
    speed: Speed, accelerator: Any, precision: Any, channels_last: bool | None, device: Device | None = None
) -> tuple[Choice, str | None]:
    """The settings a run uses, and the line that says what was chosen (None when nothing was).

    Args:
        speed: ``auto`` picks what the user left unset; ``off`` leaves unset as fp32, contiguous.
        accelerator: the trainer's ``accelerator`` setting.
        precision: the trainer's ``precision`` setting; None = unset.
        channels_last: the ``channels_last`` setting; None = unset.
        device: the capabilities (default: probed for ``accelerator``).
    """
    if precision is not None:
        precision = unified_precision(precision)
    if speed == "off" or (precision is not None and channels_last is not None):
        return Choice(precision or FP32, bool(channels_last), "as set"), None
    choice = choose(device or probe(device_type(accelerator)), precision, channels_last)
    return choice, one_line(choice, precision_set=precision is not None, layout_set=channels_last is not None)


def one_line(choice: Choice, precision_set: bool, layout_set: bool) -> str:
    """``speed: 32-true + channels_last (CPU without native bf16; ...); <flags> for fp32 contiguous``."""
    shown = choice.precision + (" + channels_last" if choice.channels_last else ", contiguous")
    given = [name for name, given in (("precision", precision_set), ("layout", layout_set)) if given]
    undo = [] if layout_set or not choice.channels_last else ["--channels_last false"]
    if not precision_set and choice.precision != FP32:
        undo.append(f"--trainer.precision {FP32}")
    tail = f"; {' '.join(undo)} for fp32 contiguous" if undo else ""
    kept = f", {' and '.join(given)} as set" if given else ""
    return f"speed: {shown} ({choice.reason}{kept}){tail}"


def unified_precision(precision: Any) -> str:
    """Lightning's one name for a precision setting (32 and "32" -> "32-true", "bf16" -> "bf16-mixed")."""
    aliases = {"32": FP32, "16": "16-mixed", "bf16": BF16, "64": "64-true"}
    text = str(precision)
    return aliases.get(text, text)


def effective_precision(config: dict[str, Any], device: Device | None = None) -> str:
    """The precision a resolved ``fit`` config trains in on this machine (what ``resolve`` would pick).

    A config without a ``speed`` key was saved before the automatic setting existed, when an unset
    precision meant fp32: read as ``off``, so resuming such a run on a bf16 device is refused, not
    silently continued in bf16."""
    trainer = config.get("trainer") or {}
    speed = config["speed"] or "auto" if "speed" in config else "off"
    choice, _ = resolve(
        speed, trainer.get("accelerator"), trainer.get("precision"), config.get("channels_last"), device
    )
    return choice.precision
