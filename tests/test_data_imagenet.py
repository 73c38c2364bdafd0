"""ImageNet: synthetic trees in torchvision's layout and the plain image-folder layout, per-image v2
presets in workers, the seeded validation carve, DDP batch semantics, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning.utilities.data import _update_dataloader
from torch.utils.data import DistributedSampler
from torchvision.datasets import ImageNet

from datamodules import CorruptImageError, DataFormatError, DataNotFoundError, ImageNetDataModule
from datamodules.presets import IMAGENET_PRESETS, imagenet_eval_transform, imagenet_train_transform
from datamodules.synthetic import write_imagenet_tree


def _dm(root: Path, **kwargs) -> ImageNetDataModule:
    kwargs = {"num_classes": 4, "crop_size": 32, "batch_size": 8, "val_size": 8, "num_workers": 0, **kwargs}
    return ImageNetDataModule(str(root), **kwargs)


def _ready(dm: ImageNetDataModule) -> ImageNetDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_imagenet_tree(tmp_path / "imagenet")


def test_plain_folder_layout_splits_and_batches(tree: Path) -> None:
    dm = _ready(_dm(tree))
    assert dm.detect_layout() == "folder"
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 8, 12)
    assert dm.classes == tuple(f"n{i:08d}" for i in range(4))
    assert all("/val/" in path for path, _ in dm.test_set.samples)  # official val is the test set
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    normalised, targets = dm.transform_batch((images, labels), train=True)
    assert normalised.dtype == torch.float32 and torch.equal(targets, labels)
    test_images, _ = next(iter(dm.test_dataloader()))
    assert test_images.shape == (8, 3, 32, 32)


def test_torchvision_layout_reads_class_names_from_meta(tmp_path: Path) -> None:
    root = write_imagenet_tree(tmp_path / "imagenet", torchvision_layout=True)
    assert len(ImageNet(str(root), split="val")) == 12  # torchvision itself accepts the layout
    dm = _ready(_dm(root))
    assert dm.detect_layout() == "torchvision"
    assert dm.classes == ("class 0", "class 1", "class 2", "class 3")


def test_validation_carve_is_seeded_disjoint_and_deterministic(tree: Path) -> None:
    first, second = _ready(_dm(tree, seed=3)), _ready(_dm(tree, seed=3))
    assert first.val_set.samples == second.val_set.samples
    assert not set(first.val_set.samples) & set(first.train_set.samples)
    assert first.val_set.samples != _ready(_dm(tree, seed=4)).val_set.samples
    image, _ = first.val_set[0]
    assert torch.equal(image, first.val_set[0][0])  # eval transform: no randomness


def test_val_size_zero_means_official_val_as_test_only(tree: Path) -> None:
    dm = _ready(_dm(tree, val_size=0))
    assert len(dm.train_set) == 48 and dm.val_dataloader() == [] and len(dm.test_set) == 12


@pytest.mark.parametrize("preset", IMAGENET_PRESETS)
def test_every_preset_gives_uint8_crops(preset: str) -> None:
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    out = imagenet_train_transform(preset, crop_size=40)(image)
    assert out.shape == (3, 40, 40) and out.dtype == torch.uint8


def test_eval_transform_resizes_then_centre_crops() -> None:
    assert [type(t).__name__ for t in imagenet_eval_transform(224).transforms] == ["Resize", "CenterCrop"]
    assert imagenet_eval_transform(224).transforms[0].size == [256]
    assert imagenet_eval_transform(299).transforms[0].size == [342]  # Inception v3
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    assert imagenet_eval_transform(299)(image).shape == (3, 299, 299)


def test_grayscale_and_rgba_files_become_rgb(tree: Path) -> None:
    folder = tree / "train" / "n00000001"
    Image.fromarray(np.full((50, 60), 90, dtype=np.uint8)).save(folder / "gray.JPEG")
    Image.fromarray(np.full((50, 60, 4), 90, dtype=np.uint8)).save(folder / "alpha.png")
    dm = _ready(_dm(tree, val_size=0))
    paths = [path for path, _ in dm.train_set.samples]
    for name in ("gray.JPEG", "alpha.png"):
        image, label = dm.train_set[paths.index(str(folder / name))]
        assert image.shape == (3, 32, 32) and label == 1


def test_multi_worker_loading(tree: Path) -> None:
    dm = _ready(_dm(tree, num_workers=2, augment="trivialaugment", mixup_alpha=0.4))
    batches = list(dm.train_dataloader())
    assert len(batches) == 5 and all(images.shape == (8, 3, 32, 32) for images, _ in batches)
    images, targets = dm.transform_batch(batches[0], train=True)
    assert targets.shape == (8, 4) and targets.dtype == torch.float32


def test_batch_size_is_per_process_under_ddp(tree: Path) -> None:
    dm = _ready(_dm(tree, val_size=0, batch_size=4))
    loader = dm.test_dataloader()
    per_rank = []
    for rank in range(2):
        sampler = DistributedSampler(dm.test_set, num_replicas=2, rank=rank, shuffle=False)
        sizes = [len(images) for images, _ in _update_dataloader(loader, sampler)]
        assert sizes == [4, 2]
        per_rank.append(sum(sizes))
    assert per_rank == [6, 6]


# ----- bad input ----------------------------------------------------------------------------------


def test_missing_dataset_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        _dm(tmp_path / "nowhere").prepare_data()
    message = str(info.value)
    for part in ("ImageNet not found", "ILSVRC2012_devkit_t12.tar.gz", "train/<class>/", "--data.data_dir"):
        assert part in message


def test_wrong_num_classes_is_an_error(tree: Path) -> None:
    with pytest.raises(DataFormatError, match="holds 4 class folders but the data module has num_classes=1000"):
        _ready(_dm(tree, num_classes=1000))


def test_train_and_val_with_different_classes_is_an_error(tree: Path) -> None:
    (tree / "val" / "n00000002").rename(tree / "val" / "n00000009")
    with pytest.raises(DataFormatError, match="the train and test folders hold different classes"):
        _ready(_dm(tree))


def test_empty_class_folder_is_an_error(tree: Path) -> None:
    for image in (tree / "train" / "n00000003").iterdir():
        image.unlink()
    with pytest.raises(DataFormatError, match=r"class folder .*train/n00000003 holds no images"):
        _ready(_dm(tree))


def test_corrupt_image_is_named_or_skipped(tree: Path) -> None:
    bad = tree / "val" / "n00000000" / "0001.png"
    bad.write_bytes(b"\x89PNG garbage")
    dm = _ready(_dm(tree, batch_size=12))
    with pytest.raises(CorruptImageError, match=r"cannot decode image .*val/n00000000/0001.png"):
        next(iter(dm.test_dataloader()))
    skipping = _ready(_dm(tree, batch_size=12, skip_corrupt=True))
    with pytest.warns(UserWarning, match=r"skipping .*0001.png: unreadable \(1 skipped so far"):
        images, labels = next(iter(skipping.test_dataloader()))
    assert images.shape == (11, 3, 32, 32) and len(labels) == 11
