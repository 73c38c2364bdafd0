"""Bad-input cases. Data files: CIFAR pickles, image trees, IDX files, caches."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.synthetic import write_cifar10_pickles, write_idx, write_image_tree
from tests.bad_inputs.case import CIFAR, FIT, MARKER, TEST, Case  # noqa: F401
from tests.support import write_synthetic_mnist

CASES: list[Case] = [
    Case(
        "cifar-meta-malicious",
        f"{FIT} {CIFAR}={{cifar_meta_malicious}}",
        "batches.meta holds a pickled object of type posix.system, not CIFAR data; refused",
    ),
    Case(
        "cifar-batch-malicious",
        f"{FIT} {CIFAR}={{cifar_batch_malicious}}",
        "data_batch_2 holds a pickled object of type posix.system, not CIFAR data; refused",
    ),
    Case(
        "cifar-batch-float-data",
        f"{FIT} {CIFAR}={{cifar_float_data}}",
        "data_batch_1: 'data' is float64 array of shape (20, 3072); CIFAR batches hold uint8 rows",
    ),
    Case(
        "idx-impossible-header",
        f"{FIT} --data.data_dir={{mnist_impossible_header}}",
        "train-images-idx3-ubyte is truncated or corrupt: its header promises 1,000,000,000,016 bytes",
    ),
    Case(
        "idx-gz-impossible-header",
        f"{FIT} --data.data_dir={{mnist_gz_impossible_header}}",
        "t10k-images-idx3-ubyte.gz is truncated or corrupt: its header promises 1,000,000,000,000 bytes of data",
    ),
    Case(
        "idx-empty-file",
        f"{FIT} --data.data_dir={{mnist_empty_labels}}",
        "train-labels-idx1-ubyte is not an unsigned-byte IDX file (magic number missing",
    ),
    Case(
        "idx-labels-fewer-than-images",
        f"{FIT} --data.data_dir={{mnist_short_labels}}",
        "train-labels-idx1-ubyte holds (299,) labels for the 300 images",
    ),
    Case(
        "tree-dangling-symlink", f"{FIT} {CIFAR}={{tree_dangling_symlink}}", "cat/0002.png is a dangling symbolic link"
    ),
    Case("tree-truncated-png", f"{FIT} {CIFAR}={{tree_truncated_png}}", "CorruptImageError: cannot decode image"),
    Case(
        "tree-folder-named-like-an-image",
        f"{FIT} {CIFAR}={{tree_folder_as_image}}",
        "deer/0002.png is a folder; images must sit directly in their class folder",
    ),
    Case("tree-stray-file", f"{FIT} {CIFAR}={{tree_stray_file}}", "labels.csv is not an image file by its extension"),
    Case(
        "tree-grayscale-alpha",
        f"{FIT} {CIFAR}={{tree_grayscale_alpha}}",
        "has 2 channel(s) (grayscale + alpha) but CIFAR-10 feeds 3-channel models",
    ),
    Case(
        "tree-float-tiff",
        f"{FIT} {CIFAR}={{tree_float_tiff}}",
        "is a 32-bit floating-point grayscale (F) image; refused",
    ),
]


class _Payload:
    """Pickled into a CIFAR file: unpickling it would create ``MARKER`` in the current folder."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _impossible_idx(path: Path, compressed: bool = False) -> None:
    """An IDX header promising 10^12 bytes of images, over 1,000 bytes."""
    data = struct.pack(">HBB3I", 0, 0x08, 3, 1_000_000, 1000, 1000) + bytes(1000)
    path.write_bytes(gzip.compress(data) if compressed else data)


def write_inputs(root: Path) -> dict[str, Path]:
    """Create the inputs this family's cases name under ``root``; returns ``{placeholder: path}``."""
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    paths["cifar_meta_malicious"] = write_cifar10_pickles(root / "cifar_meta_malicious", per_batch=20, num_test=30)
    meta = paths["cifar_meta_malicious"] / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": _Payload()}, protocol=2))
    paths["cifar_batch_malicious"] = write_cifar10_pickles(root / "cifar_batch_malicious", per_batch=20, num_test=30)
    batch = paths["cifar_batch_malicious"] / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [_Payload()]}, protocol=2))
    paths["cifar_float_data"] = write_cifar10_pickles(root / "cifar_float_data", per_batch=20, num_test=30)
    batch = paths["cifar_float_data"] / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": np.zeros((20, 3072)), "labels": [0] * 20}, protocol=2))

    paths["mnist_impossible_header"] = write_synthetic_mnist(root / "mnist_impossible_header", 300, 50)
    _impossible_idx(paths["mnist_impossible_header"] / "MNIST" / "raw" / "train-images-idx3-ubyte")
    gz = paths["mnist_gz_impossible_header"] = write_synthetic_mnist(root / "mnist_gz_impossible_header", 300, 50)
    (gz / "MNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()
    _impossible_idx(gz / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", compressed=True)
    paths["mnist_empty_labels"] = write_synthetic_mnist(root / "mnist_empty_labels", 300, 50)
    (paths["mnist_empty_labels"] / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(b"")
    paths["mnist_short_labels"] = write_synthetic_mnist(root / "mnist_short_labels", 300, 50)
    write_idx(paths["mnist_short_labels"] / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(299, np.uint8))

    tree = {"train": 2, "test": 1}
    for name in (
        "tree_dangling_symlink",
        "tree_truncated_png",
        "tree_folder_as_image",
        "tree_stray_file",
        "tree_grayscale_alpha",
        "tree_float_tiff",
    ):
        paths[name] = root / name
        write_image_tree(paths[name], per_class=tree, formats=("png",))
    (paths["tree_dangling_symlink"] / "train" / "cat" / "0002.png").symlink_to(root / "nowhere" / "gone.png")
    truncated = paths["tree_truncated_png"] / "train" / "dog" / "0001.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (paths["tree_folder_as_image"] / "train" / "deer" / "0002.png").mkdir()
    (paths["tree_stray_file"] / "test" / "ship" / "labels.csv").write_text("0000.png,ship\n")
    alpha = paths["tree_grayscale_alpha"] / "train" / "horse" / "0001.png"
    Image.open(alpha).convert("LA").save(alpha)
    Image.fromarray(np.full((32, 32), 0.5, np.float32)).save(paths["tree_float_tiff"] / "train" / "bird" / "0002.tif")
    return paths
