"""What the analysis tools share: loading a run or checkpoint, fixed data subsets, evaluation, files.

A *run* is a directory written by ``ablate fit`` (``runs/<name>/version_N/`` or a sweep's
``runs/<study>/<tier>/<arm>/seed_K/``) holding the resolved ``config.yaml`` and ``checkpoints/``.
It is rebuilt the way it was trained: the config goes through the same LightningCLI parser as
``ablate fit`` (``lightning_modules.ablate_cli.run_lightning_cli(..., run=False)``), then the checkpoint's
``state_dict`` is loaded with ``torch.load(weights_only=True)``: no pickled code runs, only
tensors and primitive values are read (Lightning checkpoints of this project hold nothing else).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from lightning_modules.ablate_cli import run_lightning_cli
from lightning_modules.checkpoint_loading import load_checkpoint
from lightning_modules.files import open_atomic, write_text_atomic
from lightning_modules.run_folders import FINAL_CHECKPOINT, LAST

# Top-level keys of a saved config that the model/data parser knows; `ablate fit` also saves
# subcommand arguments (ckpt_path, weights_only) that only its own subcommand accepts.
CONFIG_KEYS = (
    "seed_everything",
    "trainer",
    "model",
    "data",
    "optimizer",
    "lr_scheduler",
    "ema",
    "fine_tune",
    "test_time",
)
# The trainer is built by the CLI but never used here: keep it from touching devices or loggers.
TRAINER_OVERRIDES = (
    "--trainer.logger=false",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.num_nodes=1",
    "--trainer.strategy=auto",
    "--trainer.precision=32-true",
    "--trainer.enable_progress_bar=false",
)


@dataclass
class LoadedRun:
    """A trained classifier rebuilt from its run directory.

    Attributes:
        run_dir: The run directory (holds ``config.yaml``).
        checkpoint: The checkpoint whose weights were loaded (None when built without weights).
        module: The ``ImageClassifier`` with the checkpoint's weights, in eval mode.
        datamodule: The run's data module (not set up yet; see ``setup_data``).
        label: Short name for tables and legends: the registered architecture name when the
            network is a ``ZooModel``, else its class name.
    """

    run_dir: Path
    checkpoint: Path | None
    module: Any
    datamodule: Any
    label: str

    @property
    def network(self) -> nn.Module:
        """The weights the run's test reported: the EMA copy under ``EMA(evaluate=True)``, else the network."""
        return self.module.evaluated_network()


