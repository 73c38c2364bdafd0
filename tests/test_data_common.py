"""What every data module shares: linkable attributes, seeded splits, DDP batch semantics, the batched
augmentation ops, MixUp/CutMix soft targets, the cache, and the Lightning hooks end to end."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentError, ArgumentParser
from pytorch_lightning.utilities.data import _update_dataloader
from torch.utils.data import DistributedSampler
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from datamodules import (
    BatchMix,
    CIFAR10DataModule,
    CIFAR100DataModule,
    ImageNetDataModule,
    MNISTDataModule,
    TensorImageDataset,
)
from datamodules.base import seeded_split
from datamodules.batch_augment import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_per_sample,
    random_color_jitter,
    random_erasing,
    random_hflip,
    random_rotate,
    random_translate,
)
from datamodules.cache import DiskCache, file_fingerprint
from datamodules.synthetic import write_cifar10_pickles
from tests.support import write_synthetic_mnist


@pytest.mark.parametrize(
    "module, expected",
    [
        (MNISTDataModule, (10, 1, (28, 28))),
        (CIFAR10DataModule, (10, 3, (32, 32))),
        (CIFAR100DataModule, (100, 3, (32, 32))),
        (ImageNetDataModule, (1000, 3, (224, 224))),
    ],
)
def test_linkable_attributes_exist_before_setup(module, expected, tmp_path: Path) -> None:
    """LightningCLI links these at instantiation, before any data is read."""
    dm = module(data_dir=str(tmp_path / "nowhere"))
    assert (dm.num_classes, dm.in_chans, dm.image_size) == expected
    assert len(dm.mean) == len(dm.std) == dm.in_chans


def test_image_size_follows_resize_and_crop_knobs(tmp_path: Path) -> None:
    assert CIFAR10DataModule(str(tmp_path), resize=64).image_size == (64, 64)
    inception = ImageNetDataModule(str(tmp_path), crop_size=299, num_classes=10)
    assert inception.image_size == (299, 299) and inception.resize_size == 342
    assert ImageNetDataModule(str(tmp_path)).resize_size == 256


SHARED_AUGMENTATION = {"random_erasing": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0}
SHARED_IN_MEMORY = {
    "data_dir": None,
    "batch_size": 128,
    "val_size": 5000,
    "seed": 0,
    "download": True,
    "num_workers": 0,
    "train_transforms": None,
    **SHARED_AUGMENTATION,
}


@pytest.mark.parametrize(
    "module, shared",
    [
        (MNISTDataModule, SHARED_IN_MEMORY),
        (CIFAR10DataModule, SHARED_IN_MEMORY),
        (CIFAR100DataModule, SHARED_IN_MEMORY),
        (ImageNetDataModule, {"batch_size": 256, "val_size": 10_000, **SHARED_AUGMENTATION}),
    ],
)
def test_cli_lists_and_checks_the_arguments_passed_on_to_the_base(module, shared) -> None:
    """The data modules pass the base class's arguments on through ``**kwargs``: jsonargparse still
    offers each with its default, takes it from the command line and refuses a key nobody takes."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(module, "data")
    defaults = parser.get_defaults().data
    assert {key: defaults[key] for key in shared} == shared
    assert parser.parse_args(["--data.batch_size=7", "--data.mixup_alpha=0.2"]).data.batch_size == 7
    with pytest.raises(ArgumentError, match="no_such_argument"):
        parser.parse_args(["--data.no_such_argument=1"])


def test_seeded_split_is_reproducible_and_disjoint() -> None:
    train, val = seeded_split(1000, 100, seed=3)
    train_again, val_again = seeded_split(1000, 100, seed=3)
    assert torch.equal(train, train_again) and torch.equal(val, val_again)
    assert len(val) == 100 and len(train) == 900
    assert not set(train.tolist()) & set(val.tolist())
    assert not torch.equal(val, seeded_split(1000, 100, seed=4)[1])
    torch.manual_seed(0)
    first = seeded_split(1000, 100, seed=3)[1]
    torch.manual_seed(1)  # the global RNG has no say
    assert torch.equal(first, seeded_split(1000, 100, seed=3)[1])


