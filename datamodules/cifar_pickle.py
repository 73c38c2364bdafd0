"""CIFAR's pickle batches, read with an unpickler that can build nothing but CIFAR data.

A pickle can call any importable function while it loads (``os.system`` included), and a data
folder is not a trusted place: a file planted in ``cifar-10-batches-py/`` would run with the
training's rights. The official files (Python 2 pickles, protocol 2) hold a dict of strings,
lists and ints plus one uint8 numpy array, so the unpickler admits exactly the globals a numpy
array needs (``_reconstruct``, ``ndarray``, ``dtype``; under numpy 1's and numpy 2's module names)
and ``_codecs.encode`` with the latin-1 codec plus ``bytes()`` (how Python 3 writes bytes, and
empty bytes, at protocol 2). Anything else stops the load before it is built.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import DataFormatError

try:  # numpy 2 moved the module; pickles written by either name both load
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, "latin1"); other codecs are refused.
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with the {encoding!r} codec")
    return codecs.encode(text, "latin1")


def _empty_bytes(*args: object) -> bytes:
    # ... and an empty bytes object as bytes() (an empty array's data); nothing else through bytes
    if args:
        raise pickle.UnpicklingError("bytes() with arguments")
    return b""


_ALLOWED = {
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _Refused(Exception):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")


class CIFARUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` knows only the globals of CIFAR's files."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(module, name) from None


def load_cifar_pickle(path: Path) -> dict[str, Any]:
    """The dict in one CIFAR pickle file, keys as ``str`` (the originals are Python 2 byte strings).

    Raises:
        DataFormatError: the file cannot be read, is not a pickle, or holds anything but CIFAR data.
    """
    try:
        with open(path, "rb") as file:
            # latin1: the originals' Python 2 strings (keys, names, the array's raw bytes) as numpy expects
            entry = CIFARUnpickler(file, encoding="latin1").load()
    except _Refused as refused:
        raise DataFormatError(f"{path} holds a pickled object of type {refused}, not CIFAR data; refused") from None
    except OSError as error:
        raise DataFormatError(f"{path} is unreadable ({error.strerror or error})") from None
    except Exception as error:  # UnpicklingError, EOFError, numpy's errors on a mangled array...
        raise DataFormatError(f"{path} is unreadable ({type(error).__name__}: {error})") from None
    if not isinstance(entry, dict):
        raise DataFormatError(f"{path} holds a {type(entry).__name__}, not CIFAR's dict of data and labels")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def read_cifar_batches(paths: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)`` of the batch files, in order.

    Raises:
        DataFormatError: naming the file whose data or labels are missing, mistyped or mismatched.
    """
    images, labels = [], []
    for path in paths:
        entry = load_cifar_pickle(path)
        data, targets = entry.get("data"), entry.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % 3072:
            what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataFormatError(f"{path}: 'data' is {what}; CIFAR batches hold uint8 rows of 3072 values (3x32x32)")
        if not isinstance(targets, list) or not all(type(label) is int for label in targets):
            raise DataFormatError(f"{path}: '{label_key}' is missing or not a list of integers")
        batch = data.reshape(-1, 3, 32, 32)
        if len(targets) != len(batch):
            raise DataFormatError(f"{path} holds {len(batch)} images but {len(targets)} labels")
        try:
            labels.append(np.asarray(targets, dtype=np.int64))
        except OverflowError:
            raise DataFormatError(f"{path}: a label in '{label_key}' does not fit in 64 bits") from None
        images.append(batch)
    if not sum(len(batch) for batch in images):
        raise DataFormatError(f"{', '.join(str(path) for path in paths)} hold no images")
    return np.concatenate(images), np.concatenate(labels)


def read_cifar_classes(path: Path, key: str) -> list[str]:
    """The class names listed under ``key`` in a meta file."""
    names = load_cifar_pickle(path).get(key)
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise DataFormatError(f"{path}: '{key}' is missing or not a list of class names")
    return names
