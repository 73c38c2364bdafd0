"""Data files are data: CIFAR pickles can build nothing but CIFAR data, every image mode decodes to
8 bits or is refused by its real name, an unreadable file is a named error, MNIST reads from
``.gz`` and refuses a lying IDX header, and the decode cache never stops a run."""

from __future__ import annotations

import errno
import gzip
import os
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import cache as cache_module
from datamodules.base import DataFormatError
from datamodules.cache import DiskCache
from datamodules.cifar import CIFAR10_CLASSES, CIFAR10DataModule, CIFAR100DataModule
from datamodules.cifar_pickle import load_cifar_pickle
from datamodules.idx import read_idx
from datamodules.image_folder import CorruptImageError, UnreadableFileError, decode_files, read_image, scan_split
from datamodules.mnist import MNIST_FILES, MNISTDataModule
from datamodules.synthetic import write_cifar10_pickles, write_cifar100_pickles, write_idx, write_image_tree
from tests.support import SHARED_DATA, write_synthetic_mnist

MARKER = "pwned.txt"


class _Payload:
    """Unpickling it would run ``touch pwned.txt`` in the current folder."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _cifar_dm(root: Path, tmp_path: Path, cls=CIFAR10DataModule, **kwargs) -> CIFAR10DataModule:
    return cls(str(root), val_size=5, batch_size=8, download=False, cache_dir=str(tmp_path / "cache"), **kwargs)


# ----- CIFAR pickles ------------------------------------------------------------------------------


def test_a_payload_planted_in_batches_meta_is_refused_and_never_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = write_cifar10_pickles(tmp_path / "data", per_batch=4, num_test=4)
    meta = root / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": _Payload()}, protocol=2))
    with pytest.raises(DataFormatError) as info:
        _cifar_dm(root, tmp_path).prepare_data()
    message = str(info.value)
    assert f"{meta} holds a pickled object of type posix.system, not CIFAR data; refused" in message
    assert "\n" not in message
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_payload_inside_a_data_batch_is_refused(tmp_path: Path, monkeypatch, protocol: int) -> None:
    monkeypatch.chdir(tmp_path)
    root = write_cifar10_pickles(tmp_path / "data", per_batch=4, num_test=4)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    entry = load_cifar_pickle(batch)
    entry["labels"] = [*entry["labels"][:-1], _Payload()]
    batch.write_bytes(pickle.dumps(entry, protocol=protocol))
    with pytest.raises(DataFormatError, match=r"data_batch_3 holds a pickled object of type posix\.system"):
        _cifar_dm(root, tmp_path).prepare_data()
    assert not (tmp_path / MARKER).exists()


def test_cifar100_meta_and_other_codecs_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = write_cifar100_pickles(tmp_path / "data", num_train=10, num_test=5)
    meta = root / "cifar-100-python" / "meta"
    meta.write_bytes(pickle.dumps({"fine_label_names": _Payload()}, protocol=2))
    with pytest.raises(DataFormatError, match=r"meta holds a pickled object of type posix\.system"):
        _cifar_dm(root, tmp_path, CIFAR100DataModule).prepare_data()
    # _codecs.encode is admitted for Python 3's protocol-2 bytes only, with the latin-1 codec
    meta.write_bytes(b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x06\x00\x00\x00base64\x86R.")
    with pytest.raises(DataFormatError, match=r"meta is unreadable \(UnpicklingError: _codecs.encode with the 'base"):
        load_cifar_pickle(meta)
    assert not (tmp_path / MARKER).exists()


def test_synthetic_pickles_read_the_same_as_plain_pickle(tmp_path: Path) -> None:
    root = write_cifar10_pickles(tmp_path / "data", per_batch=6, num_test=4)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        path = root / "cifar-10-batches-py" / name
        with open(path, "rb") as file:
            expected = pickle.load(file, encoding="latin1")
        got = load_cifar_pickle(path)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert np.array_equal(got[key], value) if isinstance(value, np.ndarray) else got[key] == value


def _py2(text: bytes) -> bytes:
    """A Python 2 ``str``: SHORT_BINSTRING or BINSTRING, as cPickle wrote the originals."""
    return b"U" + bytes([len(text)]) + text if len(text) < 256 else b"T" + struct.pack("<i", len(text)) + text


def _py2_int(value: int) -> bytes:
    return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value)


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle and numpy 1 wrote CIFAR-10's: protocol 2, byte-string keys, the
    array through ``numpy.core.multiarray._reconstruct``, its raw bytes as a Python 2 string."""
    return b"".join([
        b"\x80\x02}(", _py2(b"batch_label"), _py2(b"py2 batch"),
        _py2(b"data"), b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85", _py2(b"b"), b"\x87R",
        b"(K\x01", _py2_int(data.shape[0]), _py2_int(data.shape[1]), b"\x86",
        b"cnumpy\ndtype\n", _py2(b"u1"), b"K\x00K\x01\x87R",
        b"(K\x03", _py2(b"|"), b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",
        b"\x89", _py2(data.tobytes()), b"tb",
        _py2(b"labels"), b"](", b"".join(_py2_int(label) for label in labels), b"eu.",
    ])  # fmt: skip


