"""Augmentation of whole batches as tensor operations, on whichever device holds them.

These replace per-image PIL transforms for in-memory datasets: one call handles the batch, so
on a GPU the data path costs next to nothing (airbench, Jordan 2024, arXiv 2404.00498). Unlike a
``torchvision.transforms.v2`` transform called on a batch, which draws one set of random
parameters for all images, every function here draws its parameters per image.

Geometric and colour ops take uint8 ``(N, C, H, W)`` and return uint8; ``random_erasing`` and
``BatchMix`` work on the normalised float batch. Transforms with no batched form here (AutoAugment
and friends, user-supplied ones) go through ``apply_per_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

# ITU-R 601-2 luma, the weights torchvision's rgb_to_grayscale uses.
_LUMA = (0.2989, 0.587, 0.114)


@contextmanager
def single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run the block with one intra-op thread when ``device`` is the CPU.

    Batch augmentation is many small ops (a 128x3x32x32 batch is 0.4 M values); spreading each
    over a thread pool costs more in hand-offs than it saves, many times more when other processes
    keep the cores busy (each waiting thread spins). The network keeps all threads.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def random_translate(images: torch.Tensor, max_shift: int, fill: int = 0) -> torch.Tensor:
    """Shift each image by its own random offset in ``[-max_shift, max_shift]`` on both axes.

    Equivalent to zero-padding by ``max_shift`` and taking a random crop of the original size
    (the CIFAR "4-pixel pad + random crop" of He et al. 2015).
    """
    if max_shift <= 0:
        return images
    n, _, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=fill)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), device=images.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), device=images.device)
    rows = (dy.view(n, 1) + torch.arange(height, device=images.device)).view(n, 1, height, 1)
    cols = (dx.view(n, 1) + torch.arange(width, device=images.device)).view(n, 1, 1, width)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]


def random_hflip(images: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = torch.rand(images.shape[0], device=images.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def random_rotate(images: torch.Tensor, max_degrees: float, fill: float = 0.0) -> torch.Tensor:
    """Rotate each image about its centre by its own angle in ``[-max_degrees, max_degrees]``.

    Nearest-neighbour sampling and a constant ``fill`` outside the image, as
    ``v2.RandomRotation``'s defaults.
    """
    if max_degrees <= 0:
        return images
    n, _, height, width = images.shape
    angle = (torch.rand(n, device=images.device) * 2 - 1) * math.radians(max_degrees)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    # affine_grid works in [-1, 1] coordinates on both axes; the aspect terms keep a true rotation
    # on non-square images.
    theta = torch.stack(
        (
            torch.stack((cos, -sin * height / width, zero), 1),
            torch.stack((sin * width / height, cos, zero), 1),
        ),
        1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Shift by -fill so the zero padding of grid_sample becomes ``fill``.
    rotated = F.grid_sample(images.float() - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return (rotated + fill).round_().clamp_(0, 255).to(images.dtype)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """Float ``(N, 3, H, W)`` -> ``(N, 1, H, W)`` luma."""
    weights = torch.tensor(_LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] times a per-image ``factor`` ``(N,)``, clipped."""
    return (images * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each float image with its mean grey level (torchvision's definition)."""
    mean = _grayscale(images).mean((1, 2, 3), keepdim=True)
    factor = factor.view(-1, 1, 1, 1)
    return (images * factor + mean * (1 - factor)).clamp_(0, 1)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each float image with its own grayscale version."""
    factor = factor.view(-1, 1, 1, 1)
    return (images * factor + _grayscale(images) * (1 - factor)).clamp_(0, 1)


def _rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    red, green, blue = images.unbind(1)
    value, _ = images.max(1)
    chroma = value - images.min(1).values
    grey = chroma == 0
    saturation = chroma / torch.where(value == 0, torch.ones_like(value), value)
    safe_chroma = torch.where(grey, torch.ones_like(chroma), chroma)
    is_red = value == red
    is_green = (value == green) & ~is_red
    is_blue = ~is_red & ~is_green
    hue = (
        is_red * (green - blue) / safe_chroma
        + is_green * (2.0 + (blue - red) / safe_chroma)
        + is_blue * (4.0 + (red - green) / safe_chroma)
    )
    hue = torch.where(grey, torch.zeros_like(hue), hue / 6.0).remainder(1.0)
    return torch.stack((hue, saturation, value), 1)


def _hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = images.unbind(1)
    sector = hue * 6.0
    # Standard closed form: channel k is v - v*s*clamp(min(m, 4 - m), 0, 1) with m = (k + 6h) mod 6.
    channels = []
    for offset in (5.0, 3.0, 1.0):
        m = (sector + offset).remainder(6.0)
        channels.append(value - value * saturation * torch.minimum(m, 4.0 - m).clamp(0.0, 1.0))
    return torch.stack(channels, 1)


def adjust_hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each float RGB image by ``factor`` (N,) turns, in ``[-0.5, 0.5]``."""
    hsv = _rgb_to_hsv(images)
    hue = (hsv[:, 0] + factor.view(-1, 1, 1)).remainder(1.0)
    return _hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), 1)).clamp_(0, 1)


