"""A trained run in a notebook: rebuild its network from the checkpoint alone and predict raw images.

Every checkpoint ``ImageClassifier`` writes carries an ``"inference"`` entry of plain data (read
with ``weights_only=True``, like everything else in it):

- ``network``: the network's ``class_path`` and ``init_args`` as ``ablate`` resolved them (the data's
  ``num_classes`` and ``in_chans`` included), rebuilt by jsonargparse exactly as the CLI built it;
- ``data``: the data module's ``class_path`` and its plain constructor arguments, so its own
  evaluation transform (ImageNet-style resize and centre crop) and normalisation (per-channel mean
  and std, CIFAR's ``pixel_mean``, which the checkpoint holds, a ``resize``) preprocess new images;
- ``classes``: the class names the data module had.

``load_model(path)`` turns a checkpoint or a run folder into an eval-mode ``Predictor``:
``predictor(images)`` gives class probabilities, ``predictor.predict_folder(folder)`` one row per
image file. Only ``nn.Module`` and ``LightningDataModule`` subclasses are built from a checkpoint.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch import nn

from lightning_modules.checkpoint_loading import load_checkpoint
from lightning_modules.errors import CheckpointError
from lightning_modules.run_folders import FINAL_CHECKPOINT, LAST

if TYPE_CHECKING:
    from PIL.Image import Image

    from lightning_modules.classifier import ImageClassifier

ENTRY = "inference"
# The end-of-training weights `ablate fit --test_after_fit` keeps, then the newest state.
RUN_CHECKPOINTS = (FINAL_CHECKPOINT, LAST)
_PLAIN = (str, int, float, bool, type(None))
_NOT_PLAIN = object()


# ----- what a checkpoint records -----------------------------------------------------------------


def cli_network_spec() -> dict[str, Any] | None:
    """The ``network`` entry (``class_path``, ``init_args``) of the model LightningCLI is building now.

    LightningCLI hands a module the configuration it resolved, links applied, while it builds it
    (the hyper-parameters ``save_hyperparameters`` takes); None outside the CLI.
    """
    # Private to Lightning, but the only place the CLI puts the resolved arguments of the module it is
    # building (`save_hyperparameters` reads them there; the classifier keeps the network out of hparams).
    try:
        from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # another Lightning: checkpoints then need network= to load
        return None
    spec = _plain((_given_hyperparameters.get() or {}).get("network"))
    return spec if isinstance(spec, dict) and "class_path" in spec else None


def _plain(value: Any) -> Any:
    """``value`` as str/int/float/bool/None, lists and str-keyed dicts (what ``weights_only`` loads back),
    paths as strings; ``_NOT_PLAIN`` when it holds anything else (an object, a transform)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(item) for item in value]
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in items) else items
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        items = {key: _plain(item) for key, item in value.items()}
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in items.values()) else items
    return _NOT_PLAIN


def _init_parameters(cls: type) -> list[str]:
    """The named constructor arguments of ``cls``, followed through ``**kwargs`` into its bases (data
    modules take their own arguments and pass the shared ones on, as jsonargparse resolves them)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]  # without self
        names += [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def data_spec(datamodule: pl.LightningDataModule) -> dict[str, Any]:
    """The data module's class and those constructor arguments it keeps as plain attributes of the same
    name (what its evaluation transform depends on: ``normalization``, ``resize``, ``crop_size``...)."""
    cls = type(datamodule)
    init_args = {}
    for name in _init_parameters(cls):
        plain = _plain(getattr(datamodule, name, None))
        if plain is not None and plain is not _NOT_PLAIN:
            init_args[name] = plain
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def checkpoint_entry(module: ImageClassifier) -> dict[str, Any]:
    """The ``"inference"`` entry of ``module``'s checkpoints."""
    from lightning_modules.evaluation import class_names

    try:
        datamodule = getattr(module.trainer, "datamodule", None)
    except RuntimeError:  # not attached to a Trainer
        datamodule = None
    return {
        "network": module.network_spec,
        "data": data_spec(datamodule) if datamodule is not None else None,
        "classes": class_names(datamodule, module.num_classes),
    }


# ----- building from it --------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``checkpoint_loading.load_checkpoint`` (``weights_only=True``), after a look at the first bytes: a file
    that is no PyTorch file at all is said to be one, not taken for a pickle with unsafe objects."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as handle:
            head = handle.read(4)
        # torch.save writes a zip archive (before torch 1.6, a pickle starting with byte 0x80).
        if head != b"PK\x03\x04" and head[:1] != b"\x80":
            raise CheckpointError(f"{path} is not a checkpoint: not a file written by torch.save (a zip archive)")
    return load_checkpoint(path)


