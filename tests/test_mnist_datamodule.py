"""MNIST through torchvision's real IDX parser: synthetic files in a temp dir, and the real copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules import DataNotFoundError, MNISTDataModule
from tests.support import write_synthetic_mnist


def test_loads_synthetic_idx_with_seeded_disjoint_split(synthetic_mnist: Path) -> None:
    dm = MNISTDataModule(synthetic_mnist, batch_size=32, val_size=100, download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (500, 100, 200)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64

    again = MNISTDataModule(synthetic_mnist, val_size=100, download=False)
    again.setup("fit")
    assert torch.equal(again.val_set.images, dm.val_set.images)
    other_seed = MNISTDataModule(synthetic_mnist, val_size=100, seed=1, download=False)
    other_seed.setup("fit")
    assert not torch.equal(other_seed.val_set.labels, dm.val_set.labels)
    # Disjoint: no training image equals a validation image (the synthetic images are all distinct).
    train_flat = dm.train_set.images.flatten(1)
    val_flat = dm.val_set.images.flatten(1)
    assert not (train_flat[:, None, :] == val_flat[None, :, :]).all(-1).any()


def test_normalisation_and_augmentation_only_when_training(synthetic_mnist: Path) -> None:
    dm = MNISTDataModule(synthetic_mnist, batch_size=16, val_size=100, augment="shift", max_shift=3)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    images, _ = dm.on_after_batch_transfer(batch, 0)  # no trainer attached: eval path
    assert images.dtype == torch.float32
    expected = (batch[0].float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(images, expected)
    shifted = dm.augment_batch(batch[0])
    assert shifted.shape == batch[0].shape and not torch.equal(shifted, batch[0])


def test_missing_data_is_one_clear_error(tmp_path: Path) -> None:
    dm = MNISTDataModule(tmp_path / "nowhere", download=False)
    with pytest.raises(DataNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and "MNIST/raw" in message and "--data.data_dir" in message


def test_truncated_idx_is_a_clear_error(tmp_path: Path) -> None:
    root = write_synthetic_mnist(tmp_path)
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    dm = MNISTDataModule(root, download=False, val_size=10)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte is truncated or corrupt"):
        dm.setup("fit")


def test_real_mnist_sizes(real_mnist: Path) -> None:
    dm = MNISTDataModule(real_mnist, download=False)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55_000, 5_000, 10_000)
    assert torch.bincount(dm.test_set.labels).tolist()[:3] == [980, 1135, 1032]
