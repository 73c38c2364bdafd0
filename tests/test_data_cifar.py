"""CIFAR-10/100: torchvision pickle batches and image-folder trees written to a temp dir, the real
JPEG copy in ../shared/data when present, presets, the seeded split, the decode cache, GCN+ZCA,
and a clear error for every kind of bad input."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    CorruptImageError,
    DataFormatError,
    DataNotFoundError,
)
from datamodules import cifar as cifar_module
from datamodules.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES
from datamodules.presets import BATCH_PRESETS
from datamodules.synthetic import write_cifar10_pickles, write_cifar100_pickles, write_image_tree
from datamodules.whitening import GCNZCAWhitener

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = Path(os.environ.get("ABLATE_SHARED_DATA", REPO.parent / "shared" / "data")) / "cifar10-jpeg"


def _dm(root: Path, tmp_path: Path, **kwargs) -> CIFAR10DataModule:
    kwargs = {
        "val_size": 20,
        "batch_size": 16,
        "download": False,
        "cache_dir": str(tmp_path / "cache"),
        **kwargs,
    }
    return CIFAR10DataModule(str(root), **kwargs)


def _ready(dm: CIFAR10DataModule) -> CIFAR10DataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _official_test(dm: CIFAR10DataModule):
    """The test split back in the source's order (the data module holds it class-interleaved)."""
    return dm.test_set.select(torch.argsort(dm.test_set.source_index))


@pytest.fixture
def pickles(tmp_path: Path) -> Path:
    return write_cifar10_pickles(tmp_path / "data", per_batch=20, num_test=30)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    root = tmp_path / "tree"
    return root, write_image_tree(root, formats=("png",))


# ----- sources ------------------------------------------------------------------------------------


def test_pickle_batches_load_through_torchvision_reader(pickles: Path, tmp_path: Path) -> None:
    dm = _ready(_dm(pickles, tmp_path))
    assert dm.detect_source() == "pickle"
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (80, 20, 30)
    assert dm.classes == CIFAR10_CLASSES
    with open(pickles / "cifar-10-batches-py" / "test_batch", "rb") as file:
        raw = pickle.load(file, encoding="latin1")
    expected = torch.from_numpy(raw["data"]).view(-1, 3, 32, 32)
    assert torch.equal(_official_test(dm).images, expected)
    assert _official_test(dm).labels.tolist() == raw["labels"]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64


def test_cifar100_pickles_have_100_canonical_classes(tmp_path: Path) -> None:
    root = write_cifar100_pickles(tmp_path / "data", num_train=120, num_test=40)
    dm = _ready(CIFAR100DataModule(str(root), val_size=20, download=False, cache_dir=str(tmp_path / "cache")))
    assert dm.num_classes == 100 and dm.classes == CIFAR100_CLASSES and len(set(CIFAR100_CLASSES)) == 100
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (100, 20, 40)


def test_png_and_jpeg_tree_loads_in_canonical_order(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    written = write_image_tree(root, formats=("png", "jpg"))
    dm = _ready(_dm(root, tmp_path, val_size=10))
    assert dm.detect_source() == "folder" and dm.classes == CIFAR10_CLASSES
    test = _official_test(dm)
    assert len(test) == 20 and test.labels.tolist() == [label for label in range(10) for _ in range(2)]
    png = torch.arange(20) % 2 == 0  # formats alternate png, jpg within each class
    assert torch.equal(test.images[png], written["test"][png])  # PNG is lossless
    jpeg_files = sorted((root / "test").glob("*/*.jpg"), key=lambda p: (CIFAR10_CLASSES.index(p.parent.name), p.name))
    pil = torch.stack([torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1) for path in jpeg_files])
    assert (test.images[~png].float() - pil.float()).abs().mean() < 1.0  # same pixels as PIL, up to rounding


def test_auto_prefers_pickles_and_source_can_be_forced(pickles: Path, tmp_path: Path) -> None:
    write_image_tree(pickles, per_class={"train": 3, "test": 1})
    assert _dm(pickles, tmp_path).detect_source() == "pickle"
    dm = _ready(_dm(pickles, tmp_path, source="folder", val_size=5))
    assert len(dm.test_set) == 10