def test_python2_pickles_of_the_official_format_load(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=3).tolist()
        (folder / name).write_bytes(_py2_batch(data, labels))
        written[name] = (data, labels)
    names = b"".join(_py2(name.encode()) for name in CIFAR10_CLASSES)
    (folder / "batches.meta").write_bytes(b"\x80\x02}(" + _py2(b"label_names") + b"](" + names + b"eu.")
    entry = load_cifar_pickle(folder / "test_batch")
    assert isinstance(entry["data"], np.ndarray) and np.array_equal(entry["data"], written["test_batch"][0])
    dm = _cifar_dm(tmp_path / "data", tmp_path)
    test = dm.load_split(train=False)
    assert torch.equal(test.images, torch.from_numpy(written["test_batch"][0]).view(-1, 3, 32, 32))
    assert test.labels.tolist() == written["test_batch"][1]
    assert dm.classes == CIFAR10_CLASSES and len(dm.load_split(train=True)) == 15


@pytest.mark.parametrize(
    ("entry", "expect"),
    [
        ({"labels": [1]}, r"'data' is NoneType"),
        ({"data": np.zeros((1, 3072), np.float64), "labels": [1]}, r"'data' is float64 array of shape \(1, 3072\)"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [1]}, r"holds 2 images but 1 labels"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": ["cat"]}, r"'labels' is missing or not a list of integers"),
        ([1, 2, 3], r"holds a list, not CIFAR's dict"),
    ],
)
def test_malformed_batches_are_named(tmp_path: Path, entry, expect: str) -> None:
    root = write_cifar10_pickles(tmp_path / "data", per_batch=4, num_test=4)
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(DataFormatError, match=r"CIFAR-10: .*data_batch_2.*" + expect):
        _cifar_dm(root, tmp_path).prepare_data()


def test_a_folder_where_a_batch_should_be_is_named(tmp_path: Path) -> None:
    root = write_cifar10_pickles(tmp_path / "data", per_batch=4, num_test=4)
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.unlink()
    batch.mkdir()
    with pytest.raises(DataFormatError, match=rf"CIFAR-10: {batch} is not a file \(a folder\?\); expected a batch"):
        _cifar_dm(root, tmp_path).prepare_data()


def test_batches_without_images_are_an_error(tmp_path: Path) -> None:
    root = write_cifar10_pickles(tmp_path / "data", per_batch=0, num_test=4)
    with pytest.raises(DataFormatError, match=r"data_batch_1, .*data_batch_5 hold no images"):
        _cifar_dm(root, tmp_path).prepare_data()


