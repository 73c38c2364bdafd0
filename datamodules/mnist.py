"""MNIST (LeCun et al. 1998), held in memory.

The four IDX files are read by ``datamodules.idx`` (plain or ``.gz``, checked against their headers);
``torchvision.datasets.MNIST`` only downloads them. The official 10k test set stays the test set;
validation is a seeded 5k carved from the 60k training images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torchvision.datasets import MNIST

from datamodules.base import DataFormatError, DataNotFoundError, InMemoryImageDataModule, TensorImageDataset
from datamodules.batch_augment import random_translate
from datamodules.idx import read_idx

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MNISTDataModule(InMemoryImageDataModule):
    """MNIST digits, 1x28x28, 10 classes.

    Args:
        data_dir: Root holding ``MNIST/raw/`` (default ``$ABLATE_DATA_DIR`` or ``./data``).
        augment: ``"none"`` or ``"shift"`` (random translations of up to ``max_shift`` pixels).
        max_shift: Largest translation, in pixels, of the ``"shift"`` augmentation.
        **kwargs: The arguments every in-memory data module shares (``batch_size``, ``val_size``,
            ``seed``, ``download``, ``num_workers``, ``train_transforms``, ``random_erasing``,
            ``mixup_alpha``, ``cutmix_alpha``): see ``InMemoryImageDataModule``.
    """

    num_classes = 10
    in_chans = 1
    image_size = (28, 28)
    # Statistics of the 60k training images (the usual 0.1307 / 0.3081).
    mean = (0.1307,)
    std = (0.3081,)
    classes = tuple(str(digit) for digit in range(10))

    def __init__(
        self,
        data_dir: str | None = None,
        *,
        augment: Literal["none", "shift"] = "none",
        max_shift: int = 2,
        **kwargs: Any,
    ) -> None:
        # jsonargparse follows **kwargs into the base class: the CLI lists and checks its arguments too.
        super().__init__(data_dir=data_dir, **kwargs)
        self.augment = augment
        self.max_shift = max_shift

    def _file(self, name: str) -> Path | None:
        """``MNIST/raw/<name>``, else its ``.gz`` (read compressed), else None."""
        raw = self.data_dir / "MNIST" / "raw"
        for path in (raw / name, raw / f"{name}.gz"):
            if path.is_file():
                return path
            if path.exists():
                raise DataFormatError(f"{path} is not a file (a folder?); expected an IDX file")
        return None

    def _missing_files(self) -> list[str]:
        return [name for name in MNIST_FILES if self._file(name) is None]

    def _not_found(self, cause: str) -> DataNotFoundError:
        raw = self.data_dir / "MNIST" / "raw"
        return DataNotFoundError(
            f"MNIST not found under {raw} ({cause}). Expected the four IDX files "
            f"{', '.join(MNIST_FILES)} (optionally .gz) in <data_dir>/MNIST/raw/. "
            "Point --data.data_dir (or $ABLATE_DATA_DIR) at the folder that contains MNIST/, "
            "or allow the download."
        )

    def prepare_data(self) -> None:
        if not self._missing_files():
            return
        if not self.download:
            raise self._not_found(f"missing {', '.join(self._missing_files())}; download=False")
        try:
            MNIST(self.data_dir, train=True, download=True)
            MNIST(self.data_dir, train=False, download=True)
        except Exception as error:  # URLError, socket errors, HTTP errors: all mean "offline"
            raise self._not_found(f"download failed: {error}") from error

    def load_split(self, train: bool) -> TensorImageDataset:
        missing = self._missing_files()
        if missing:
            raise self._not_found(f"missing {', '.join(missing)}")
        prefix = "train" if train else "t10k"
        images_path = self._file(f"{prefix}-images-idx3-ubyte")
        labels_path = self._file(f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.shape[1:] != self.image_size:
            raise DataFormatError(f"{images_path} holds an array of shape {images.shape}; MNIST images are (N, 28, 28)")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataFormatError(
                f"{labels_path} holds {labels.shape} labels for the {len(images)} images of {images_path}; "
                "the two files of a split must hold one label per image"
            )
        if not len(images):
            raise DataFormatError(f"{images_path} holds no images")
        if labels.max() >= self.num_classes:
            raise DataFormatError(f"MNIST labels outside 0..9 in {labels_path}: found {int(labels.max())}")
        # Copies: the arrays are read-only views of the file's bytes.
        return TensorImageDataset(
            torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype("int64"))
        )

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        if self.augment == "shift":
            return random_translate(images, self.max_shift)
        return images
