"""MNIST (LeCun et al. 1998) through ``torchvision.datasets.MNIST``, held in memory.

The official 10k test set stays the test set; validation is a seeded 5k carved from the 60k
training images.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torchvision.datasets import MNIST

from datamodules.base import DataNotFoundError, InMemoryImageDataModule, TensorImageDataset
from datamodules.batch_augment import random_translate

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def check_idx_file(path: Path) -> None:
    """Raise a ValueError naming ``path`` when its size disagrees with its own IDX header.

    Catches truncated downloads before torchvision's parser fails with a reshape error.
    Gzipped files are left to the parser.
    """
    if not path.is_file():
        return
    with path.open("rb") as handle:
        header = handle.read(4)
        if len(header) < 4 or header[:2] != b"\x00\x00" or header[2] != 0x08:
            raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number {header.hex()})")
        dims = struct.unpack(f">{header[3]}I", handle.read(4 * header[3]))
    expected = 4 + 4 * len(dims) + math.prod(dims)
    actual = path.stat().st_size
    if actual != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: its header promises {expected:,} bytes "
            f"(shape {tuple(dims)}) but the file has {actual:,}. Delete it and download again."
        )


class MNISTDataModule(InMemoryImageDataModule):
    """MNIST digits, 1x28x28, 10 classes.

    Args:
        data_dir: Root holding ``MNIST/raw/`` (default ``$ABLATE_DATA_DIR`` or ``./data``).
        batch_size: Images per batch per process.
        val_size: Training images held out for validation (default 5,000 of 60,000).
        seed: Seed of the train/validation split.
        download: Download when missing and the network allows.
        num_workers: DataLoader workers (0 is fastest for in-memory batches).
        augment: ``"none"`` or ``"shift"`` (random translations of up to ``max_shift`` pixels).
        max_shift: Largest translation, in pixels, of the ``"shift"`` augmentation.
        train_transforms: Extra per-image uint8 tensor transforms after the preset (run per image).
        random_erasing: Probability of random erasing per training image (0 = off).
        mixup_alpha: MixUp's Beta parameter (0 = off); training targets become soft.
        cutmix_alpha: CutMix's Beta parameter (0 = off); training targets become soft.
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
        batch_size: int = 128,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = True,
        num_workers: int = 0,
        augment: Literal["none", "shift"] = "none",
        max_shift: int = 2,
        train_transforms: list[Callable] | None = None,
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
    ) -> None:
        super().__init__(
            data_dir, batch_size, val_size, seed, download, num_workers,
            train_transforms, random_erasing, mixup_alpha, cutmix_alpha,
        )  # fmt: skip
        self.augment = augment
        self.max_shift = max_shift

    def _missing_files(self) -> list[str]:
        raw = self.data_dir / "MNIST" / "raw"
        return [name for name in MNIST_FILES if not (raw / name).is_file() and not (raw / f"{name}.gz").is_file()]

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
        for kind in ("images", "labels"):
            check_idx_file(self.data_dir / "MNIST" / "raw" / f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte")
        try:
            dataset = MNIST(self.data_dir, train=train, download=False)
        except Exception as error:  # whatever the parser trips on, name the folder
            raise ValueError(f"MNIST files under {self.data_dir / 'MNIST' / 'raw'} are unreadable: {error}") from error
        images = dataset.data.unsqueeze(1).contiguous()  # (N, 1, 28, 28) uint8
        labels = dataset.targets
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"MNIST labels outside 0..9 in {self.data_dir}: found {int(labels.max())}")
        return TensorImageDataset(images, labels)

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        if self.augment == "shift":
            return random_translate(images, self.max_shift)
        return images