# ----- image modes --------------------------------------------------------------------------------


def _png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG (colour type 2, bit depth 16), written by hand: PIL cannot save one."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def _rgb(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def test_16_bit_grayscale_mid_grey_decodes_to_128(tmp_path: Path) -> None:
    path = tmp_path / "grey16.png"
    Image.fromarray(np.array([[0, 255, 32768, 65535]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    image = read_image(path)
    assert image.dtype == torch.uint8 and image.tolist() == [[[0, 0, 128, 255]]]
    assert read_image(path, rgb=True).tolist() == [[[0, 0, 128, 255]]] * 3


def test_16_bit_rgb_png_decodes_to_its_high_bytes(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 65536, size=(32, 32, 3)).astype(np.uint16)
    _png16(tmp_path / "rgb16.png", pixels)
    image = read_image(tmp_path / "rgb16.png")
    assert image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy((pixels >> 8).astype(np.uint8)).permute(2, 0, 1))


@pytest.mark.parametrize(
    ("mode", "suffix", "channels"),
    [("P", "png", 3), ("CMYK", "jpg", 3), ("RGBA", "png", 3), ("LA", "png", 1), ("1", "png", 1), ("L", "png", 1)],
)
def test_every_8_bit_mode_decodes_by_its_rule(tmp_path: Path, mode: str, suffix: str, channels: int) -> None:
    path = tmp_path / f"image.{suffix}"
    Image.fromarray(_rgb()).convert(mode).save(path, quality=95)
    image = read_image(path)
    assert image.dtype == torch.uint8 and image.shape == (channels, 32, 32)
    # palette and CMYK: PIL's RGB conversion (never palette indices as grey, never CMYK as RGBA);
    # alpha: dropped, the stored colour kept
    expected = np.asarray(Image.open(path).convert("RGB" if channels == 3 else "L"))
    assert np.array_equal(image.permute(1, 2, 0).squeeze(-1).numpy(), expected)
    assert read_image(path, rgb=True).shape == (3, 32, 32)


def test_floating_point_images_are_refused_by_their_mode(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((32, 32), 0.5, dtype=np.float32)).save(path)
    with pytest.raises(DataFormatError, match=r"float.tif is a 32-bit floating-point grayscale \(F\) image; refused"):
        read_image(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    write_image_tree(root, per_class={"train": 2, "test": 1}, formats=("png",))
    return root


def test_a_tree_of_mixed_modes_loads_as_rgb(tree: Path, tmp_path: Path) -> None:
    swaps = {"airplane": ("P", "png"), "cat": ("CMYK", "jpg"), "dog": ("RGBA", "png")}
    for name, (mode, suffix) in swaps.items():
        original = tree / "train" / name / "0000.png"
        pixels = Image.open(original).convert(mode)
        original.unlink()
        pixels.save(original.with_suffix(f".{suffix}"), quality=95)
    pixels16 = np.random.default_rng(1).integers(0, 65536, size=(32, 32, 3)).astype(np.uint16)
    (tree / "train" / "ship" / "0000.png").unlink()
    _png16(tree / "train" / "ship" / "0000.png", pixels16)
    files, _ = scan_split(tree / "train", CIFAR10_CLASSES, "CIFAR-10")
    train = _cifar_dm(tree, tmp_path).load_split(train=True)
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 3, 32, 32)
    ship = files.index(str(tree / "train" / "ship" / "0000.png"))
    assert torch.equal(train.images[ship], torch.from_numpy((pixels16 >> 8).astype(np.uint8)).permute(2, 0, 1))
    palette = files.index(str(tree / "train" / "airplane" / "0000.png"))
    expected = np.array(Image.open(files[palette]).convert("RGB"))
    assert torch.equal(train.images[palette], torch.from_numpy(expected).permute(2, 0, 1))


@pytest.mark.parametrize(
    ("mode", "pixels", "expect"),
    [
        ("L", None, r"has 1 channel\(s\) \(grayscale\) but CIFAR-10 feeds 3-channel models"),
        ("LA", None, r"has 2 channel\(s\) \(grayscale \+ alpha\) but CIFAR-10 feeds 3-channel models"),
        ("I;16", np.full((32, 32), 32768, np.uint16), r"has 1 channel\(s\) \(16-bit grayscale\) but CIFAR-10"),
    ],
)
def test_grey_images_in_a_colour_tree_are_named_by_their_real_mode(tree: Path, tmp_path: Path, mode, pixels, expect):
    path = tree / "train" / "frog" / "0001.png"
    image = Image.fromarray(pixels) if pixels is not None else Image.open(path).convert(mode)
    image.save(path)
    with pytest.raises(DataFormatError, match=expect):
        _cifar_dm(tree, tmp_path).prepare_data()


# ----- unreadable files ---------------------------------------------------------------------------


def test_a_dangling_symlink_is_a_named_error(tree: Path, tmp_path: Path) -> None:
    link = tree / "train" / "cat" / "0002.png"
    link.symlink_to(tree / "elsewhere" / "gone.png")
    with pytest.raises(DataFormatError, match=rf"{link} is a dangling symbolic link \(to .*gone.png"):
        _cifar_dm(tree, tmp_path).prepare_data()


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda folder: (folder / "0002.png").mkdir(), r"0002.png is a folder; images must sit directly"),
        (lambda folder: (folder / "notes.txt").write_text("x"), r"notes.txt is not an image file by its extension"),
        (lambda folder: os.mkfifo(folder / "0002.png"), r"0002.png is not a regular file"),
    ],
)
def test_an_entry_that_is_not_an_image_is_a_named_error(tree: Path, tmp_path: Path, make, expect: str) -> None:
    make(tree / "train" / "cat")
    with pytest.raises(DataFormatError, match=expect):
        _cifar_dm(tree, tmp_path).prepare_data()