def resolve_run(path: str | Path, which: str = "tested") -> tuple[Path, Path, Path | None]:
    """``(run_dir, config.yaml, checkpoint)`` of a run directory or of a checkpoint file inside one.

    Args:
        path: A run directory, or a ``.ckpt`` file (its run directory is the parent of ``checkpoints/``).
        which: For a directory: ``"tested"`` (the model whose test error the run reported: ``last``
            for a study run that tested its final model, else ``best``), ``"best"`` (the checkpoint
            ModelCheckpoint recorded as best), ``"last"`` (``last.ckpt``) or ``"none"`` (no weights).
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise FileNotFoundError(f"{path}: no such run directory or checkpoint")
    if given.is_file():
        if given.suffix != ".ckpt":
            raise ValueError(f"{path}: expected a run directory or a .ckpt file")
        run_dir = given.parent.parent if given.parent.name == "checkpoints" else given.parent
        checkpoint: Path | None = given
    else:
        run_dir = given
        checkpoint = None if which == "none" else find_checkpoint(run_dir, which)
    config = run_dir / "config.yaml"
    if not config.is_file():
        versions = sorted(p.name for p in run_dir.glob("version_*") if (p / "config.yaml").is_file())
        hint = f" It has runs {', '.join(versions)}: pass one of them." if versions else ""
        raise FileNotFoundError(f"{config} not found: {path} is not a run written by `ablate fit`.{hint}")
    return run_dir, config, checkpoint


def find_checkpoint(run_dir: Path, which: str = "tested") -> Path:
    """The run's tested, best (as its ModelCheckpoint recorded it) or last checkpoint.

    "tested" is the final model (``final.ckpt``, else ``last.ckpt``) when the run's result.json reports
    it (a study run), else the best checkpoint (what ``ablate fit --test_after_fit`` tests by default).
    """
    folder = run_dir / "checkpoints"
    if which == "tested":
        try:
            tested = json.loads((run_dir / "result.json").read_text()).get("tested")
        except (OSError, ValueError, AttributeError):
            tested = None
        if tested == "final" and (folder / FINAL_CHECKPOINT).is_file():
            return folder / FINAL_CHECKPOINT
        which = "last" if tested == "final" else "best"
    found = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no checkpoints in {folder}: did the run train at least one epoch or step?")
    last = folder / LAST
    if which == "last":
        if not last.is_file():
            raise FileNotFoundError(f"{last} not found; checkpoints there: {', '.join(p.name for p in found)}")
        return last
    if which != "best":
        raise ValueError(f"checkpoint must be 'tested', 'best', 'last' or 'none', got {which!r}")
    others = [p for p in found if p.name not in (LAST, FINAL_CHECKPOINT)]
    if last.is_file():
        recorded = _recorded_best(last)
        if recorded is not None and (folder / recorded).is_file():
            return folder / recorded
    if others:
        return max(others, key=lambda p: p.stat().st_mtime)
    return last


def _recorded_best(last: Path) -> str | None:
    """File name of the ``best_model_path`` that a monitoring ModelCheckpoint saved in ``last.ckpt``.

    A checkpoint callback without a monitor (one that only writes ``last.ckpt``) records its own
    latest file as "best" with no score; it is skipped.
    """
    checkpoint = load_checkpoint(last)
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if not (str(key).startswith("ModelCheckpoint") and isinstance(state, dict)):
            continue
        path, score = state.get("best_model_path"), state.get("best_model_score")
        if path and score is not None and Path(path).name != last.name:
            return Path(path).name
    return None


def build_from_config(config: Path, overrides: Sequence[str] = ()) -> tuple[Any, Any]:
    """``(ImageClassifier, data module)`` from a saved ``config.yaml``, as ``ablate fit`` built them."""
    import yaml

    saved = yaml.safe_load(config.read_text()) or {}
    kept = {key: value for key, value in saved.items() if key in CONFIG_KEYS}
    args = ["--config", yaml.safe_dump(kept, sort_keys=False), *TRAINER_OVERRIDES, *overrides]
    stderr = io.StringIO()
    try:
        # argv cleared: LightningCLI warns when it gets ``args`` while sys.argv holds the tool's own.
        # Lightning's info lines (seed, accelerator, tips) are hidden by the CLI itself (lightning_modules/quiet.py).
        with contextlib.redirect_stderr(stderr), mock.patch.object(sys, "argv", sys.argv[:1]):
            cli = run_lightning_cli(args, run=False)
    except SystemExit as error:  # jsonargparse prints usage and exits on a bad config
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {error.code}"
        raise ValueError(f"{config}: cannot rebuild the run from its config ({reason})") from None
    return cli.model, cli.datamodule


def load_run(
    path: str | Path, checkpoint: str = "tested", data_dir: str | None = None, device: str = "cpu"
) -> LoadedRun:
    """Rebuild a run's classifier and data module and load its weights.

    Args:
        path: Run directory or checkpoint file.
        checkpoint: ``"tested"``, ``"best"``, ``"last"`` or ``"none"`` (architecture only, initial weights).
        data_dir: Replaces the data module's ``data_dir`` (runs trained elsewhere).
        device: Device the module is moved to.
    """
    run_dir, config, ckpt = resolve_run(path, checkpoint)
    overrides = [f"--data.init_args.data_dir={data_dir}"] if data_dir else []
    module, datamodule = build_from_config(config, overrides)
    if ckpt is not None:
        saved = load_checkpoint(ckpt)
        state = saved.get("state_dict")
        if state is None:
            raise ValueError(f"{ckpt}: no state_dict in this checkpoint")
        module.on_load_checkpoint(saved)  # as Lightning does before loading: a place for an EMA's weights
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{ckpt} does not fit the network of {config}: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
    module.to(device).eval()
    return LoadedRun(run_dir, ckpt, module, datamodule, network_label(module.network, config))


def network_label(network: nn.Module, config: Path | None = None) -> str:
    """The registered name when the config used ``ZooModel``, else the network's class name."""
    if config is not None:
        import yaml

        saved = yaml.safe_load(config.read_text()) or {}
        init = ((saved.get("model") or {}).get("network") or {}).get("init_args") or {}
        if isinstance(init.get("name"), str):
            return init["name"]
    return type(network).__name__


def unique_labels(runs: Sequence[LoadedRun]) -> list[str]:
    """Run labels, made unique where two runs share a network by the shortest tail of their run
    directories that tells them apart (``seed_0``, or ``original/seed_0`` for two arms of a sweep)."""
    labels = [run.label for run in runs]

    def tail(run: LoadedRun, parts: int) -> str:
        return "/".join(Path(run.run_dir).parts[-parts:])

    out = []
    for label, run in zip(labels, runs, strict=True):
        twins = [other for other in runs if other.label == label]
        if len(twins) == 1:
            out.append(label)
            continue
        depth = max(len(Path(other.run_dir).parts) for other in twins)
        parts = next((n for n in range(1, depth + 1) if len({tail(other, n) for other in twins}) == len(twins)), depth)
        out.append(f"{label} ({tail(run, parts)})")
    return out


# ----- data -------------------------------------------------------------------------------------


def setup_data(datamodule: Any) -> None:
    """Make the data module's splits available (decode or load the cache once)."""
    if getattr(datamodule, "test_set", None) is None:
        datamodule.prepare_data()
        datamodule.setup("fit")


def split_dataset(datamodule: Any, split: str) -> Any:
    """The ``train``, ``val`` or ``test`` dataset of a set-up data module."""
    setup_data(datamodule)
    dataset = getattr(datamodule, f"{split}_set", None)
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"{type(datamodule).__name__} has no {split} split")
    return dataset


