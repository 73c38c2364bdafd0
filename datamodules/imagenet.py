"""ImageNet-1k (ILSVRC 2012, Russakovsky et al. 2015), decoded per image in DataLoader workers.

Too large for memory, so this module is the classic pipeline: workers read and decode each file
(``torchvision.io.decode_image``, PIL fallback; grayscale and CMYK JPEGs become RGB) and run a
per-image ``torchvision.transforms.v2`` pipeline on uint8 tensors; batches cross to the device as
uint8 and are normalised there, followed by random erasing / MixUp / CutMix like every module.

Layouts under ``data_dir``, auto-detected:

* torchvision's ``datasets.ImageNet``: ``meta.bin`` (or ``ILSVRC2012_devkit_t12.tar.gz``) with
  ``train/<wnid>/`` and ``val/<wnid>/`` (extracted from ``ILSVRC2012_img_{train,val}.tar`` by
  torchvision in ``prepare_data`` when only the archives are there); class names from the devkit.
* a plain image-folder tree ``train/<class>/*`` + ``val/<class>/*`` (e.g. the usual ``valprep.sh``
  layout, Imagenette, ImageNet-100); ``num_classes`` must match the number of class folders.

Splits: validation is ``val_size`` images (default 10,000, about 10 per class) carved from the
1.28M training images with ``seed``, seen through the evaluation transform; the official 50k
``val`` set is the test set, never used for model selection. ``val_size=0`` means no validation
loop (the choice for reproducing papers that report the official val set only, with a fixed
schedule). Training uses RandomResizedCrop + flip (Szegedy et al. 2015); evaluation resizes the
short side to ``resize_size`` (default ``crop_size / 0.875``: 256 for 224, 342 for Inception's 299)
and centre-crops ``crop_size``.
Validation and test are stored in class-interleaved order (``base.class_interleaved_order``), so a
limited evaluation sees every class; ``source_index`` keeps each image's place in the official split.

Corrupt files can only be found when read: with ``skip_corrupt=False`` the worker raises an error
naming the file; with ``skip_corrupt=True`` it warns (counting per worker) and the batch is one
image shorter.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.datasets import ImageNet
from torchvision.datasets.imagenet import ARCHIVE_META, META_FILE, load_meta_file

from datamodules.base import (
    DataFormatError,
    DataNotFoundError,
    ImageDataModule,
    class_interleaved_order,
    default_data_dir,
    seeded_split,
)
from datamodules.image_folder import CorruptImageError, find_classes, read_image, scan_split
from datamodules.presets import ImageNetPreset, imagenet_eval_transform, imagenet_train_transform
from datamodules.samplers import split_loader

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFileDataset(Dataset):
    """``(path, label)`` samples decoded to RGB uint8 and transformed per image.

    Args:
        samples: Image paths and labels.
        transform: Per-image transform of a uint8 ``(3, H, W)`` tensor.
        skip_corrupt: Return None for an unreadable image (``collate_skip_none`` drops it) after a
            warning, instead of raising.
        source_index: Each sample's position in the official split's scan order, when the samples
            are a reordered or carved selection of it (see ``TensorImageDataset``).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable | None = None,
        skip_corrupt: bool = False,
        source_index: torch.Tensor | None = None,
    ) -> None:
        self.samples = list(samples)
        if source_index is not None and len(source_index) != len(self.samples):
            raise ValueError(f"{len(self.samples)} samples but {len(source_index)} source indices")
        self.source_index = source_index
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.samples[index]
        try:
            image = read_image(path, rgb=True)
        except CorruptImageError as error:
            if not self.skip_corrupt:
                raise
            self.skipped += 1
            warnings.warn(
                f"skipping {error.path}: unreadable ({self.skipped} skipped so far by this process)",
                stacklevel=2,
            )
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def collate_skip_none(batch: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """``default_collate`` without the images ``ImageFileDataset`` had to skip."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        raise DataFormatError(f"all {len(batch)} images of a batch were unreadable; check the data")
    return default_collate(kept)


def _default_workers() -> int:
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class ImageNetDataModule(ImageDataModule):
    """ImageNet (or any ``train/`` + ``val/`` image-folder tree), decoded on the fly by workers.

    Args:
        data_dir: Root of the layout (see the module docstring); default ``$ABLATE_DATA_DIR`` or ``./data``.
        batch_size: Images per batch per process (under DDP one step sees ``world_size * batch_size``).
        val_size: Training images carved for validation with ``seed`` (0 = no validation loop).
        seed: Seed of the train/validation split.
        num_workers: Decoding workers per process (None = min(8, CPUs)).
        num_classes: Class folders expected (1000 for ImageNet-1k); checked in ``setup``.
        augment: Training preset: ``imagenet`` (RandomResizedCrop + flip), ``none`` (eval transform),
            ``lecture``, ``autoaugment`` / ``randaugment`` / ``trivialaugment`` (+ ImageNet policy).
        crop_size: Side of training crops and evaluation centre crops (224; 299 for Inception v3).
        resize_size: Short side before the evaluation centre crop (None = ``crop_size / 0.875``).
        crop_scale: Area range of RandomResizedCrop ((0.08, 1.0), Szegedy et al.).
        train_transforms: Extra per-image uint8 tensor transforms after the preset.
        skip_corrupt: Skip unreadable images with a warning instead of failing.
        pin_memory: Pin batches in page-locked memory when CUDA is available.
        **kwargs: The batch-level augmentation every data module shares (``random_erasing``,
            ``mixup_alpha``, ``cutmix_alpha``): see ``ImageDataModule``.
    """

    in_chans = 3
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 256,
        val_size: int = 10_000,
        seed: int = 0,
        num_workers: int | None = None,
        num_classes: int = 1000,
        augment: ImageNetPreset = "imagenet",
        crop_size: int = 224,
        resize_size: int | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        train_transforms: list[Callable] | None = None,
        skip_corrupt: bool = False,
        pin_memory: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # jsonargparse follows **kwargs: the CLI lists the base's arguments
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data_dir = Path(data_dir if data_dir is not None else default_data_dir()).expanduser()
        self.batch_size = batch_size
        self.val_size = val_size
        self.seed = seed
        self.num_workers = _default_workers() if num_workers is None else num_workers
        self.num_classes = num_classes
        self.classes = ()
        self.augment = augment
        self.crop_size = crop_size
        self.resize_size = resize_size or round(crop_size / 0.875)
        self.image_size = (crop_size, crop_size)
        self.train_transform = imagenet_train_transform(
            augment, crop_size, self.resize_size, crop_scale, list(train_transforms or [])
        )
        self.eval_transform = imagenet_eval_transform(crop_size, self.resize_size)
        self.skip_corrupt = skip_corrupt
        self.pin_memory = pin_memory
        self.train_set: ImageFileDataset | None = None
        self.val_set: ImageFileDataset | None = None
        self.test_set: ImageFileDataset | None = None

    def detect_layout(self) -> str | None:
        """``"torchvision"``, ``"folder"`` or None (nothing usable under ``data_dir``)."""
        root = self.data_dir
        if (root / META_FILE).is_file() or (root / ARCHIVE_META["devkit"][0]).is_file():
            return "torchvision"
        if (root / "train").is_dir() and (root / "val").is_dir():
            return "folder"
        return None

    def _not_found(self, cause: str) -> DataNotFoundError:
        root = self.data_dir
        return DataNotFoundError(
            f"ImageNet not found under {root} ({cause}). Expected torchvision's layout "
            f"({ARCHIVE_META['devkit'][0]} or meta.bin, plus {ARCHIVE_META['train'][0]} and "
            f"{ARCHIVE_META['val'][0]} or their extracted train/<wnid>/ and val/<wnid>/ folders) "
            f"or an image-folder tree {root}/train/<class>/*.JPEG plus "
            f"{root}/val/<class>/*. ImageNet cannot be downloaded automatically: get it from "
            "https://image-net.org and point --data.data_dir (or $ABLATE_DATA_DIR) at it."
        )

    def prepare_data(self) -> None:
        """Check the layout; let torchvision parse the devkit and extract archives if needed."""
        layout = self.detect_layout()
        if layout is None:
            raise self._not_found("no meta.bin, devkit archive, or train/ + val/ folders")
        if layout == "torchvision":
            for split in ("train", "val"):
                if (self.data_dir / META_FILE).is_file() and (self.data_dir / split).is_dir():
                    continue
                try:
                    ImageNet(str(self.data_dir), split=split)  # parses the devkit, extracts the archive
                except (RuntimeError, FileNotFoundError) as error:
                    raise self._not_found(f"torchvision could not prepare the {split} split: {error}") from error

    def _scan(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        layout = self.detect_layout()
        if layout is None:
            raise self._not_found("no meta.bin, devkit archive, or train/ + val/ folders")
        train_root, val_root = self.data_dir / "train", self.data_dir / "val"
        classes = find_classes(train_root, val_root, num_classes=self.num_classes, dataset="ImageNet")
        train_files, train_labels = scan_split(train_root, classes, "ImageNet")
        val_files, val_labels = scan_split(val_root, classes, "ImageNet")
        names = classes
        if layout == "torchvision" and (self.data_dir / META_FILE).is_file():
            wnid_to_names = self._class_names()
            names = [wnid_to_names[wnid][0] if wnid in wnid_to_names else wnid for wnid in classes]
        self.classes = tuple(names)
        return (
            list(zip(train_files, train_labels, strict=True)),
            list(zip(val_files, val_labels, strict=True)),
        )

    def _class_names(self) -> dict[str, tuple[str, ...]]:
        """``{wnid: (name, synonyms...)}`` from torchvision's ``meta.bin`` (read with ``weights_only``)."""
        meta = self.data_dir / META_FILE
        try:
            wnid_to_names = load_meta_file(str(self.data_dir))[0]
            if not isinstance(wnid_to_names, dict) or not all(
                isinstance(names, (tuple, list)) and names and isinstance(names[0], str)
                for names in wnid_to_names.values()
            ):
                raise ValueError("its first item is not a {wnid: (class name, ...)} table")
        except Exception as error:  # UnpicklingError, RuntimeError, a tuple of the wrong shape...
            raise DataFormatError(
                f"ImageNet: {meta} is unreadable ({type(error).__name__}: {(str(error).splitlines() or [''])[0]}). "
                "Delete it: torchvision rebuilds it from the devkit archive, and without either the "
                "folder names are the class names."
            ) from None
        return wnid_to_names

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:  # split once, however many stages ask
            return
        train_samples, test_samples = self._scan()
        if self.val_size == 0:
            train_idx, val_idx = torch.arange(len(train_samples)), torch.arange(0)
        else:
            train_idx, val_idx = seeded_split(len(train_samples), self.val_size, self.seed)
        self.train_set = ImageFileDataset(
            [train_samples[i] for i in train_idx.tolist()], self.train_transform, self.skip_corrupt
        )
        # Evaluation splits in class-interleaved order: a limited evaluation sees every class.
        val_labels = torch.tensor([train_samples[i][1] for i in val_idx.tolist()], dtype=torch.long)
        val_idx = val_idx[class_interleaved_order(val_labels, self.seed)]
        test_idx = class_interleaved_order(torch.tensor([label for _, label in test_samples]), self.seed)
        self.val_set = ImageFileDataset(
            [train_samples[i] for i in val_idx.tolist()], self.eval_transform, self.skip_corrupt, val_idx
        )
        self.test_set = ImageFileDataset(
            [test_samples[i] for i in test_idx.tolist()], self.eval_transform, self.skip_corrupt, test_idx
        )

    def _loader(self, dataset: ImageFileDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() must run before the dataloaders are requested")
        return split_loader(
            dataset,
            shuffle,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_skip_none,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle,  # full training batches (BatchNorm, MixUp pairing); eval sees every image
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_size == 0 else self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