def test_anything_but_class_folders_in_a_split_folder_is_a_named_error(tree: Path, tmp_path: Path) -> None:
    stray = tree / "test" / "0000.png"
    shutil.copy(tree / "test" / "cat" / "0000.png", stray)
    with pytest.raises(DataFormatError, match=rf"{stray} is not a folder; a split folder holds only class folders"):
        _cifar_dm(tree, tmp_path).prepare_data()
    stray.unlink()
    (tree / "train" / "zebra").symlink_to(tmp_path / "gone")
    with pytest.raises(DataFormatError, match=r"train/zebra is a dangling symbolic link; a split folder holds only"):
        _cifar_dm(tree, tmp_path).prepare_data()


def test_hidden_entries_are_ignored(tree: Path, tmp_path: Path) -> None:
    (tree / "train" / "cat" / ".DS_Store").write_bytes(b"\0")
    (tree / "train" / "cat" / ".ipynb_checkpoints").mkdir()
    assert len(_cifar_dm(tree, tmp_path).load_split(train=True)) == 20


def test_a_truncated_png_is_a_named_error(tree: Path, tmp_path: Path) -> None:
    path = tree / "train" / "dog" / "0001.png"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptImageError, match=rf"cannot decode image {path} "):
        _cifar_dm(tree, tmp_path).prepare_data()


def test_a_file_without_read_permission_is_a_named_error(tree: Path, monkeypatch) -> None:
    path = tree / "train" / "dog" / "0001.png"
    if os.geteuid() == 0:  # root reads whatever the permissions say: refuse the read by hand
        real_read = Path.read_bytes

        def denied(self: Path) -> bytes:
            if self == path:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_read(self)

        monkeypatch.setattr(Path, "read_bytes", denied)
    path.chmod(0)
    try:
        with pytest.raises(UnreadableFileError, match=rf"cannot read image {path} \(Permission denied\)"):
            decode_files([path], in_chans=3, image_size=(32, 32))
        _, kept, skipped = decode_files([path], in_chans=3, image_size=(32, 32), skip_corrupt=True)
        assert (kept, skipped) == ([], [str(path)])  # skipped only when asked, and counted
    finally:
        path.chmod(0o644)