def subset_indices(size: int, count: int | None, seed: int | None) -> torch.Tensor:
    """``count`` indices of ``range(size)``: the first ones (seed None) or a seeded random draw."""
    count = size if count is None or count <= 0 else min(count, size)
    if seed is None:
        return torch.arange(count)
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def raw_batches(
    datamodule: Any, split: str, indices: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` of ``split[indices]`` as the split's loader yields them (uint8 for in-memory data)."""
    from torch.utils.data import DataLoader, Subset

    dataset = split_dataset(datamodule, split)
    collate = datamodule.test_dataloader().collate_fn
    yield from DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False, collate_fn=collate)


def model_input(
    datamodule: Any, images: torch.Tensor, labels: torch.Tensor, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch through the data module's eval transforms (normalisation, no augmentation)."""
    batch = (images.to(device), labels.to(device))
    if hasattr(datamodule, "transform_batch"):
        return datamodule.transform_batch(batch, train=False)
    return datamodule.on_after_batch_transfer(batch, 0)


def batches(
    datamodule: Any, split: str, indices: torch.Tensor, batch_size: int, device: str | torch.device = "cpu"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Model-ready ``(images, labels)`` of ``split[indices]``, through the eval transforms (no augmentation)."""
    for images, labels in raw_batches(datamodule, split, indices, batch_size):
        yield model_input(datamodule, images, labels, device)


def cached_batches(
    datamodule: Any, split: str, indices: torch.Tensor, batch_size: int, device: str | torch.device = "cpu"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` held in memory, for tools that evaluate the same images many times."""
    return list(batches(datamodule, split, indices, batch_size, device))


def logits_of(module: Any, network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Main-head logits as the classifier's test step computes them (flip TTA included when on)."""
    from architectures.common import AuxOutputs

    def main_head(x: torch.Tensor) -> torch.Tensor:
        out = network(x)
        return out.logits if isinstance(out, AuxOutputs) else out

    logits = main_head(images)
    if getattr(module, "flip_at_test", False):
        logits = (logits + main_head(images.flip(-1))) / 2
    return logits


@torch.no_grad()
def evaluate(
    module: Any, network: nn.Module, data: Sequence[tuple[torch.Tensor, torch.Tensor]] | Iterator
) -> dict[str, float]:
    """Mean loss (the classifier's own objective on the main head), accuracy and error (%) on ``data``."""
    network.eval()
    total_loss, correct, count = 0.0, 0, 0
    for images, labels in data:
        logits = logits_of(module, network, images)
        loss = module.compute_loss(logits, labels)["loss"]
        total_loss += float(loss) * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        count += len(labels)
    if count == 0:
        raise ValueError("no images to evaluate")
    accuracy = correct / count
    return {"loss": total_loss / count, "acc": accuracy, "err": 100.0 * (1.0 - accuracy), "count": count}


# ----- output -----------------------------------------------------------------------------------


def output_dir(out: str | Path) -> Path:
    path = Path(out).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, data: Any) -> Path:
    write_text_atomic(path, json.dumps(plain(data), indent=2) + "\n")  # whole or not at all
    return path


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    with open_atomic(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields or ["empty"])
        writer.writeheader()
        writer.writerows([{key: plain(value) for key, value in row.items()} for row in rows])
    return path


def plain(value: Any) -> Any:
    """JSON-safe values: paths as strings, tensors and arrays as lists, NaN/inf as None."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # tensors, arrays, numpy scalars
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Save a figure as a palette-reduced PNG when Pillow can (README pictures stay small)."""
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    except (ImportError, OSError, ValueError):
        pass
    return path


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def tool_parser(tool: str, doc: str) -> argparse.ArgumentParser:
    """The parser of ``ablate <tool>``: the module docstring's first paragraph as the description,
    the rest, verbatim, as the epilog."""
    return argparse.ArgumentParser(
        prog=f"ablate {tool}",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc.split("\n\n", 1)[1],
    )


def add_run_arguments(parser: Any) -> None:
    """The options every tool that loads a run shares."""
    parser.add_argument(
        "--checkpoint",
        choices=("tested", "best", "last"),
        default="tested",
        help="for a run directory: the model whose test error the run reported (a study run's "
        "final model, else the best checkpoint), the best checkpoint by val/acc, or last.ckpt",
    )
    parser.add_argument("--data-dir", default=None, help="data root replacing the one in the run's config")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--batch-size", type=int, default=500, help="images per forward pass")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/analysis)")


@contextlib.contextmanager
def progress_bar(total: int, description: str, disable: bool = False) -> Iterator[Any]:
    """A rich progress bar on stderr; yields ``advance()``, to call once per unit of work."""
    if disable:
        yield lambda: None
        return
    from rich import progress as bar
    from rich.console import Console

    columns = (
        bar.TextColumn("{task.description}"),
        bar.BarColumn(),
        bar.MofNCompleteColumn(),
        bar.TimeElapsedColumn(),
        bar.TextColumn("eta"),
        bar.TimeRemainingColumn(),
    )
    with bar.Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)
