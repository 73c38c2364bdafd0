"""Image-folder trees (``<split>/<class>/<image>``): scanning, checks and decoding.

Shared by the in-memory CIFAR modules (decode everything once, then cache) and ImageNet (decode
per image in DataLoader workers). Decoding uses ``torchvision.io.decode_image`` on the file's
bytes (libjpeg-turbo / libpng; 60k CIFAR JPEGs in ~3 s on one core), with PIL as the fallback
for formats it does not read. ``torchvision.io``'s image decoders are deprecated since 0.29 in
favour of TorchCodec; their DeprecationWarning is silenced here until the project moves over.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file

from datamodules.base import DataFormatError, DataNotFoundError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class CorruptImageError(DataFormatError):
    """An image file that neither torchvision nor PIL can decode."""

    def __init__(self, path: str | Path, cause: object) -> None:
        self.path = Path(path)
        first_line = str(cause).splitlines()[0] if str(cause) else ""
        cause = re.sub(r"^.*?\.cpp:\d+, ", "", first_line)  # drop torchvision's C++ source location
        super().__init__(
            f"cannot decode image {path} ({cause}). Replace or delete the file, or pass skip_corrupt=True "
            "to skip unreadable images with a warning."
        )


def class_folders(root: Path) -> list[str]:
    """Names of the sub-folders of ``root`` (hidden ones ignored), sorted."""
    return sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )


def order_classes(found: Sequence[str], canonical: Sequence[str] | None, where: Path) -> list[str]:
    """Class order: the dataset's canonical order when the folder names match it, else sorted.

    All-digit names (``0``, ``1``, ..., ``10``) sort numerically, so index folders keep their index.
    """
    if canonical is not None and set(found) == set(canonical):
        return list(canonical)
    ordered = sorted(found, key=int) if all(name.isdigit() for name in found) else sorted(found)
    if canonical is not None:
        warnings.warn(
            f"class folders under {where} are not the canonical class names "
            f"({', '.join(canonical[:4])}, ...); labels follow their sorted order: "
            f"{', '.join(ordered[:10])}{', ...' if len(ordered) > 10 else ''}",
            stacklevel=2,
        )
    return ordered


def find_classes(
    train_root: Path,
    test_root: Path,
    *,
    num_classes: int | None = None,
    canonical: Sequence[str] | None = None,
    dataset: str = "dataset",
) -> list[str]:
    """Classes of a train/test pair of trees, checked: present, identical in both, ``num_classes``."""
    for root in (train_root, test_root):
        if not root.is_dir():
            raise DataNotFoundError(
                f"{dataset}: folder {root} does not exist; expected {root}/<class>/<image>"
            )
    train_classes, test_classes = class_folders(train_root), class_folders(test_root)
    if not train_classes:
        raise DataFormatError(
            f"{dataset}: {train_root} has no class folders; expected {train_root}/<class>/<image>"
        )
    if set(train_classes) != set(test_classes):
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataFormatError(
            f"{dataset}: the train and test folders hold different classes "
            f"(only in {train_root}: {only_train or 'none'}; only in {test_root}: {only_test or 'none'}). "
            "Both splits need the same class folders, or labels would not mean the same in both."
        )
    if num_classes is not None and len(train_classes) != num_classes:
        raise DataFormatError(
            f"{dataset}: {train_root} holds {len(train_classes)} class folders but the data module has "
            f"num_classes={num_classes}; labels would fall outside the model's output range."
        )
    return order_classes(train_classes, canonical, train_root)


def scan_split(root: Path, classes: Sequence[str], dataset: str = "dataset") -> tuple[list[str], list[int]]:
    """Image paths (by extension, sorted per class) and labels; an empty class is an error."""
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        images = sorted(
            entry.name
            for entry in os.scandir(folder)
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not images:
            raise DataFormatError(
                f"{dataset}: class folder {folder} holds no images "
                f"(looked for {' '.join(IMAGE_EXTENSIONS)}). "
                "Add its images or remove the folder from both splits."
            )
        files.extend(os.path.join(folder, image) for image in images)
        labels.extend([label] * len(images))
    return files, labels


def _pil_decode(path: Path, rgb: bool) -> torch.Tensor:
    with Image.open(path) as image:
        if rgb or image.mode not in ("L", "LA", "RGB", "RGBA"):
            image = image.convert("RGB")
        array = np.array(image)
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def read_image(path: str | Path, rgb: bool = False) -> torch.Tensor:
    """uint8 ``(C, H, W)``; ``rgb`` converts grayscale/CMYK/alpha to 3 channels, else as stored.

    Raises:
        CorruptImageError: neither decoder can read the file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            data = read_file(str(path))
            return decode_image(data, mode=ImageReadMode.RGB if rgb else ImageReadMode.UNCHANGED)
    except (RuntimeError, ValueError) as first_error:
        try:
            return _pil_decode(Path(path), rgb)
        except Exception:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
            raise CorruptImageError(path, first_error) from None


def decode_files(
    files: Sequence[str | Path],
    *,
    in_chans: int,
    image_size: tuple[int, int],
    skip_corrupt: bool = False,
    dataset: str = "dataset",
) -> tuple[torch.Tensor, list[int], list[str]]:
    """Decode every file into one uint8 ``(N, C, H, W)`` tensor.

    Returns:
        The images, the indices into ``files`` that were kept, and the skipped (corrupt) paths.

    Raises:
        CorruptImageError: an unreadable file while ``skip_corrupt`` is False.
        DataFormatError: an image whose channel count or size differs from the dataset's.
    """
    height, width = image_size
    images = torch.empty((len(files), in_chans, height, width), dtype=torch.uint8)
    kept: list[int] = []
    skipped: list[str] = []
    for index, path in enumerate(files):
        try:
            image = read_image(path)
        except CorruptImageError:
            if not skip_corrupt:
                raise
            skipped.append(str(path))
            continue
        if image.shape[0] != in_chans:
            kind = {1: "grayscale", 2: "grayscale + alpha", 3: "RGB", 4: "RGBA"}.get(image.shape[0], "")
            raise DataFormatError(
                f"{dataset}: {path} has {image.shape[0]} channel(s) ({kind}) but {dataset} feeds "
                f"{in_chans}-channel models (in_chans={in_chans}). Convert the images to "
                f"{'RGB' if in_chans == 3 else f'{in_chans} channels'} (e.g. PIL's Image.convert('RGB'))."
            )
        if tuple(image.shape[1:]) != (height, width):
            raise DataFormatError(
                f"{dataset}: {path} is {image.shape[2]}x{image.shape[1]} pixels but every {dataset} image "
                f"must be {width}x{height}. Resize the tree first, or use ImageNetDataModule for "
                "variable-size images."
            )
        images[len(kept)] = image
        kept.append(index)
    return images[: len(kept)], kept, skipped


def warn_skipped(skipped: Sequence[str], where: Path) -> None:
    """One counted warning for the corrupt images ``skip_corrupt`` left out."""
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) under {where}: {shown}", stacklevel=2)