# ----- MNIST --------------------------------------------------------------------------------------


def _gzip_raw(root: Path) -> None:
    """Replace every IDX file under ``root/MNIST/raw`` by its ``.gz`` alone."""
    for name in MNIST_FILES:
        plain = root / "MNIST" / "raw" / name
        with open(plain, "rb") as source, gzip.open(f"{plain}.gz", "wb") as target:
            shutil.copyfileobj(source, target)
        plain.unlink()


def test_mnist_as_gz_files_only_loads(tmp_path: Path, monkeypatch) -> None:
    plain = MNISTDataModule(write_synthetic_mnist(tmp_path / "plain", 300, 50), download=False, val_size=10)
    plain.setup()
    root = write_synthetic_mnist(tmp_path / "gz", 300, 50)
    _gzip_raw(root)

    def no_download(*args, **kwargs):
        raise AssertionError("the .gz files are there: nothing to download")

    monkeypatch.setattr("datamodules.mnist.MNIST", no_download)
    gz = MNISTDataModule(root, download=True, val_size=10)
    gz.prepare_data()
    gz.setup()
    assert torch.equal(gz.train_set.images, plain.train_set.images)
    assert torch.equal(gz.test_set.labels, plain.test_set.labels)
    assert sorted(path.name for path in (root / "MNIST" / "raw").iterdir()) == sorted(f"{n}.gz" for n in MNIST_FILES)


def test_real_mnist_test_split_reads_the_same_from_gz(tmp_path: Path) -> None:
    raw = SHARED_DATA / "MNIST" / "raw"
    if not (raw / "t10k-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found under {raw}")
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with open(raw / name, "rb") as source, gzip.open(tmp_path / f"{name}.gz", "wb", compresslevel=1) as target:
            shutil.copyfileobj(source, target)
        assert np.array_equal(read_idx(tmp_path / f"{name}.gz"), read_idx(raw / name))
    assert read_idx(tmp_path / "t10k-images-idx3-ubyte.gz").shape == (10_000, 28, 28)


def _impossible_header(path: Path, compressed: bool = False) -> None:
    data = struct.pack(">HBB3I", 0, 0x08, 3, 1_000_000, 1000, 1000) + bytes(1000)
    path.write_bytes(gzip.compress(data) if compressed else data)


def test_an_impossible_idx_header_is_one_line_naming_the_file(tmp_path: Path) -> None:
    root = write_synthetic_mnist(tmp_path / "data", 300, 50)
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    _impossible_header(images)
    with pytest.raises(DataFormatError) as info:
        MNISTDataModule(root, download=False, val_size=10).setup()
    assert str(info.value) == (
        f"{images} is truncated or corrupt: its header promises 1,000,000,000,016 bytes "
        "(shape (1000000, 1000, 1000)) but the file has 1,016. Delete it and download again."
    )
    _impossible_header(tmp_path / "x.gz", compressed=True)
    promise = r"its header promises 1,000,000,000,000 bytes of data \(shape \(1000000, 1000, 1000\)\)"
    found = r"but it decompresses to 1,000\."
    with pytest.raises(DataFormatError, match=rf"x.gz is truncated or corrupt: {promise} {found}"):
        read_idx(tmp_path / "x.gz")


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"", r"is not an unsigned-byte IDX file \(magic number missing"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd", r"is not an unsigned-byte IDX file \(magic number 00000d01"),
        (b"\x00\x00\x08\x03\x00\x00", r"is truncated: its header announces 3 dimensions but ends after 0"),
        (b"\x1f\x8b not gzip", r"is unreadable \("),
    ],
)
def test_malformed_idx_files_are_named(tmp_path: Path, content: bytes, expect: str) -> None:
    path = tmp_path / ("f.gz" if content.startswith(b"\x1f\x8b") else "f")
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=expect):
        read_idx(path)