def _instantiate(spec: dict[str, Any], base: type, what: str, path: Path | str) -> Any:
    """``spec`` built by jsonargparse as LightningCLI builds it, refusing anything but a ``base`` subclass."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, "item", fail_untyped=False, required=True)
    try:
        return parser.instantiate(parser.parse_object({"item": spec})).item
    except Exception as error:  # noqa: BLE001 - jsonargparse's and the constructor's errors alike
        raise CheckpointError(
            f"{path}: cannot rebuild its {what} {spec.get('class_path')!r} ({_first_cause(error)}). Pass {what}= "
            "yourself, or make that class importable (its package installed, or its folder on PYTHONPATH)"
        ) from None


def _first_cause(error: Exception) -> str:
    """The first reason in jsonargparse's multi-line report (its "Errors:" list), on one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith("- ") and "NoneType" not in line:  # not the "or None" alternative of the type
            cause = line[2:]
            return f"{cause} {lines[index + 1]}" if cause.endswith(":") and index + 1 < len(lines) else cause
    return lines[0] if lines else type(error).__name__


def network_from_checkpoint(checkpoint: dict[str, Any], path: Path | str) -> nn.Module:
    """The network the checkpoint records, freshly initialised (its weights are loaded by the caller)."""
    spec = (checkpoint.get(ENTRY) or {}).get("network")
    if not spec:
        raise CheckpointError(
            f"{path} does not record its network (written before checkpoints carried it, or by a model built "
            "outside `ablate`); pass it: network=architectures.create_model('<name>', num_classes=..., in_chans=...)"
        )
    return _instantiate(spec, nn.Module, "network", path)


def datamodule_from_checkpoint(checkpoint: dict[str, Any], path: Path | str) -> pl.LightningDataModule | None:
    """The data module the checkpoint records, unset-up, with its saved state (CIFAR's ``pixel_mean``)."""
    spec = (checkpoint.get(ENTRY) or {}).get("data")
    if not spec:
        return None
    datamodule = _instantiate(spec, pl.LightningDataModule, "datamodule", path)
    state = checkpoint.get(type(datamodule).__qualname__)
    if state:
        datamodule.load_state_dict(state)
    return datamodule


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself when it is a file; in a run folder (``runs/<name>/version_N``) its ``final.ckpt``,
    else its ``last.ckpt``, said on stderr."""
    path = Path(path)
    if not path.is_dir():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    for name in RUN_CHECKPOINTS:
        if (folder / name).is_file():
            print(f"load_model: using {folder / name}", file=sys.stderr)
            return folder / name
    found = sorted(item.name for item in folder.glob("*.ckpt"))
    hint = f"; it holds {', '.join(found)}: give one of them" if found else ""
    raise CheckpointError(f"{path} is a folder without {' or '.join(RUN_CHECKPOINTS)} in {folder}{hint}")


# ----- predicting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One image's prediction: its file, the predicted class (index and name) and its probability."""

    file: str
    index: int
    label: str
    probability: float


