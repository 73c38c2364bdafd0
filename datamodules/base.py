"""What every data module shares: the data root, the seeded split, the batch-level training tail.

Datasets that fit in memory (MNIST, CIFAR) are held as one uint8 tensor. A batch is a single
fancy-index into it (no per-image Python work, no PIL), and normalisation plus augmentation run
on the whole batch after it reaches the training device (`on_after_batch_transfer`), the approach
of the fastest CIFAR-10 trainers (Keller Jordan's airbench). Validation and test batches skip the
augmentation, so the validation split is seen through eval transforms.

Validation and test splits are held in class-interleaved order (``class_interleaved_order``), so
a limited evaluation (``limit_val_batches``, ``limit_test_batches``, "the first N images") sees every
class in proportion; ``TensorImageDataset.source_index`` keeps each image's place in the official split.

Every module, in memory or not, ends a training batch the same way on the device: normalise,
then optionally random erasing (Zhong et al. 2017) and MixUp / CutMix, which turn the integer
labels into soft targets of shape ``(N, num_classes)``.

``batch_size`` is per process everywhere: under DDP Lightning wraps the sampler in a
``DistributedSampler``, each of the N processes sees ``1/N`` of the split per epoch in batches of
``batch_size``, and one optimiser step averages over ``N * batch_size`` images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from datamodules.batch_augment import BatchMix, apply_per_sample, random_erasing, single_thread_on_cpu
from datamodules.samplers import split_loader


def default_data_dir() -> str:
    """``$ABLATE_DATA_DIR`` when set, else ``./data``."""
    return os.environ.get("ABLATE_DATA_DIR", "./data")


def default_cache_dir() -> str:
    """``$ABLATE_CACHE_DIR`` when set, else ``~/.cache/ablate`` (decoded images, ZCA matrices)."""
    return os.environ.get("ABLATE_CACHE_DIR", str(Path("~/.cache/ablate").expanduser()))


class DataNotFoundError(FileNotFoundError):
    """The dataset is not on disk and cannot be downloaded; the message says what to put where."""


class DataFormatError(ValueError):
    """The dataset is there but malformed (empty class, wrong channels, bad labels, corrupt file)."""


class TensorImageDataset(Dataset):
    """Images as one uint8 ``(N, C, H, W)`` tensor with int64 labels, indexed a batch at a time.

    ``__getitems__`` lets the DataLoader fetch a whole batch with one indexing operation; any
    sampler still works (Lightning swaps in a ``DistributedSampler`` under DDP).

    Args:
        images: uint8 ``(N, C, H, W)``.
        labels: Class indices, ``N``.
        source_index: Each item's position in the official split it was taken from, when the
            items are a reordered or carved selection of it (validation, the class-interleaved test
            order); prediction files report this position, so it means the same whatever the order.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, source_index: torch.Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if source_index is not None and len(source_index) != len(images):
            raise ValueError(f"{len(images)} images but {len(source_index)} source indices")
        self.images = images
        self.labels = labels.long()
        self.source_index = source_index

    def select(self, index: torch.Tensor) -> TensorImageDataset:
        """The items at ``index``, in that order, remembering their positions in the official split."""
        source = index if self.source_index is None else self.source_index[index]
        return TensorImageDataset(self.images[index], self.labels[index], source)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        with single_thread_on_cpu(self.images.device):  # a 0.4 MB gather: threads only add hand-offs
            return self.images[index], self.labels[index]