def test_numeric_class_folders_sort_numerically_and_other_names_warn(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_image_tree(root, classes=[str(i) for i in range(10)], per_class={"train": 2, "test": 1})
    with pytest.warns(UserWarning, match="labels follow their sorted order: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9$"):
        dm = _ready(_dm(root, tmp_path, val_size=2))
    assert dm.classes == tuple(str(i) for i in range(10))
    other = tmp_path / "other"
    write_image_tree(other, classes=[f"c{i}" for i in range(10)], per_class={"train": 2, "test": 1})
    with pytest.warns(UserWarning, match="not the canonical class names"):
        _ready(_dm(other, tmp_path, val_size=2))


# ----- split, presets, normalisation --------------------------------------------------------------


def test_validation_split_is_seeded_and_disjoint(pickles: Path, tmp_path: Path) -> None:
    first = _ready(_dm(pickles, tmp_path, seed=7))
    second = _ready(_dm(pickles, tmp_path, seed=7))
    assert torch.equal(first.val_set.images, second.val_set.images)
    other = _ready(_dm(pickles, tmp_path, seed=8))
    assert not torch.equal(first.val_set.images, other.val_set.images)
    train = {image.numpy().tobytes() for image in first.train_set.images}
    val = {image.numpy().tobytes() for image in first.val_set.images}
    assert len(train) == 80 and len(val) == 20 and not train & val


def test_default_split_is_45k_5k() -> None:
    dm = CIFAR10DataModule()
    train_idx, val_idx = dm.split_indices(50_000)
    assert (len(train_idx), len(val_idx)) == (45_000, 5_000)


@pytest.mark.parametrize("preset", BATCH_PRESETS)
def test_every_preset_gives_float_batches_of_the_right_shape(preset: str, pickles: Path, tmp_path: Path) -> None:
    dm = _ready(_dm(pickles, tmp_path, augment=preset))
    batch = next(iter(dm.train_dataloader()))
    augmented = dm.augment_batch(batch[0])
    assert augmented.shape == (16, 3, 32, 32) and augmented.dtype == torch.uint8
    images, labels = dm.transform_batch(batch, train=True)
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32 and labels.shape == (16,)
    assert torch.isfinite(images).all()


def test_eval_batches_are_only_normalised(pickles: Path, tmp_path: Path) -> None:
    dm = _ready(_dm(pickles, tmp_path, augment="autoaugment", random_erasing=1.0, mixup_alpha=1.0))
    batch = next(iter(dm.val_dataloader()))
    images, labels = dm.transform_batch(batch, train=False)
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    torch.testing.assert_close(images, (batch[0].float() / 255 - mean) / std)
    assert torch.equal(labels, batch[1])


def test_resize_applies_to_every_split(pickles: Path, tmp_path: Path) -> None:
    dm = _ready(_dm(pickles, tmp_path, resize=64, augment="lecture"))
    for train, loader in ((True, dm.train_dataloader()), (False, dm.test_dataloader())):
        images, _ = dm.transform_batch(next(iter(loader)), train=train)
        assert images.shape == (16, 3, 64, 64)


# ----- cache --------------------------------------------------------------------------------------


def test_cache_is_used_and_invalidated_when_a_file_changes(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "tree"
    write_image_tree(root, formats=("png",), per_class={"train": 3, "test": 1})
    first = _ready(_dm(root, tmp_path, val_size=3))
    cache_files = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(cache_files) == 2

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(cifar_module, "decode_files", no_decoding)
    cached = _ready(_dm(root, tmp_path, val_size=3))
    assert torch.equal(cached.test_set.images, first.test_set.images)
    monkeypatch.undo()

    changed = root / "test" / "cat" / "0000.png"
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    rebuilt = _ready(_dm(root, tmp_path, val_size=3))
    cat = CIFAR10_CLASSES.index("cat")
    assert (_official_test(rebuilt).images[cat] == 7).all()
    assert not torch.equal(rebuilt.test_set.images, first.test_set.images)
    remaining = sorted((tmp_path / "cache").glob("*.pt"))
    train_entry = next(path for path in cache_files if "-train-" in path.name)
    assert len(remaining) == 2 and train_entry in remaining  # train entry kept, test entry replaced


# ----- GCN + ZCA ----------------------------------------------------------------------------------


def test_zca_whitening_gives_identity_covariance_on_training_data() -> None:
    """Correlated synthetic images (3x6x6 = 108 values); after GCN+ZCA the covariance is the
    identity on the 107 dimensions GCN leaves (GCN removes each image's mean)."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(108, 108, generator=generator) / 40 + torch.eye(108)  # well conditioned
    raw = torch.randn(6000, 108, generator=generator) @ mixing
    images = (raw * 30 + 128).clamp(0, 255).round().to(torch.uint8).view(-1, 3, 6, 6)
    whitener = GCNZCAWhitener(scale=55.0, epsilon=0.01).fit(images, chunk=1000)
    white = whitener(images).flatten(1).double()
    covariance = torch.cov(white.T, correction=0)
    eigenvalues = torch.linalg.eigvalsh(covariance)
    assert eigenvalues[0].abs() < 1e-3  # the constant direction GCN removed
    torch.testing.assert_close(eigenvalues[1:], torch.ones(107, dtype=torch.float64), atol=0.02, rtol=0)
    projector = torch.eye(108, dtype=torch.float64) - 1 / 108
    torch.testing.assert_close(covariance, projector, atol=0.02, rtol=0)
    assert white.mean(0).abs().max() < 1e-4


def test_whitening_is_fitted_on_the_training_split_only_and_cached(pickles: Path, tmp_path: Path, monkeypatch) -> None:
    fitted: list[torch.Tensor] = []
    real_fit = GCNZCAWhitener.fit

    def recording_fit(self, images, chunk=4096):
        fitted.append(images.clone())
        self.mean, self.matrix = torch.zeros(3072), torch.eye(3072)  # skip the 3072x3072 eigh
        return self

    monkeypatch.setattr(GCNZCAWhitener, "fit", recording_fit)
    dm = _ready(_dm(pickles, tmp_path, whiten="gcn_zca"))
    assert len(fitted) == 1 and torch.equal(fitted[0], dm.train_set.images)
    assert not {i.numpy().tobytes() for i in fitted[0]} & {i.numpy().tobytes() for i in dm.val_set.images}
    _ready(_dm(pickles, tmp_path, whiten="gcn_zca"))  # same seed and source: from the cache
    assert len(fitted) == 1
    other = _ready(_dm(pickles, tmp_path, whiten="gcn_zca", seed=1))  # new split: new fit
    assert len(fitted) == 2 and torch.equal(fitted[1], other.train_set.images)
    images, _ = dm.transform_batch(next(iter(dm.val_dataloader())), train=False)
    assert images.dtype == torch.float32 and images.shape == (16, 3, 32, 32)
    norms = images.flatten(1).norm(dim=1)  # identity ZCA here: GCN alone, every image at norm 55
    torch.testing.assert_close(norms, torch.full_like(norms, 55.0), rtol=1e-4, atol=1e-3)
    assert real_fit is not GCNZCAWhitener.fit


# ----- bad input ----------------------------------------------------------------------------------


def test_missing_dataset_is_one_clear_error(tmp_path: Path) -> None:
    dm = _dm(tmp_path / "nowhere", tmp_path)
    with pytest.raises(DataNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    for part in (
        "CIFAR-10 not found",
        "cifar-10-batches-py",
        "train/<class>/",
        "--data.data_dir",
        "download",
    ):
        assert part in message


def test_failed_download_is_the_same_clear_error(tmp_path: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(CIFAR10DataModule, "downloader", offline)
    with pytest.raises(DataNotFoundError, match="download failed: network is unreachable"):
        _dm(tmp_path / "nowhere", tmp_path, download=True).prepare_data()


def test_missing_pickle_batch_is_named(pickles: Path, tmp_path: Path) -> None:
    (pickles / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="missing data_batch_3"):
        _ready(_dm(pickles, tmp_path))


def test_corrupt_pickle_batch_is_named(pickles: Path, tmp_path: Path) -> None:
    batch = pickles / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DataFormatError, match=r"data_batch_2 is unreadable"):
        _ready(_dm(pickles, tmp_path))


def test_label_out_of_range_is_an_error(tmp_path: Path) -> None:
    root = write_cifar10_pickles(tmp_path / "data", per_batch=20, labels_override={"data_batch_4": [10] * 20})
    with pytest.raises(DataFormatError, match=r"label 10 is outside 0..9 \(20 such labels\)"):
        _ready(_dm(root, tmp_path))


def test_corrupt_image_is_named_or_skipped_with_a_counted_warning(tree, tmp_path: Path) -> None:
    root, _ = tree
    bad = root / "train" / "dog" / "0003.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(CorruptImageError, match=r"cannot decode image .*dog/0003.png.*skip_corrupt=True"):
        _ready(_dm(root, tmp_path, val_size=5))
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) under .*train: .*dog/0003.png"):
        dm = _ready(_dm(root, tmp_path, val_size=5, skip_corrupt=True))
    assert len(dm.train_set) + len(dm.val_set) == 59
    with pytest.raises(CorruptImageError, match="dog/0003.png"):  # the cached entry remembers it
        _ready(_dm(root, tmp_path, val_size=5))


def test_empty_class_folder_is_an_error(tree, tmp_path: Path) -> None:
    root, _ = tree
    for image in (root / "test" / "frog").iterdir():
        image.unlink()
    with pytest.raises(DataFormatError, match=r"class folder .*test/frog holds no images"):
        _ready(_dm(root, tmp_path, val_size=5))


def test_train_and_test_with_different_classes_is_an_error(tree, tmp_path: Path) -> None:
    root, _ = tree
    (root / "test" / "ship").rename(root / "test" / "boat")
    with pytest.raises(DataFormatError, match=r"different classes \(only in .*train: \['ship'\]; only in .*test: "):
        _ready(_dm(root, tmp_path, val_size=5))


def test_wrong_number_of_classes_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_image_tree(root, classes=CIFAR10_CLASSES[:9], per_class={"train": 2, "test": 1})
    with pytest.raises(DataFormatError, match="holds 9 class folders but the data module has num_classes=10"):
        _ready(_dm(root, tmp_path, val_size=2))


def test_grayscale_image_for_a_3_channel_model_is_an_error(tree, tmp_path: Path) -> None:
    root, _ = tree
    gray = root / "train" / "bird" / "0001.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(gray)
    with pytest.raises(DataFormatError, match=r"bird/0001.png has 1 channel\(s\) \(grayscale\) but CIFAR-10 feeds"):
        _ready(_dm(root, tmp_path, val_size=5))


def test_image_of_the_wrong_size_is_an_error(tree, tmp_path: Path) -> None:
    root, _ = tree
    Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8)).save(root / "test" / "deer" / "0000.png")
    with pytest.raises(DataFormatError, match=r"deer/0000.png is 48x40 pixels but every CIFAR-10 image must be 32x32"):
        _ready(_dm(root, tmp_path, val_size=5))


# ----- the real CIFAR-10 JPEG copy ----------------------------------------------------------------


@pytest.fixture(scope="session")
def real_cifar_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cifar_cache")


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason=f"real CIFAR-10 JPEG copy not found at {SHARED_CIFAR}")
def test_real_cifar10_jpeg_loads_50k_10k_in_canonical_order(real_cifar_cache: Path) -> None:
    """Decodes 60k JPEGs (~5-10 s on 2 busy cores), then again from the cache (< 1 s)."""
    started = time.perf_counter()
    dm = CIFAR10DataModule(str(SHARED_CIFAR), val_size=5000, download=False, cache_dir=str(real_cifar_cache))
    full_train = dm.load_split(train=True)
    test = dm.load_split(train=False)
    decode_seconds = time.perf_counter() - started
    assert (len(full_train), len(test)) == (50_000, 10_000)
    assert dm.classes == CIFAR10_CLASSES
    assert torch.bincount(full_train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert full_train.images.shape == (50_000, 3, 32, 32) and full_train.images.dtype == torch.uint8

    started = time.perf_counter()
    cached = _ready(CIFAR10DataModule(str(SHARED_CIFAR), download=False, cache_dir=str(real_cifar_cache)))
    cached_seconds = time.perf_counter() - started
    assert (len(cached.train_set), len(cached.val_set), len(cached.test_set)) == (45_000, 5_000, 10_000)
    assert torch.equal(_official_test(cached).images, test.images)
    airplane = torch.from_numpy(np.array(Image.open(SHARED_CIFAR / "test" / "airplane" / "0000.jpg"))).permute(2, 0, 1)
    assert (_official_test(cached).images[0].float() - airplane.float()).abs().mean() < 1.0  # decoder rounding only
    print(f"\nCIFAR-10 JPEG: decode {decode_seconds:.1f} s, cached setup {cached_seconds:.1f} s")
    assert cached_seconds < decode_seconds


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason=f"real CIFAR-10 JPEG copy not found at {SHARED_CIFAR}")
def test_real_cifar10_gcn_zca_whitens_the_training_split(real_cifar_cache: Path) -> None:
    """The 3072x3072 fit on 45k real images (~1 min on 2 cores), then the whitened training split's
    covariance: ``U diag(lambda / (lambda + eps)) U^T``, so 1 along every direction with variance
    well above eps (the top 100 here) and never above 1."""
    dm = _ready(CIFAR10DataModule(str(SHARED_CIFAR), download=False, whiten="gcn_zca", cache_dir=str(real_cifar_cache)))
    second = torch.zeros(3072, 3072, dtype=torch.float64)
    total = torch.zeros(3072, dtype=torch.float64)
    for start in range(0, len(dm.train_set), 5000):
        white = dm.whitener(dm.train_set.images[start : start + 5000]).flatten(1)
        second += (white.T @ white).double()
        total += white.sum(0, dtype=torch.float64)
    count = len(dm.train_set)
    covariance = second / count - torch.outer(total / count, total / count)
    eigenvalues = torch.linalg.eigvalsh(covariance)
    assert eigenvalues.max() < 1.0 + 1e-3
    assert eigenvalues[-100:].min() > 0.95
    assert (total / count).abs().max() < 1e-3