def random_color_jitter(
    images: torch.Tensor,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> torch.Tensor:
    """``v2.ColorJitter`` with factors drawn per image, applied in a fixed order (b, c, s, h).

    Factors are uniform in ``[max(0, 1 - x), 1 + x]`` (hue: ``[-hue, hue]``), as in torchvision;
    torchvision also shuffles the order of the four ops per call, which a batch cannot do per image.
    Saturation and hue need 3 channels.
    """
    n = images.shape[0]
    out = images.float().div(255)

    def factors(spread: float) -> torch.Tensor:
        return torch.empty(n, device=images.device).uniform_(max(0.0, 1 - spread), 1 + spread)

    if brightness > 0:
        out = adjust_brightness(out, factors(brightness))
    if contrast > 0:
        out = adjust_contrast(out, factors(contrast))
    if saturation > 0:
        out = adjust_saturation(out, factors(saturation))
    if hue > 0:
        out = adjust_hue(out, torch.empty(n, device=images.device).uniform_(-hue, hue))
    return out.mul_(255).round_().to(images.dtype)


def random_erasing(
    images: torch.Tensor,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float = 0.0,
    attempts: int = 10,
) -> torch.Tensor:
    """``v2.RandomErasing`` per image on a (normalised) float batch: one box per image, w.p. ``p``.

    Like torchvision, each image tries ``attempts`` random boxes (area fraction in ``scale``,
    aspect in ``ratio``, log-uniform) and takes the first that fits; with value 0 after
    normalisation the box holds the dataset mean.
    """
    n, _, height, width = images.shape
    device = images.device
    area = torch.empty(n, attempts, device=device).uniform_(*scale) * (height * width)
    aspect = torch.empty(n, attempts, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp_()
    box_h = (area * aspect).sqrt().round().long()
    box_w = (area / aspect).sqrt().round().long()
    fits = (box_h < height) & (box_w < width)
    first = fits.int().argmax(1, keepdim=True)
    box_h, box_w = box_h.gather(1, first).squeeze(1), box_w.gather(1, first).squeeze(1)
    erase = fits.any(1) & (torch.rand(n, device=device) < p)
    top = (torch.rand(n, device=device) * (height - box_h + 1)).long()
    left = (torch.rand(n, device=device) * (width - box_w + 1)).long()
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside = (
        (rows >= top.view(-1, 1, 1))
        & (rows < (top + box_h).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1))
        & (cols < (left + box_w).view(-1, 1, 1))
    )
    mask = (inside & erase.view(-1, 1, 1)).unsqueeze(1)
    return images.masked_fill(mask, value)


def apply_per_sample(transforms: Sequence[Callable] | Callable, images: torch.Tensor) -> torch.Tensor:
    """Run per-image transforms (e.g. ``v2.AutoAugment``) on each image of a uint8 batch in turn.

    The slow path, for transforms with no batched form: one Python call per image and op (its
    rate is measured by ``ablate bench data``, docs/benchmarks.md), run single-threaded (see
    ``single_thread_on_cpu``).
    """
    transform = v2.Compose(list(transforms)) if isinstance(transforms, Sequence) else transforms
    with single_thread_on_cpu(images.device):
        out = [transform(image) for image in images]
    for image in out:
        if not isinstance(image, torch.Tensor) or image.dtype != images.dtype or image.shape != images.shape[1:]:
            got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise TypeError(
                f"train_transforms must map a {images.dtype} image of shape {tuple(images.shape[1:])} to one "
                f"of the same dtype and shape, got {got}; use tensor transforms from "
                "torchvision.transforms.v2 that keep the size (no ToDtype/Normalize: the data module "
                "normalises after augmentation)."
            )
    return torch.stack(out)


class BatchMix:
    """MixUp and/or CutMix on a normalised batch; returns soft targets ``(N, num_classes)`` float.

    Wraps ``v2.MixUp`` / ``v2.CutMix`` (one mixing coefficient per batch, each image paired with its
    neighbour in the shuffled batch); with both alphas positive, each batch picks one at random.

    Args:
        num_classes: Width of the soft targets.
        mixup_alpha: Beta parameter of MixUp, 0 = off.
        cutmix_alpha: Beta parameter of CutMix, 0 = off.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> None:
        mixers: list[v2.Transform] = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not mixers:
            raise ValueError("BatchMix needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.num_classes = num_classes
        self.transform = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not images.is_floating_point():
            raise TypeError("BatchMix mixes normalised float images, not uint8")
        return self.transform(images, labels)
