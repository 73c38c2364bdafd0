"""Small synthetic datasets written in the real on-disk formats, for tests and smoke runs.

Each writer produces files the real loaders read unchanged: MNIST IDX files, CIFAR-10/100 pickle
batches in torchvision's layout (the dict keys and shapes of the originals), image-folder trees of
PNG and JPEG files, and ImageNet trees (plain, or torchvision's with ``meta.bin``). Images are random
but reproducible from ``seed``; each class gets its own mean colour so the labels are learnable.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datamodules.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES


def synthetic_images(count: int, labels: np.ndarray, size: tuple[int, int], seed: int) -> np.ndarray:
    """uint8 ``(count, H, W, 3)``: noise around a per-class colour."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1234).integers(40, 216, size=(int(labels.max(initial=0)) + 1, 3))
    noise = rng.integers(-40, 41, size=(count, *size, 3))
    return np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(obj, file, protocol=2)  # the originals are Python 2 pickles


def write_idx(path: Path, array: np.ndarray) -> None:
    """uint8 ``array`` as an IDX file: magic 0x0000 08 <ndim>, big-endian dims, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist_idx(root: Path, num_train: int = 600, num_test: int = 200, seed: int = 0) -> Path:
    """``root/MNIST/raw/`` with the four uncompressed IDX files ``MNISTDataModule`` reads.

    Each class is a bright bar at its own row over dim noise, so the labels are learnable.
    """
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        images = rng.integers(0, 60, size=(count, 28, 28)).astype(np.uint8)
        for index, label in enumerate(labels):
            images[index, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return Path(root)


def write_cifar10_pickles(
    root: Path, per_batch: int = 20, num_test: int = 30, seed: int = 0, labels_override: dict | None = None
) -> Path:
    """``root/cifar-10-batches-py/`` with ``data_batch_1..5``, ``test_batch``, ``batches.meta``.

    Args:
        root: Folder to create the batches under.
        per_batch: Images per training batch (the original has 10,000).
        num_test: Images in ``test_batch``.
        seed: Seed of the images and labels.
        labels_override: ``{batch name: labels}`` replacing the drawn labels (to inject bad ones).
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]
    for offset, name in enumerate(names):
        count = num_test if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, size=count)
        images = synthetic_images(count, labels, (32, 32), seed + offset)
        labels_list = list((labels_override or {}).get(name, labels.tolist()))
        _dump(
            folder / name,
            {
                "batch_label": f"synthetic {name}",
                "labels": labels_list,
                "data": images.transpose(0, 3, 1, 2).reshape(count, 3072),  # rows of R, G, B planes
                "filenames": [f"{name}_{index}.png" for index in range(count)],
            },
        )
    _dump(
        folder / "batches.meta",
        {"num_cases_per_batch": per_batch, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072},
    )
    return Path(root)


def write_cifar100_pickles(root: Path, num_train: int = 200, num_test: int = 50, seed: int = 0) -> Path:
    """``root/cifar-100-python/`` with ``train``, ``test`` and ``meta`` (fine and coarse labels)."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for offset, (name, count) in enumerate((("train", num_train), ("test", num_test))):
        labels = rng.integers(0, 100, size=count)
        images = synthetic_images(count, labels, (32, 32), seed + offset)
        _dump(
            folder / name,
            {
                "filenames": [f"{name}_{index}.png" for index in range(count)],
                "batch_label": f"synthetic {name}",
                "fine_labels": labels.tolist(),
                "coarse_labels": (labels // 5).tolist(),
                "data": images.transpose(0, 3, 1, 2).reshape(count, 3072),
            },
        )
    _dump(
        folder / "meta",
        {"fine_label_names": list(CIFAR100_CLASSES), "coarse_label_names": [f"c{i}" for i in range(20)]},
    )
    return Path(root)


def write_image_tree(
    root: Path,
    classes: Sequence[str] = CIFAR10_CLASSES,
    per_class: dict[str, int] | None = None,
    size: tuple[int, int] | Sequence[tuple[int, int]] = (32, 32),
    formats: Sequence[str] = ("png", "jpg"),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``root/<split>/<class>/NNNN.<fmt>``, cycling through ``formats``; returns what was written.

    Args:
        root: Folder holding the split folders.
        classes: Class folder names.
        per_class: Images per class for each split (default ``{"train": 6, "test": 2}``).
        size: ``(H, W)`` of every image, or a list of sizes to cycle through.
        formats: File extensions to cycle through (PNG is lossless, JPEG is not).
        seed: Seed of the images.

    Returns:
        ``{split: uint8 (N, 3, H, W)}`` of the pixels written (for equal sizes), in scan order.
    """
    per_class = per_class or {"train": 6, "test": 2}
    sizes = [size] if isinstance(size[0], int) else list(size)
    written: dict[str, torch.Tensor] = {}
    for split_index, (split, count) in enumerate(per_class.items()):
        arrays = []
        for label, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                height, width = sizes[index % len(sizes)]
                pixels = synthetic_images(
                    1, np.array([label]), (height, width), seed + 1000 * split_index + 10 * label + index
                )[0]
                fmt = formats[index % len(formats)]
                Image.fromarray(pixels).save(folder / f"{index:04d}.{fmt}", quality=95)
                arrays.append(pixels)
        if len(sizes) == 1:
            written[split] = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return written


def write_imagenet_tree(
    root: Path,
    num_classes: int = 4,
    per_class: dict[str, int] | None = None,
    torchvision_layout: bool = False,
    seed: int = 0,
) -> Path:
    """An ImageNet-shaped tree: ``train/`` and ``val/`` with WordNet-id class folders of JPEG/PNG
    images of assorted sizes; ``torchvision_layout`` adds the ``meta.bin`` torchvision's parser writes.
    """
    wnids = [f"n{index:08d}" for index in range(num_classes)]
    write_image_tree(
        root,
        wnids,
        per_class or {"train": 12, "val": 3},
        size=[(48, 64), (40, 40), (72, 56)],
        formats=("JPEG", "png"),
        seed=seed,
    )
    if torchvision_layout:
        wnid_to_classes = {wnid: (f"class {index}", f"synonym {index}") for index, wnid in enumerate(wnids)}
        val_wnids = sorted(wnids * (per_class or {"val": 3})["val"])
        torch.save((wnid_to_classes, val_wnids), Path(root) / "meta.bin")
    return Path(root)
