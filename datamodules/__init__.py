"""Data modules: MNIST, CIFAR-10/100 and ImageNet, each exposing ``num_classes``, ``in_chans``,
``image_size``, ``mean`` and ``std`` for LightningCLI to link into the model."""

from datamodules.base import (
    DataFormatError,
    DataNotFoundError,
    ImageDataModule,
    InMemoryImageDataModule,
    TensorImageDataset,
)
from datamodules.batch_augment import BatchMix
from datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from datamodules.image_folder import CorruptImageError
from datamodules.imagenet import ImageNetDataModule
from datamodules.mnist import MNISTDataModule

__all__ = [
    "BatchMix",
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "CorruptImageError",
    "DataFormatError",
    "DataNotFoundError",
    "ImageDataModule",
    "ImageNetDataModule",
    "InMemoryImageDataModule",
    "MNISTDataModule",
    "TensorImageDataset",
]
