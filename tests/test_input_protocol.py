"""He et al.'s CIFAR input protocol: per-pixel mean subtraction, and the crop padding with the mean.

He et al. 2015 (Sec. 4.2) subtract the per-pixel mean of the training images; the authors' Torch
code (fb.resnet.torch, datasets/cifar10.lua) normalises first and then pads the random crop with
zeros, i.e. with the mean. The mean travels in every checkpoint, so a run is evaluated with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules import CIFAR10DataModule
from datamodules.synthetic import write_cifar10_pickles
from experiments.cli import main
from lightning_modules.checkpoint_loading import load_checkpoint
from tests.support import QUICK


@pytest.fixture
def pickles(tmp_path: Path) -> Path:
    return write_cifar10_pickles(tmp_path / "data", per_batch=20, num_test=30)


def _ready(root: Path, tmp_path: Path, **kwargs) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(
        str(root), val_size=20, batch_size=16, download=False, cache_dir=str(tmp_path / "cache"), **kwargs
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_pixel_mean_is_the_training_parts_mean_image_and_is_subtracted(pickles: Path, tmp_path: Path) -> None:
    dm = _ready(pickles, tmp_path, normalization="pixel_mean", augment="none")
    expected = dm.train_set.images.double().mean(0).div(255).float()
    assert dm.pixel_mean.shape == (3, 32, 32)
    torch.testing.assert_close(dm.pixel_mean, expected)
    batch = next(iter(dm.val_dataloader()))
    images, _ = dm.transform_batch(batch, train=False)
    torch.testing.assert_close(images, batch[0].float() / 255 - expected)
    # Cached: another module on the same data and split reads it back instead of recomputing.
    again = CIFAR10DataModule(
        str(pickles),
        val_size=20,
        batch_size=16,
        download=False,
        cache_dir=str(tmp_path / "cache"),
        normalization="pixel_mean",
    )
    again.prepare_data()
    built = []
    again.cache.get_or_build = lambda prefix, key, build, real=again.cache.get_or_build: real(
        prefix, key, lambda: built.append(prefix) or build()
    )
    again.setup("fit")
    assert not [prefix for prefix in built if "pixel-mean" in prefix]
    torch.testing.assert_close(again.pixel_mean, expected)


@pytest.mark.parametrize("normalization", ["channel", "pixel_mean"])
def test_the_random_crop_pads_the_normalised_image_with_zeros(
    normalization: str, pickles: Path, tmp_path: Path
) -> None:
    """A crop shifted by the full padding shows a band of exactly zero: the mean, not black."""
    dm = _ready(pickles, tmp_path, normalization=normalization, augment="standard", max_shift=4)
    images = torch.full((256, 3, 32, 32), 255, dtype=torch.uint8)  # white: black padding would show
    out, _ = dm.transform_batch((images, torch.zeros(256, dtype=torch.long)), train=True)
    assert (dm.normalize(images[:1]) > 0).all(), "white is above the mean everywhere"
    is_pad = (out == 0).all(dim=1)  # (N, H, W): every channel zero
    is_image = (out > 0).all(dim=1)
    assert (is_pad | is_image).all(), "every pixel is either the image or zero padding"
    assert is_pad.any(dim=(1, 2)).float().mean() > 0.5, "most crops are shifted into the padding"


def test_the_pixel_mean_travels_in_the_checkpoint_and_evaluation_uses_it(
    pickles: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("ABLATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # the default loggers write to ./runs
    args = [
        "--model.network=architectures.ZooModel",
        "--model.network.init_args.name=resnet20",
        "--data=datamodules.CIFAR10DataModule",
        f"--data.data_dir={pickles}",
        "--data.val_size=20",
        "--data.batch_size=16",
        "--data.normalization=pixel_mean",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        *QUICK,
    ]
    assert main(["fit", *args]) == 0
    (last,) = (tmp_path / "runs").rglob("last.ckpt")
    saved = load_checkpoint(last)["CIFAR10DataModule"]["pixel_mean"]
    dm = _ready(pickles, tmp_path, normalization="pixel_mean")
    torch.testing.assert_close(saved, dm.pixel_mean)

    # Evaluated on other data, the run still subtracts the mean it trained with.
    other = write_cifar10_pickles(tmp_path / "other", per_batch=20, num_test=30, seed=1)
    seen = {}
    original = CIFAR10DataModule.load_state_dict

    def spy(self, state):
        original(self, state)
        seen["mean"] = self.pixel_mean

    monkeypatch.setattr(CIFAR10DataModule, "load_state_dict", spy)
    test_args = [a if not a.startswith("--data.data_dir") else f"--data.data_dir={other}" for a in args]
    assert main(["test", *test_args, f"--ckpt_path={last}"]) == 0
    torch.testing.assert_close(seen["mean"], saved)