class Predictor:
    """An eval-mode classifier with the preprocessing its data module evaluated with.

    Args:
        model: The trained classifier (put in eval mode).
        datamodule: The data module it was evaluated with (not set up); None when the checkpoint
            names none: ``__call__`` then takes only model-ready float batches.
        classes: Class names, index order.
    """

    def __init__(
        self, model: ImageClassifier, datamodule: pl.LightningDataModule | None, classes: Sequence[str]
    ) -> None:
        self.model = model.eval()
        self.datamodule = datamodule
        self.classes = list(classes)
        if getattr(datamodule, "whiten", "none") != "none":
            # The GCN+ZCA matrix is fitted on the training split at setup and not saved with the run.
            raise CheckpointError(
                f"this run's data module whitens its images (whiten={datamodule.whiten!r}), and the whitening "
                "matrix is not in the checkpoint; preprocess with the data module itself (setup() on the data)"
            )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _as_uint8(self, image: Image | torch.Tensor) -> torch.Tensor:
        """A PIL image or uint8 ``(C, H, W)``/``(H, W)`` tensor as uint8 ``(in_chans, H, W)``."""
        from torchvision.transforms.v2 import functional as TF

        in_chans = self.datamodule.in_chans
        if not isinstance(image, torch.Tensor):
            image = TF.pil_to_tensor(image.convert("L" if in_chans == 1 else "RGB"))
        if image.dtype != torch.uint8:
            raise TypeError(
                f"raw images are uint8 tensors or PIL images, got a {image.dtype} tensor; "
                "a float batch must already be preprocessed (N, C, H, W)"
            )
        image = image.unsqueeze(0) if image.ndim == 2 else image
        if image.shape[0] == 3 and in_chans == 1:
            image = TF.rgb_to_grayscale(image)
        elif image.shape[0] == 1 and in_chans == 3:
            image = image.expand(3, -1, -1)
        if image.shape[0] != in_chans:
            raise ValueError(f"an image has {image.shape[0]} channels; this model takes {in_chans}")
        return image

    def preprocess(self, images: Sequence[Image | torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Raw images -> the model's input batch, as the data module's evaluation made it.

        Per image: channels to the data's (PIL ``convert``), then the module's ``eval_transform``
        (ImageNet-style resize + centre crop) where it has one, else a resize to the data's native
        size where the image differs (the data modules themselves only ever see that size); then the
        module's own batch normalisation (``transform_batch(..., train=False)``).
        """
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            return images  # already the model's input
        if self.datamodule is None:
            raise CheckpointError(
                "the checkpoint names no data module, so raw images cannot be preprocessed; "
                "give normalised float batches, or load_model(..., datamodule=<the data module>)"
            )
        if isinstance(images, torch.Tensor) and images.ndim in (2, 3):
            images = [images]
        from torchvision.transforms.v2 import functional as TF

        eval_transform = getattr(self.datamodule, "eval_transform", None)
        native = tuple(getattr(type(self.datamodule), "image_size", None) or self.datamodule.image_size)
        batch = []
        for image in images:
            image = self._as_uint8(image)
            if eval_transform is not None:
                image = eval_transform(image)
            elif tuple(image.shape[-2:]) != native:
                image = TF.resize(image, list(native), antialias=True)
            batch.append(image)
        uint8 = torch.stack(batch)
        labels = torch.zeros(len(uint8), dtype=torch.long)
        return self.datamodule.transform_batch((uint8.to(self.device), labels.to(self.device)), train=False)[0]

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image | torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, num_classes)`` of raw images (PIL images, uint8 tensors, or a uint8
        ``(N, C, H, W)`` batch) or of an already preprocessed float batch, as ``ablate predict`` computes
        them (EMA weights under ``EMA(evaluate=True)``, flip averaging under ``TestTime(flip=True)``)."""
        return self.model.predict_step(self.preprocess(images).to(self.device), 0)["probs"]

    def predict_folder(self, folder: str | Path, batch_size: int = 64) -> list[Prediction]:
        """One ``Prediction`` per image file under ``folder`` (searched recursively, sorted by path)."""
        from datamodules.image_folder import IMAGE_EXTENSIONS, read_image

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist")
        files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"{folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        rows = []
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            probs = self([read_image(path) for path in chunk])
            confidence, index = probs.max(dim=1)
            for path, i, p in zip(chunk, index.tolist(), confidence.tolist(), strict=True):
                rows.append(Prediction(str(path), i, self.classes[i], p))
        return rows


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    network: nn.Module | None = None,
    datamodule: pl.LightningDataModule | None = None,
) -> Predictor:
    """A checkpoint of ``ablate fit`` (or its run folder) as an eval-mode ``Predictor``.

    Args:
        path: A ``.ckpt`` file, or a run folder ``runs/<name>/version_N`` (its ``final.ckpt``, else
            ``last.ckpt``; which one is said on stderr).
        device: Where the model runs.
        network: The network, for checkpoints that do not record it (written before they did).
        datamodule: The data module whose evaluation preprocessing to use, when the checkpoint names
            none (or to override it).

    Raises:
        CheckpointError: a missing, unreadable or unsafe file, or one that is no classifier checkpoint.
    """
    from lightning_modules.classifier import ImageClassifier

    path = find_checkpoint(path)
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} holds no model weights ('state_dict'): it is not a checkpoint of `ablate fit`")
    network = network if network is not None else network_from_checkpoint(checkpoint, path)
    if datamodule is None:
        datamodule = datamodule_from_checkpoint(checkpoint, path)
    model = ImageClassifier.load_from_checkpoint(path, map_location=device, network=network)
    classes = (checkpoint.get(ENTRY) or {}).get("classes") or [str(i) for i in range(model.num_classes)]
    return Predictor(model.to(device), datamodule, classes)
