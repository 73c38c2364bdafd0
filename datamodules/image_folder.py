"""Image-folder trees (``<split>/<class>/<image>``): scanning, checks and decoding.

Shared by the in-memory CIFAR modules (decode everything once, then cache) and ImageNet (decode
per image in DataLoader workers). Decoding uses ``torchvision.io.decode_image`` on the file's
bytes for 8-bit RGB (libjpeg-turbo / libpng, no PIL image per file) and PIL, with
one rule per mode, for everything else: every image comes out 8-bit, grayscale or RGB (see
``read_image``). ``torchvision.io``'s image decoders are deprecated since 0.29 in
favour of TorchCodec; their DeprecationWarning is silenced here until the project moves over.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

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
    """Names of the sub-folders of ``root`` (hidden ones ignored), sorted.

    Anything else in a split folder (an image outside any class, a dangling link) would be left out
    unseen, so it is an error naming it.
    """
    names = []
    for entry in os.scandir(root):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            dangling = entry.is_symlink() and not os.path.exists(entry.path)
            kind = "a dangling symbolic link" if dangling else "not a folder"
            raise DataFormatError(
                f"{entry.path} is {kind}; a split folder holds only class folders ({root}/<class>/<image>). "
                "Move or remove it."
            )
        names.append(entry.name)
    return sorted(names)


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
            raise DataNotFoundError(f"{dataset}: folder {root} does not exist; expected {root}/<class>/<image>")
    train_classes, test_classes = class_folders(train_root), class_folders(test_root)
    if not train_classes:
        raise DataFormatError(f"{dataset}: {train_root} has no class folders; expected {train_root}/<class>/<image>")
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
    """Image paths (sorted per class) and labels.

    Every entry of a class folder is an image or an error: an empty class, a file of another
    extension, a sub-folder, a dangling link or a special file stop the scan naming it (nothing is
    left out without a word). Hidden entries (``.DS_Store``, ``.ipynb_checkpoints``) are ignored.
    """
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        images = []
        for entry in os.scandir(folder):
            if entry.name.startswith("."):
                continue
            problem = _not_an_image(entry)
            if problem:
                raise DataFormatError(f"{dataset}: {entry.path} {problem}")
            images.append(entry.name)
        if not images:
            raise DataFormatError(
                f"{dataset}: class folder {folder} holds no images "
                f"(looked for {' '.join(IMAGE_EXTENSIONS)}). "
                "Add its images or remove the folder from both splits."
            )
        images.sort()
        files.extend(os.path.join(folder, image) for image in images)
        labels.extend([label] * len(images))
    return files, labels


def _not_an_image(entry: os.DirEntry) -> str:
    """Why a class folder's entry cannot be one of its images, or ``""``."""
    if entry.is_symlink() and not os.path.exists(entry.path):
        return (
            f"is a dangling symbolic link (to {os.readlink(entry.path)}, which does not exist); "
            "restore its target or remove the link"
        )
    if entry.is_dir():
        return "is a folder; images must sit directly in their class folder (<split>/<class>/<image>)"
    if not entry.is_file():
        return "is not a regular file (a pipe, socket or device); remove it"
    if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
        return (
            f"is not an image file by its extension (accepted: {' '.join(IMAGE_EXTENSIONS)}); "
            "move it out of the class folders or convert it"
        )
    return ""


# What PIL calls each mode, for messages that name what a file really holds.
MODE_NAMES = {
    "1": "1-bit black and white",
    "L": "grayscale",
    "LA": "grayscale + alpha",
    "La": "grayscale + alpha",
    "I": "32-bit integer grayscale",
    "I;16": "16-bit grayscale",
    "I;16L": "16-bit grayscale",
    "I;16B": "16-bit grayscale",
    "I;16N": "16-bit grayscale",
    "F": "32-bit floating-point grayscale",
    "P": "palette",
    "PA": "palette + alpha",
    "RGB": "RGB",
    "RGBA": "RGB + alpha",
    "RGBa": "RGB + alpha",
    "RGBX": "RGB",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "Lab",
    "HSV": "HSV",
}
_GRAY_8BIT = ("1", "L", "LA", "La")  # alpha, where there is one, is dropped
_GRAY_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_TO_RGB = ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def _mode_name(mode: str) -> str:
    return f"{MODE_NAMES.get(mode, 'unknown mode')} ({mode})"