def _keep_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for ``TensorImageDataset``: ``__getitems__`` already built the batch."""
    return batch


def seeded_split(num_items: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices: a permutation drawn from its own seeded generator.

    The split depends on ``seed`` alone (never on the global RNG), so every run, process and
    DDP rank carves the same validation set.
    """
    if not 0 <= val_size < num_items:
        raise ValueError(f"val_size must be in [0, {num_items}), got {val_size}")
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def class_interleaved_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A permutation of ``labels``' positions in which every prefix holds each class in proportion.

    Evaluation splits are read front to back, and ``limit_val_batches`` / ``limit_test_batches``
    (or any tool evaluating "the first N") read only a prefix; in the stored, class-sorted order
    that prefix is one class. Stratified order instead: item ``j`` of class ``c`` (``n_c`` items,
    shuffled within the class) gets the key ``(j + 0.5) / n_c``, its ideal place as a fraction of
    the split, and items are sorted by key, equal keys in a seeded random order of the classes.
    A prefix up to key ``t`` then holds ``round(t * n_c)`` items of each class. For a prefix of
    ``k`` items that is within 1 of ``k * n_c / N`` for every class as long as no class is more
    frequent than ``1 / (C - 2)`` (``C`` classes; always for balanced splits), within
    ``1/2 + (C - 2) n_c / 2N`` in general. Under DDP rank ``r`` of ``W`` reads ``r::W``, so the
    first ``m`` items of all ranks together are this order's first ``m * W``: balanced as well.

    The order depends on ``labels`` and ``seed`` alone (its own generator, never the global RNG):
    the same on every run, process and DDP rank.
    """
    labels = torch.as_tensor(labels).long().cpu()
    generator = torch.Generator().manual_seed(seed)
    classes, counts = labels.unique(return_counts=True)  # sorted classes
    # Grouped by class, shuffled within each (a prefix should not always take the first files
    # of every class folder): a stable sort by label of a random permutation.
    shuffled = torch.randperm(len(labels), generator=generator)
    grouped = shuffled[torch.argsort(labels[shuffled], stable=True)]
    sizes = counts.repeat_interleave(counts).double()
    within = torch.arange(len(labels)) - (counts.cumsum(0) - counts).repeat_interleave(counts)
    keys = torch.empty(len(labels), dtype=torch.float64)
    # (j + 0.5) / n is correctly rounded, so equal fractions of different classes compare equal
    # and fall to the tie-break.
    keys[grouped] = (within + 0.5) / sizes
    class_rank = torch.empty(len(classes), dtype=torch.long)
    class_rank[torch.randperm(len(classes), generator=generator)] = torch.arange(len(classes))
    item_rank = class_rank[torch.searchsorted(classes, labels)]
    # Two stable sorts: by class rank, then by key; equal keys keep the class-rank order.
    by_rank = torch.argsort(item_rank, stable=True)
    return by_rank[torch.argsort(keys[by_rank], stable=True)]


def check_images(images: torch.Tensor, labels: torch.Tensor, *, in_chans: int, num_classes: int, where: str) -> None:
    """Clear errors, before training starts, for data the model cannot take."""
    if images.shape[1] != in_chans:
        raise DataFormatError(
            f"{where}: images have {images.shape[1]} channel(s) but this data module feeds "
            f"{in_chans}-channel models (in_chans={in_chans}). Convert the images (e.g. grayscale to RGB "
            "with PIL's Image.convert('RGB')) or use the data module made for this data."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise DataFormatError(
            f"{where}: label {int(bad[0])} is outside 0..{num_classes - 1} ({len(bad)} such labels); "
            f"this data module has num_classes={num_classes}."
        )


class ImageDataModule(pl.LightningDataModule):
    """The training tail every data module shares, run on the device in ``on_after_batch_transfer``.

    Args:
        random_erasing: Probability of erasing one random box per training image (Zhong et al.
            2017, arXiv 1708.04896; scale 0.02-0.33, ratio 0.3-3.3, filled with the mean), 0 = off.
        mixup_alpha: Beta(alpha, alpha) of MixUp (Zhang et al. 2018, arXiv 1710.09412), 0 = off.
        cutmix_alpha: Beta(alpha, alpha) of CutMix (Yun et al. 2019, arXiv 1905.04899), 0 = off.
            With both on, each batch uses one of the two at random (timm's convention). While
            either is on, training batches carry soft targets ``(N, num_classes)`` float.
    """

    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def __init__(self, random_erasing: float = 0.0, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= random_erasing <= 1.0:
            raise ValueError(f"random_erasing is a probability, got {random_erasing}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        self.random_erasing = random_erasing
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self._mix: BatchMix | None = None

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Training-time augmentation of a uint8 batch on its device; identity by default."""
        return images

    def custom_augment(self, images: torch.Tensor) -> torch.Tensor:
        """User-supplied training transforms, after the named preset; identity by default."""
        return images

    def augment_normalized(self, images: torch.Tensor) -> torch.Tensor:
        """Training-time geometric augmentation of the normalised float batch (a crop pads with
        zeros, i.e. the mean); identity by default."""
        return images

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` -> float, scaled to [0, 1] and standardised per channel."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float().div_(255) - mean) / std

    def postprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float batch after normalisation, every split (e.g. a resize); identity by default."""
        return images

    def transform_batch(
        self, batch: tuple[torch.Tensor, torch.Tensor], train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and int labels -> model input; ``train`` adds augmentation and mixing.

        On the CPU this runs with one thread (see ``batch_augment.single_thread_on_cpu``).
        """
        images, labels = batch
        with single_thread_on_cpu(images.device):
            return self._transform_batch(images, labels, train)

    def _transform_batch(
        self, images: torch.Tensor, labels: torch.Tensor, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if train:
            images = self.custom_augment(self.augment_batch(images))
        images = self.normalize(images)
        if train:
            images = self.augment_normalized(images)
        images = self.postprocess(images)
        if train:
            if self.random_erasing > 0:
                images = random_erasing(images, p=self.random_erasing)
            if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
                if self._mix is None:
                    self._mix = BatchMix(self.num_classes, self.mixup_alpha, self.cutmix_alpha)
                images, labels = self._mix(images, labels)
        return images, labels

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        training = self.trainer is not None and self.trainer.training
        return self.transform_batch(batch, train=training)


class InMemoryImageDataModule(ImageDataModule):
    """Base for datasets held in memory as uint8 tensors; subclasses implement ``load_split``.

    Args:
        data_dir: Root the dataset lives under (default ``$ABLATE_DATA_DIR`` or ``./data``).
        batch_size: Images per batch per process. Under DDP each of the N processes draws its own
            batch of this size, so one optimiser step sees ``N * batch_size`` images.
        val_size: Images carved from the official training split for validation (0 = none).
        seed: Seed of the train/validation split (independent of the training seed).
        download: Download the dataset when it is missing and the network allows.
        num_workers: DataLoader workers; batches are single tensor indexing ops, so 0 is fastest.
        train_transforms: Extra per-image transforms applied after the named preset, e.g.
            ``torchvision.transforms.v2`` classes given as ``class_path`` entries. Each maps a uint8
            ``(C, H, W)`` tensor to one of the same shape; they run image by image on the device.
            Give ranges as lists (``degrees: [-10, 10]``): jsonargparse cannot write torchvision's
            ``numbers.Number`` hints back into the saved config.
        **kwargs: The batch-level augmentation every data module shares (``random_erasing``,
            ``mixup_alpha``, ``cutmix_alpha``): see ``ImageDataModule``.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = True,
        num_workers: int = 0,
        train_transforms: list[Callable] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # jsonargparse follows **kwargs: the CLI lists the base's arguments
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data_dir = Path(data_dir if data_dir is not None else default_data_dir()).expanduser()
        self.batch_size = batch_size
        self.val_size = val_size
        self.seed = seed
        self.download = download
        self.num_workers = num_workers
        self.train_transforms = list(train_transforms or [])
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None

    def load_split(self, train: bool) -> TensorImageDataset:
        """The official train or test split as uint8 tensors."""
        raise NotImplementedError

    def split_indices(self, num_train: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Train and validation indices into the official training split."""
        return seeded_split(num_train, self.val_size, self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:  # split once, however many stages ask
            full_train = self.load_split(train=True)
            test_set = self.load_split(train=False)
            name = type(self).__name__
            for split, data in (("train", full_train), ("test", test_set)):
                check_images(
                    data.images,
                    data.labels,
                    in_chans=self.in_chans,
                    num_classes=self.num_classes,
                    where=f"{name} {split} split",
                )
            train_idx, val_idx = self.split_indices(len(full_train))
            self.train_set = TensorImageDataset(full_train.images[train_idx], full_train.labels[train_idx])
            # Evaluation splits in class-interleaved order, so a limited evaluation (any prefix)
            # sees every class; training order is drawn per epoch by its sampler.
            val_idx = val_idx[class_interleaved_order(full_train.labels[val_idx], self.seed)]
            self.val_set = full_train.select(val_idx)
            self.test_set = test_set.select(class_interleaved_order(test_set.labels, self.seed))

    def _loader(self, dataset: TensorImageDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() must run before the dataloaders are requested")
        return split_loader(
            dataset,
            shuffle,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_keep_batch,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_size == 0:  # no validation split: Lightning then skips the validation loop
            return []
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def custom_augment(self, images: torch.Tensor) -> torch.Tensor:
        return apply_per_sample(self.train_transforms, images) if self.train_transforms else images


def resize_batch(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear, antialiased resize of a float batch to ``size x size`` (no-op for None)."""
    if size is None or images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