def test_batch_size_is_per_process_under_ddp() -> None:
    """Lightning re-creates the loader with a DistributedSampler: each of 2 ranks sees half the
    images, in batches of ``batch_size`` (so one step averages 2 * batch_size images)."""
    dataset = TensorImageDataset(torch.zeros(1000, 3, 4, 4, dtype=torch.uint8), torch.arange(1000))
    dm = MNISTDataModule(batch_size=64)
    loader = dm._loader(dataset, shuffle=True)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        ddp_loader = _update_dataloader(loader, sampler)  # what Lightning does under DDP
        sizes, labels = [], []
        for images, batch_labels in ddp_loader:
            sizes.append(len(images))
            labels.append(batch_labels)
        assert sum(sizes) == 500 and sizes[:-1] == [64] * (len(sizes) - 1)
        seen.append(set(torch.cat(labels).tolist()))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 1000


# ----- batched augmentation ops -------------------------------------------------------------------


def _batch(n: int = 16, size: int = 32, channels: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize(
    "op",
    [
        lambda x: random_translate(x, 4),
        random_hflip,
        lambda x: random_rotate(x, 20),
        lambda x: random_color_jitter(x, 0.2, 0.2, 0.2, 0.1),
    ],
    ids=["translate", "hflip", "rotate", "color_jitter"],
)
def test_batch_ops_keep_shape_dtype_and_draw_per_image(op) -> None:
    torch.manual_seed(0)
    same = _batch(1).expand(64, -1, -1, -1).contiguous()  # 64 copies of one image
    out = op(same)
    assert out.shape == same.shape and out.dtype == torch.uint8
    distinct = {bytes(image.numpy().tobytes()) for image in out}
    assert len(distinct) > 1, "random parameters must differ between images of a batch"


def test_translate_matches_pad_and_crop() -> None:
    torch.manual_seed(0)
    images = _batch(8)
    out = random_translate(images, 4)
    padded = F.pad(images, (4, 4, 4, 4))
    for image, result in zip(padded, out, strict=True):
        windows = image.unfold(1, 32, 1).unfold(2, 32, 1)  # (3, 9, 9, 32, 32)
        assert (windows == result[:, None, None]).flatten(3).all(-1).all(0).any()


def test_rotate_by_zero_is_identity_and_keeps_centre() -> None:
    images = _batch(4)
    assert torch.equal(random_rotate(images, 0), images)
    torch.manual_seed(0)
    rotated = random_rotate(images, 20)
    centre = (slice(None), slice(None), slice(14, 18), slice(14, 18))
    assert (rotated[centre].int() - images[centre].int()).abs().float().mean() < 60


@pytest.mark.parametrize(
    "ours, theirs, factor",
    [
        (adjust_brightness, TF.adjust_brightness, 1.3),
        (adjust_contrast, TF.adjust_contrast, 0.7),
        (adjust_saturation, TF.adjust_saturation, 1.4),
        (adjust_hue, TF.adjust_hue, 0.15),
        (adjust_hue, TF.adjust_hue, -0.3),
    ],
)
def test_colour_ops_match_torchvision(ours, theirs, factor: float) -> None:
    images = _batch(6).float() / 255
    factors = torch.full((6,), factor)
    expected = torch.stack([theirs(image, factor) for image in images])
    torch.testing.assert_close(ours(images, factors), expected, atol=2e-3, rtol=0)


def test_random_erasing_boxes_per_image() -> None:
    torch.manual_seed(0)
    images = torch.ones(200, 3, 32, 32)
    out = random_erasing(images, p=0.5)
    erased = (out == 0).flatten(1).any(1)
    assert 0.35 < erased.float().mean() < 0.65
    fractions = (out[erased] == 0).float().mean((1, 2, 3))
    assert fractions.min() >= 0.01 and fractions.max() <= 0.4
    assert (out == 0).all(1).equal((out == 0).any(1)), "a box erases all channels"


def test_apply_per_sample_rejects_transforms_that_change_dtype() -> None:
    with pytest.raises(TypeError, match="train_transforms must map a torch.uint8 image"):
        apply_per_sample([v2.ToDtype(torch.float32, scale=True)], _batch(2))
    out = apply_per_sample([v2.RandomRotation(10)], _batch(3))
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.uint8


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_batch_mix_returns_soft_targets(mixup: float, cutmix: float) -> None:
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    mixed, targets = BatchMix(10, mixup, cutmix)(images, labels)
    assert mixed.shape == images.shape and mixed.dtype == torch.float32
    assert targets.shape == (8, 10) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert (targets.argmax(1) == labels).float().mean() >= 0.5 or (targets.max(1).values < 1).all()


def test_batch_mix_needs_an_alpha() -> None:
    with pytest.raises(ValueError, match="mixup_alpha > 0 or cutmix_alpha > 0"):
        BatchMix(10)


# ----- the Lightning hooks, end to end ------------------------------------------------------------


class _Recorder(pl.LightningModule):
    """Records what each stage's step receives."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 32 * 32, 10)
        self.seen: dict[str, list[tuple[torch.dtype, tuple[int, ...], torch.dtype, tuple[int, ...]]]] = {}

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, targets = batch
        self.seen.setdefault(stage, []).append((images.dtype, tuple(images.shape), targets.dtype, tuple(targets.shape)))
        return F.cross_entropy(self.layer(images.flatten(1)), targets)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(dm: pl.LightningDataModule) -> _Recorder:
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's few-workers / small-dataset advice
        trainer.fit(model, datamodule=dm)
    return model


def test_training_batches_get_soft_targets_validation_keeps_labels(tmp_path: Path) -> None:
    root = write_cifar10_pickles(tmp_path / "data", per_batch=20)
    dm = CIFAR10DataModule(
        str(root),
        batch_size=8,
        val_size=20,
        cache_dir=str(tmp_path / "cache"),
        download=False,
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        random_erasing=0.5,
    )
    seen = _fit(dm).seen
    assert seen["train"] == [(torch.float32, (8, 3, 32, 32), torch.float32, (8, 10))] * 2
    assert seen["val"] == [(torch.float32, (8, 3, 32, 32), torch.int64, (8,))] * 2


def test_val_size_zero_skips_validation(tmp_path: Path) -> None:
    root = write_cifar10_pickles(tmp_path / "data", per_batch=20)
    dm = CIFAR10DataModule(str(root), batch_size=8, val_size=0, cache_dir=str(tmp_path / "cache"), download=False)
    seen = _fit(dm).seen
    assert "val" not in seen and len(seen["train"]) == 2
    assert len(dm.train_set) == 100 and dm.val_dataloader() == []


def test_cli_parses_free_composition_of_v2_transforms() -> None:
    """``train_transforms`` takes ``class_path`` entries, as LightningCLI writes them in YAML."""
    parser = ArgumentParser()
    parser.add_class_arguments(CIFAR10DataModule, "data")
    config = parser.parse_args(
        [
            "--data.augment=none",
            '--data.train_transforms=[{"class_path": "torchvision.transforms.v2.RandomRotation", '
            '"init_args": {"degrees": [-15, 15]}}, '
            '{"class_path": "torchvision.transforms.v2.RandomHorizontalFlip"}]',
        ]
    )
    dm = parser.instantiate(config).data
    assert [type(t).__name__ for t in dm.train_transforms] == ["RandomRotation", "RandomHorizontalFlip"]
    assert "Unable to serialize" not in parser.dump(config)  # ranges as lists round-trip into saved configs
    out = dm.custom_augment(_batch(4))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8


# ----- the cache ----------------------------------------------------------------------------------


def test_cache_writes_atomically_and_replaces_stale_entries(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache")
    built = []

    def build() -> dict:
        built.append(1)
        return {"images": torch.zeros(2, 3, dtype=torch.uint8), "names": ["a", "b"]}

    first = cache.get_or_build("set-train", "key1", build)
    again = cache.get_or_build("set-train", "key1", build)
    assert len(built) == 1 and torch.equal(first["images"], again["images"]) and again["names"] == ["a", "b"]
    cache.get_or_build("set-train", "key2", build)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.path("set-train", "key2").name]
    cache.path("set-train", "key2").write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="ignoring unreadable cache entry"):
        cache.get_or_build("set-train", "key2", build)
    assert len(built) == 3


def test_fingerprint_changes_with_size_or_mtime(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"1234")
    before = file_fingerprint([path])
    assert file_fingerprint([path]) == before
    path.write_bytes(b"12345")
    assert file_fingerprint([path]) != before


def test_mnist_shares_the_training_tail(tmp_path: Path) -> None:
    """MNIST takes the same augmentation knobs: per-image transforms, erasing, MixUp/CutMix."""
    root = write_synthetic_mnist(tmp_path / "data", n_train=200, n_test=50)
    dm = MNISTDataModule(
        str(root),
        batch_size=16,
        val_size=50,
        download=False,
        augment="shift",
        train_transforms=[v2.RandomRotation([-10, 10])],
        random_erasing=0.5,
        mixup_alpha=0.2,
    )
    dm.prepare_data()
    dm.setup("fit")
    images, targets = dm.transform_batch(next(iter(dm.train_dataloader())), train=True)
    assert images.shape == (16, 1, 28, 28) and targets.shape == (16, 10) and targets.dtype == torch.float32
    images, labels = dm.transform_batch(next(iter(dm.val_dataloader())), train=False)
    assert labels.dtype == torch.int64