def test_mnist_files_that_disagree_are_named(tmp_path: Path) -> None:
    root = write_synthetic_mnist(tmp_path / "data", 300, 50)
    raw = root / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(299, np.uint8))
    with pytest.raises(DataFormatError, match=r"train-labels-idx1-ubyte holds \(299,\) labels for the 300 images"):
        MNISTDataModule(root, download=False, val_size=10).setup()
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte holds no images"):
        MNISTDataModule(root, download=False, val_size=10).setup()
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(DataFormatError, match=r"holds an array of shape \(5, 32, 32\); MNIST images are"):
        MNISTDataModule(root, download=False, val_size=10).setup()


def test_a_folder_where_an_idx_file_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").mkdir()
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte is unreadable \(Is a directory\)"):
        read_idx(tmp_path / "train-images-idx3-ubyte")
    root = write_synthetic_mnist(tmp_path / "data", 300, 50)
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.unlink()
    labels.mkdir()
    with pytest.raises(DataFormatError, match=rf"{labels} is not a file \(a folder\?\); expected an IDX file"):
        MNISTDataModule(root, download=True, val_size=10).setup()


# ----- the decode cache ---------------------------------------------------------------------------


def test_a_cache_folder_that_is_a_file_costs_one_line(tree: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "cache").write_text("not a folder")
    train = _cifar_dm(tree, tmp_path).load_split(train=True)
    assert len(train) == 20
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cache not written: {tmp_path / 'cache'}/cifar10-train-folder-")
    assert lines[0].endswith(f": the cache folder {tmp_path / 'cache'} is a file; training continues without it")
    assert (tmp_path / "cache").read_text() == "not a folder"


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("file write failed")])
def test_a_failed_cache_write_leaves_nothing_and_the_run_goes_on(tmp_path: Path, monkeypatch, capsys, error) -> None:
    def full_disk(entry, handle) -> None:
        handle.write(b"half an entry")
        raise error

    monkeypatch.setattr(cache_module.torch, "save", full_disk)
    cache = DiskCache(tmp_path / "cache")
    entry = cache.get_or_build("set-train", "key", lambda: {"images": torch.zeros(2, dtype=torch.uint8)})
    assert torch.equal(entry["images"], torch.zeros(2, dtype=torch.uint8))
    assert list((tmp_path / "cache").iterdir()) == []  # no temporary file, no partial entry
    reason = "No space left on device" if isinstance(error, OSError) else "file write failed"
    assert capsys.readouterr().err == (
        f"cache not written: {cache.path('set-train', 'key')}: {reason}; training continues without it\n"
    )


def test_a_cache_entry_that_is_not_a_dict_is_a_miss(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache")
    cache.path("set-train", "key").parent.mkdir()
    torch.save(torch.zeros(3), cache.path("set-train", "key"))
    with pytest.warns(UserWarning, match=r"ignoring unreadable cache entry .*\(holds a Tensor, not an entry's dict\)"):
        assert cache.get_or_build("set-train", "key", lambda: {"a": torch.ones(1)})["a"].item() == 1


def test_a_cache_entry_holding_objects_is_a_miss_and_never_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cache = DiskCache(tmp_path / "cache")
    cache.path("set-train", "key").parent.mkdir()
    torch.save({"images": _Payload()}, cache.path("set-train", "key"))
    with pytest.warns(UserWarning, match="ignoring unreadable cache entry"):
        entry = cache.get_or_build("set-train", "key", lambda: {"images": torch.ones(1)})
    assert torch.equal(entry["images"], torch.ones(1)) and not (tmp_path / MARKER).exists()
    assert torch.equal(cache.load("set-train", "key")["images"], torch.ones(1))  # rebuilt in place
