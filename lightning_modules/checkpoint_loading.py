"""Checkpoints read with ``weights_only=True``, and refused in plain words when they cannot be used.

- ``load_checkpoint``: tensors and plain data only, so no code can run from the file; a missing,
  truncated, corrupt or unsafe file is a ``CheckpointError`` saying which.
- ``check_checkpoint_fits``: weights of another network, another number of classes or input
  channels, or non-finite weights (a diverged run's), named before Lightning loads them
  (docs/reliability.md, "Safe loading" and "Clear failures").
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_modules.errors import CheckpointError
from lightning_modules.run_folders import LAST


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint read with ``weights_only=True``: tensors and plain data only, no code runs.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or holds pickled Python
            objects (which could run code when loaded), each said in plain words.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the file, e.g. {path / 'checkpoints' / LAST}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):  # legacy (non-zip) files cannot be memory-mapped
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            blocked = re.search(r"(?:unsupported|Unsupported) (?:GLOBAL|global:? )\s*(?:GLOBAL )?([\w.]+)", str(error))
            what = f" (it would call {blocked.group(1)})" if blocked else ""
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled Python objects{what}, which can run code when "
                "loaded. Checkpoints are read with weights_only=True (tensors and plain data only); "
                "use a checkpoint written by `ablate fit`, or re-save a trusted file's state_dict."
            ) from None
        raise CheckpointError(_corrupt(path, error)) from None
    except Exception as error:  # OSError, EOFError, zip errors: all mean "not a whole checkpoint"
        raise CheckpointError(_corrupt(path, error)) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint


def _corrupt(path: Path, error: BaseException) -> str:
    cause = str(error).splitlines()[0] if str(error) else type(error).__name__
    return (
        f"{path} is not a readable checkpoint: it is truncated or corrupt ({cause}; {path.stat().st_size:,} bytes). "
        "Use another checkpoint (the epoch checkpoints beside it) or the run's previous last.ckpt."
    )


def _trained_with(path: Path) -> str:
    """``" (trained with <network>)"`` from the ``config.yaml`` beside the run's checkpoints."""
    config_file = path.resolve().parent.parent / "config.yaml"
    try:
        network = yaml.safe_load(config_file.read_text())["model"]["network"]
        args = network.get("init_args") or {}
        label = args.get("name") or network["class_path"].rsplit(".", 1)[-1]
        return f" (trained with {label}; its config: {config_file})"
    except Exception:  # no config beside it, or another layout: the hint is optional
        return ""


def check_checkpoint_fits(model: torch.nn.Module, checkpoint: dict[str, Any], path: str | Path) -> None:
    """Raise ``CheckpointError`` naming the difference when the weights do not fit ``model``.

    Lightning would fail too, but with torch's list of every mismatched tensor; this says which
    of "another network", "another number of classes" or "another number of input channels".
    """
    path = Path(path)
    saved = checkpoint.get("state_dict")
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{path} holds no model weights ('state_dict'); to start from plain weights use --fine_tune.weights {path}"
        )
    expected = model.state_dict()
    # A classifier without an EMA gives a checkpoint's averaged weights a place as it loads them
    # (ImageClassifier.on_load_checkpoint).
    made_on_load = ("ema_network.",) if getattr(model, "ema_network", False) is None else ()
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected and not key.startswith(made_on_load)]
    if (missing or unexpected) and getattr(model, "strict_loading", True):
        network = type(getattr(model, "network", model)).__name__
        raise CheckpointError(
            f"{path} holds the weights of another network{_trained_with(path)}: {len(unexpected)} of its tensors "
            f"have no place in this {network} (e.g. {', '.join(unexpected[:2]) or '-'}) and {len(missing)} of the "
            f"network's are missing (e.g. {', '.join(missing[:2]) or '-'}). Use the configuration it was trained with."
        )
    mismatched = [
        (key, tuple(saved[key].shape), tuple(value.shape))
        for key, value in expected.items()
        if key in saved and tuple(saved[key].shape) != tuple(value.shape)
    ]
    if not mismatched:
        _check_finite(saved, path)
        return
    num_classes = getattr(model, "num_classes", None)
    in_chans = getattr(getattr(model, "network", model), "in_chans", None)
    # The head differs in its first dimension (the classes); the stem's convolution in its second.
    heads = [
        (key, old, new)
        for key, old, new in mismatched
        if old[0] != new[0] and new[0] == num_classes and old[1:] == new[1:]
    ]
    stems = [
        (key, old, new)
        for key, old, new in mismatched
        if len(old) == 4 and old[1] != new[1] and new[1] == in_chans and (old[0], *old[2:]) == (new[0], *new[2:])
    ]
    reasons = []
    if heads:
        key, was, now = heads[0]
        reasons.append(
            f"it was trained for {was[0]} classes but this run's data has {num_classes} "
            f"({key} is {list(was)} in the checkpoint, {list(now)} here)"
        )
    if stems:
        key, was, now = stems[0]
        reasons.append(
            f"it was trained on {was[1]}-channel images but this run's data has {in_chans} "
            f"({key} is {list(was)} in the checkpoint, {list(now)} here)"
        )
    if reasons and len(heads) + len(stems) == len(mismatched):
        raise CheckpointError(
            f"{path} does not fit this run's data: {'; and '.join(reasons)}. Use it on the data it was trained on, "
            f"or fine-tune from it with --fine_tune.weights {path} (a new head is initialised)."
        )
    key, was, now = mismatched[0]
    raise CheckpointError(
        f"{path} does not fit this network{_trained_with(path)}: {len(mismatched)} tensor(s) differ in shape, "
        f"e.g. {key} is {list(was)} in the checkpoint, {list(now)} here. Use the configuration it was trained with."
    )


def _check_finite(state_dict: dict[str, Any], path: Path) -> None:
    """A checkpoint with NaN or infinite weights (saved by a run that diverged) evaluates to chance or
    NaN while looking like a result; refused before it is used."""
    tensors = [value for value in state_dict.values() if isinstance(value, torch.Tensor)]
    bad = [value for value in tensors if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite weights ({len(bad)} of {len(tensors)} tensors have NaN or inf values); it is "
            "not a trained model (the run that saved it diverged). Use an earlier checkpoint of that run"
        )