def mode_channels(path: str | Path, decoded: torch.Tensor) -> tuple[int, str]:
    """Bands stored in the file (alpha included) and the mode's name, e.g. ``(2, "grayscale + alpha")``."""
    try:
        with Image.open(path) as image:
            return len(image.getbands()), MODE_NAMES.get(image.mode, image.mode)
    except Exception:  # a format only torchvision reads: say what was decoded
        return decoded.shape[0], "grayscale" if decoded.shape[0] == 1 else "RGB"


def _pil_decode(path: Path, data: bytes, rgb: bool) -> torch.Tensor:
    """8-bit colour channels whatever the mode: 16-bit grey is scaled (``>> 8``); palette, CMYK and
    other colour spaces become RGB (PIL's conversion); alpha is dropped (the stored colour is kept,
    as ``convert("RGB")`` and torchvision's RGB mode do)."""
    with Image.open(io.BytesIO(data)) as image:
        mode = image.mode
        # PNG has no 32-bit grey: mode I there (older Pillow) is a 16-bit file
        if mode in _GRAY_16BIT or (mode == "I" and image.format == "PNG"):
            array = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        elif mode in _GRAY_8BIT:
            array = np.asarray(image.convert("L"))
        elif mode in _TO_RGB:
            array = np.asarray(image.convert("RGB"))
        else:  # F and 32-bit I (no fixed range to scale from) and rarer modes
            raise DataFormatError(
                f"{path} is a {_mode_name(mode)} image; refused: it has no defined 8-bit form. "
                "Convert it to 8-bit grayscale or RGB first."
            )
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()
    return tensor.expand(3, -1, -1).contiguous() if rgb and tensor.shape[0] == 1 else tensor


class UnreadableFileError(CorruptImageError):
    """An image file that cannot be opened at all (missing, no permission, a folder)."""

    def __init__(self, path: str | Path, error: OSError) -> None:
        DataFormatError.__init__(
            self,
            f"cannot read image {path} ({error.strerror or error}). Fix its permissions or replace it, "
            "or pass skip_corrupt=True to skip unreadable images with a counted warning.",
        )
        self.path = Path(path)


def read_image(path: str | Path, rgb: bool = False) -> torch.Tensor:
    """uint8 ``(C, H, W)``: 1 channel for grayscale files, else 3 (RGB); ``rgb`` makes grayscale RGB too.

    torchvision decodes the common case (8-bit RGB; ``decode_image`` on the bytes); everything else
    goes through PIL with an explicit rule per mode (see ``_pil_decode``), because torchvision's
    unchanged mode returns palette indices as if they were grey levels, CMYK as four channels and
    16-bit PNGs as uint16.

    Raises:
        UnreadableFileError: the file cannot be opened or read.
        CorruptImageError: neither decoder can read the file.
        DataFormatError: a mode with no 8-bit form (floating point, 32-bit integers).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UnreadableFileError(path, error) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
        if image.dtype == torch.uint8 and image.shape[0] == 3:
            return image
    except (RuntimeError, ValueError) as error:
        first_error: Exception | None = error
    else:
        first_error = None
    try:
        return _pil_decode(Path(path), data, rgb)
    except DataFormatError:
        raise
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise CorruptImageError(path, first_error or error) from None


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
            bands, kind = mode_channels(path, image)  # the file's own mode: a palette file is not "grayscale"
            raise DataFormatError(
                f"{dataset}: {path} has {bands} channel(s) ({kind}) but {dataset} feeds "
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
