"""Named augmentation presets: batched ones for in-memory data, per-image ones for ImageNet.

In-memory presets map a batch to a batch on its device: the geometric ones (``flip``, ``standard``)
the normalised float batch, so the crop pads with the mean (``normalized_preset``), the others the
uint8 batch before normalisation (``batch_preset``; their crop pads with black):

| name             | what                                                                   | cost      |
|------------------|------------------------------------------------------------------------|-----------|
| ``none``         | identity                                                               | 0         |
| ``flip``         | horizontal flip                                                        | batched   |
| ``standard``     | pad-``max_shift`` random crop + flip (He et al. 2015, CIFAR)           | batched   |
| ``lecture``      | ColorJitter(0.2, 0.2, 0.2, 0.1) + flip + RandomRotation(20); the       | batched   |
|                  | lecture's Resize is the module's ``resize`` knob, applied to all splits |           |
| ``autoaugment``  | standard + AutoAugment, CIFAR-10 policy (Cubuk et al. 2019)            | per image |
| ``randaugment``  | standard + RandAugment(2, 9) (Cubuk et al. 2020)                       | per image |
| ``trivialaugment`` | standard + TrivialAugmentWide (Mueller & Hutter 2021)                | per image |

The policy presets run ``torchvision.transforms.v2`` image by image (``apply_per_sample``): several
times slower than the batched presets, yet on the CPU still well ahead of what training consumes
(``ablate bench data`` measures both, docs/benchmarks.md); on a GPU the per-image loop launches many
small kernels, so prefer the batched presets there.

ImageNet presets (``imagenet_train_transform``) are per-image ``v2`` pipelines run in DataLoader
workers: ``imagenet`` is RandomResizedCrop + flip (Szegedy et al. 2015; He et al. 2016), the
policy presets add their ImageNet policy, ``none`` uses the evaluation transform for training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

import torch
from torchvision.transforms import v2

from datamodules.batch_augment import (
    apply_per_sample,
    random_color_jitter,
    random_hflip,
    random_rotate,
    random_translate,
)

BatchPreset = Literal["none", "flip", "standard", "lecture", "autoaugment", "randaugment", "trivialaugment"]
ImageNetPreset = Literal["none", "imagenet", "lecture", "autoaugment", "randaugment", "trivialaugment"]
BATCH_PRESETS: tuple[str, ...] = BatchPreset.__args__
IMAGENET_PRESETS: tuple[str, ...] = ImageNetPreset.__args__
# Geometric presets, run after normalisation (``normalized_preset``).
NORMALIZED_PRESETS = ("none", "flip", "standard")

# The lecture's colour jitter (brightness, contrast, saturation, hue) and rotation range.
LECTURE_JITTER = (0.2, 0.2, 0.2, 0.1)
LECTURE_DEGREES = 20.0


class BatchPipeline:
    """Batch ops applied in order; each maps a uint8 ``(N, C, H, W)`` batch to another."""

    def __init__(self, ops: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.ops = list(ops)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            images = op(images)
        return images

    def __repr__(self) -> str:
        return f"BatchPipeline({self.ops})"


def _policy(name: str, imagenet: bool) -> v2.Transform:
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET if imagenet else v2.AutoAugmentPolicy.CIFAR10)
    if name == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=9)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    raise ValueError(f"no policy named {name!r}")


def batch_preset(name: str, max_shift: int = 4) -> BatchPipeline:
    """The part of in-memory preset ``name`` (see the module table) that runs on the uint8 batch.

    ``flip`` and ``standard`` are purely geometric: they run on the normalised batch instead
    (``normalized_preset``), so the crop pads with zeros, i.e. with the mean, as the authors' Torch
    code of He et al. (fb.resnet.torch ``datasets/cifar10.lua``: ColorNormalize, then RandomCrop(32, 4)).

    Args:
        name: One of ``BATCH_PRESETS``.
        max_shift: Padding / largest translation of the ``standard`` crop, in pixels.
    """
    if name not in BATCH_PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {', '.join(BATCH_PRESETS)}")
    standard = [partial(random_translate, max_shift=max_shift), random_hflip]
    if name in NORMALIZED_PRESETS:
        return BatchPipeline([])
    if name == "lecture":
        brightness, contrast, saturation, hue = LECTURE_JITTER
        jitter = partial(random_color_jitter, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        return BatchPipeline([jitter, random_hflip, partial(random_rotate, max_degrees=LECTURE_DEGREES)])
    return BatchPipeline([*standard, partial(apply_per_sample, _policy(name, imagenet=False))])


def normalized_preset(name: str, max_shift: int = 4) -> BatchPipeline:
    """The part of in-memory preset ``name`` that runs on the normalised float batch (see ``batch_preset``)."""
    if name == "flip":
        return BatchPipeline([random_hflip])
    if name == "standard":
        return BatchPipeline([partial(random_translate, max_shift=max_shift), random_hflip])
    return BatchPipeline([])


def imagenet_eval_transform(crop_size: int = 224, resize_size: int | None = None) -> v2.Compose:
    """Resize the short side to ``resize_size`` (default ``crop_size / 0.875``), centre-crop."""
    resize_size = resize_size or round(crop_size / 0.875)
    return v2.Compose([v2.Resize(resize_size, antialias=True), v2.CenterCrop(crop_size)])


def imagenet_train_transform(
    name: str,
    crop_size: int = 224,
    resize_size: int | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    extra: Sequence[Callable] = (),
) -> v2.Compose:
    """Per-image training transform of preset ``name`` on uint8 ``(C, H, W)`` tensors.

    Args:
        name: One of ``IMAGENET_PRESETS``.
        crop_size: Output side, 224 (299 for Inception v3).
        resize_size: Short side before the centre crop of ``none`` / ``lecture``.
        crop_scale: Area range of RandomResizedCrop.
        extra: User transforms appended to the preset.
    """
    if name not in IMAGENET_PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {', '.join(IMAGENET_PRESETS)}")
    random_crop = [
        v2.RandomResizedCrop(crop_size, scale=crop_scale, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if name == "none":
        ops = list(imagenet_eval_transform(crop_size, resize_size).transforms)
    elif name == "imagenet":
        ops = random_crop
    elif name == "lecture":
        ops = [
            *imagenet_eval_transform(crop_size, resize_size).transforms,
            v2.ColorJitter(*LECTURE_JITTER),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(LECTURE_DEGREES),
        ]
    else:
        ops = [*random_crop, _policy(name, imagenet=True)]
    return v2.Compose([*ops, *extra])
