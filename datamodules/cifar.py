"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009), held in memory as uint8 tensors.

Two on-disk sources, auto-detected under ``data_dir``:

* torchvision's pickle batches (``cifar-10-batches-py/`` or ``cifar-100-python/``), read with an
  unpickler that builds nothing but CIFAR data (``datamodules.cifar_pickle``), downloaded by
  torchvision when missing and the network allows;
* an image-folder tree ``train/<class>/*`` + ``test/<class>/*`` (PNG or JPEG), such as
  ``../shared/data/cifar10-jpeg``; classes take the canonical order (``airplane`` ... ``truck``),
  which is also the sorted order of the folder names.

Either source is decoded once into uint8 tensors and cached (see ``datamodules.cache``): only the
first run on a JPEG tree pays for decoding (``ablate bench data`` measures both, docs/benchmarks.md).
Validation is a seeded 5k carved from the 50k training images, seen through eval transforms
(He et al. 2015 use 45k/5k); the official 10k test set is the test set.

The batch files are not md5-checked (torchvision's reader would check them), so re-packed or
synthetic batches in the same format load too; a truncated or corrupt batch, or one holding anything
but CIFAR's dict of arrays, lists and strings, fails naming the file. Downloads keep torchvision's
md5 check.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torchvision.datasets import CIFAR10, CIFAR100

from datamodules.base import (
    DataFormatError,
    DataNotFoundError,
    InMemoryImageDataModule,
    TensorImageDataset,
    default_cache_dir,
    resize_batch,
)
from datamodules.cache import DiskCache, file_fingerprint, hash_strings
from datamodules.cifar_pickle import read_cifar_batches, read_cifar_classes
from datamodules.image_folder import (
    CorruptImageError,
    decode_files,
    find_classes,
    scan_split,
    warn_skipped,
)
from datamodules.presets import BatchPreset, batch_preset, normalized_preset
from datamodules.whitening import GCN_SCALE, ZCA_EPSILON, GCNZCAWhitener

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# ``fine_label_names`` of CIFAR-100's meta file (alphabetical).
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
    can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
    dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
    pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
    seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table
    tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
    worm""".split()
)


class CIFAR10DataModule(InMemoryImageDataModule):
    """CIFAR-10, 3x32x32, 10 classes; from pickle batches or an image-folder tree.

    Args:
        data_dir: Folder holding ``cifar-10-batches-py/`` or ``train/`` + ``test/`` class folders
            (default ``$ABLATE_DATA_DIR`` or ``./data``), e.g. ``../shared/data/cifar10-jpeg``.
        source: ``"auto"`` (pickle batches if present, else the image-folder tree), ``"pickle"``
            or ``"folder"``.
        augment: Named training preset, run on whole batches on the device: ``none``, ``flip``,
            ``standard`` (pad + random crop + flip, on the normalised batch: the padding is the
            mean), ``lecture`` (colour jitter, flip, rotation 20), ``autoaugment`` /
            ``randaugment`` / ``trivialaugment`` (standard + the policy, per uint8 image, slower);
            see ``datamodules.presets``.
        max_shift: Padding of the random crop (4 pixels, He et al.).
        normalization: ``"channel"`` standardises each channel with the dataset's mean and std;
            ``"pixel_mean"`` subtracts the per-pixel mean image (3x32x32) of the training part of the
            split from pixels scaled to [0, 1], as He et al. 2015 (Sec. 4.2). The mean is computed
            once, cached, and saved in every checkpoint, so evaluation and prediction of the run
            use the mean it trained with.
        whiten: ``"gcn_zca"`` replaces either normalisation with global contrast normalisation +
            ZCA whitening fitted on the training split (maxout / All-CNN).
        gcn_scale: L2 norm of each image after GCN (55, as pylearn2).
        zca_epsilon: Regulariser added to the covariance eigenvalues (0.1, pylearn2's default).
        resize: Resize every split's batches to ``resize x resize`` after normalisation (e.g. to
            feed ImageNet-sized networks); ``image_size`` follows. None keeps 32x32.
        cache_dir: Where decoded splits and ZCA matrices are cached (default
            ``$ABLATE_CACHE_DIR`` or ``~/.cache/ablate``).
        skip_corrupt: Skip unreadable images of an image-folder tree with one counted warning
            instead of failing on the first.
        **kwargs: The arguments every in-memory data module shares (``batch_size``, ``val_size``,
            ``seed``, ``download``, ``num_workers``, ``train_transforms``, ``random_erasing``,
            ``mixup_alpha``, ``cutmix_alpha``): see ``InMemoryImageDataModule``.
    """

    num_classes = 10
    in_chans = 3
    image_size = (32, 32)
    # Per-channel statistics of the 50k training images.
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    classes = CIFAR10_CLASSES
    display_name = "CIFAR-10"
    cache_name = "cifar10"
    pickle_folder = "cifar-10-batches-py"
    pickle_layout: type[CIFAR10] = CIFAR10  # torchvision's class, for its file names only
    label_key = "labels"
    downloader: type[CIFAR10] = CIFAR10

    def __init__(
        self,
        data_dir: str | None = None,
        *,
        source: Literal["auto", "pickle", "folder"] = "auto",
        augment: BatchPreset = "standard",
        max_shift: int = 4,
        normalization: Literal["channel", "pixel_mean"] = "channel",
        whiten: Literal["none", "gcn_zca"] = "none",
        gcn_scale: float = GCN_SCALE,
        zca_epsilon: float = ZCA_EPSILON,
        resize: int | None = None,
        cache_dir: str | None = None,
        skip_corrupt: bool = False,
        **kwargs: Any,
    ) -> None:
        # jsonargparse follows **kwargs into the base class: the CLI lists and checks its arguments too.
        super().__init__(data_dir=data_dir, **kwargs)
        if source not in ("auto", "pickle", "folder"):
            raise ValueError(f"source must be 'auto', 'pickle' or 'folder', got {source!r}")
        if whiten not in ("none", "gcn_zca"):
            raise ValueError(f"whiten must be 'none' or 'gcn_zca', got {whiten!r}")
        if normalization not in ("channel", "pixel_mean"):
            raise ValueError(f"normalization must be 'channel' or 'pixel_mean', got {normalization!r}")
        if normalization == "pixel_mean" and whiten != "none":
            raise ValueError(
                "normalization='pixel_mean' and whiten='gcn_zca' exclude each other: "
                "the whitening does its own centring; choose one"
            )
        self.source = source
        self.augment = augment
        self.max_shift = max_shift
        self._preset = batch_preset(augment, max_shift)
        self._normalized_preset = normalized_preset(augment, max_shift)
        self.normalization = normalization
        self.pixel_mean: torch.Tensor | None = None  # (C, H, W) in [0, 1], for "pixel_mean"
        self.whiten = whiten
        self.gcn_scale = gcn_scale
        self.zca_epsilon = zca_epsilon
        self.whitener: GCNZCAWhitener | None = None
        self.resize = resize
        if resize is not None:
            self.image_size = (resize, resize)
        self.cache = DiskCache(cache_dir if cache_dir is not None else default_cache_dir())
        self.skip_corrupt = skip_corrupt
        self._source_keys: dict[str, str] = {}
        self._loaded: dict[str, TensorImageDataset] = {}  # prepare_data -> setup, same process

    # ----- where the data is -------------------------------------------------------------------

    def detect_source(self) -> Literal["pickle", "folder"] | None:
        """The source ``source`` selects that is present on disk, or None."""
        has_pickle = (self.data_dir / self.pickle_folder).is_dir()
        has_folder = (self.data_dir / "train").is_dir() and (self.data_dir / "test").is_dir()
        if self.source in ("auto", "pickle") and has_pickle:
            return "pickle"
        if self.source in ("auto", "folder") and has_folder:
            return "folder"
        return None

    def _not_found(self, cause: str) -> DataNotFoundError:
        root = self.data_dir
        return DataNotFoundError(
            f"{self.display_name} not found under {root} ({cause}). Expected torchvision's pickle batches "
            f"in {root / self.pickle_folder}/ or an image-folder tree {root}/train/<class>/*.png|jpg plus "
            f"{root}/test/<class>/*. Point --data.data_dir (or $ABLATE_DATA_DIR) at the folder that holds "
            "one of them (e.g. ../shared/data/cifar10-jpeg), or allow the download (download=True, network)."
        )

    def _pickle_files(self, train: bool) -> list[Path]:
        """The batch files of a split, then the meta file."""
        layout = self.pickle_layout
        names = [name for name, _ in (layout.train_list if train else layout.test_list)]
        return [self.data_dir / self.pickle_folder / name for name in (*names, layout.meta["filename"])]

    def prepare_data(self) -> None:
        """Download when needed, then decode both splits (and fit ZCA) into the cache."""
        if self.detect_source() is None:
            if not self.download or self.source == "folder":
                raise self._not_found(f"nothing found for source={self.source!r}; download={self.download}")
            try:
                self.downloader(self.data_dir, train=True, download=True)
            except Exception as error:  # URLError, socket errors, HTTP errors: all mean "offline"
                raise self._not_found(f"download failed: {error}") from error
        train = self.load_split(train=True)
        self.load_split(train=False)
        if self.whiten == "gcn_zca":
            self._whitener(lambda: train.images[self.split_indices(len(train))[0]])

    # ----- decoding and caching ----------------------------------------------------------------

    def _read_pickles(self, train: bool) -> dict[str, Any]:
        *batches, meta = self._pickle_files(train)
        try:
            images, labels = read_cifar_batches(batches, self.label_key)
            classes = read_cifar_classes(meta, self.pickle_layout.meta["key"])
        except DataFormatError as error:
            raise DataFormatError(
                f"{self.display_name}: {error}. Delete {self.data_dir / self.pickle_folder} and download again."
            ) from None
        if len(classes) != self.num_classes:
            raise DataFormatError(
                f"{self.display_name}: {meta} lists {len(classes)} classes, expected {self.num_classes}"
            )
        return {
            "images": torch.from_numpy(images),  # (N, 3, 32, 32): rows of R, G, B planes
            "labels": torch.from_numpy(labels),
            "classes": classes,
            "skipped": [],
        }

    def _decode_tree(self, root: Path, files: list[str], labels: list[int], classes: list[str]) -> dict[str, Any]:
        images, kept, skipped = decode_files(
            files,
            in_chans=self.in_chans,
            image_size=(32, 32),
            skip_corrupt=self.skip_corrupt,
            dataset=self.display_name,
        )
        return {
            "images": images,
            "labels": torch.tensor(labels)[kept],
            "classes": classes,
            "skipped": skipped,
        }

    def load_split(self, train: bool) -> TensorImageDataset:
        """The official split, from the cache when the source is unchanged, else decoded and cached."""
        split = "train" if train else "test"
        if split in self._loaded:
            return self._loaded[split]
        source = self.detect_source()
        if source is None:
            raise self._not_found(f"nothing found for source={self.source!r}")
        if source == "pickle":
            root = self.data_dir / self.pickle_folder
            files = self._pickle_files(train)
            for path in files:
                if path.exists() and not path.is_file():
                    raise DataFormatError(f"{self.display_name}: {path} is not a file (a folder?); expected a batch")
            missing = [path.name for path in files if not path.is_file()]
            if missing:
                raise self._not_found(f"missing {', '.join(missing)} in {root}")

            def build() -> dict[str, Any]:
                return self._read_pickles(train)
        else:
            root = self.data_dir / split
            classes = find_classes(
                self.data_dir / "train",
                self.data_dir / "test",
                num_classes=self.num_classes,
                canonical=type(self).classes,
                dataset=self.display_name,
            )
            files, labels = scan_split(root, classes, self.display_name)

            def build() -> dict[str, Any]:
                return self._decode_tree(root, files, labels, classes)

        key = hash_strings(self.cache_name, split, source, file_fingerprint(files))
        self._source_keys[split] = key
        prefix = f"{self.cache_name}-{split}-{source}-{hash_strings(root.resolve())[:8]}"
        entry = self.cache.get_or_build(prefix, key, build)
        if entry["skipped"]:
            if not self.skip_corrupt:
                raise CorruptImageError(entry["skipped"][0], "recorded as unreadable by a skip_corrupt=True run")
            warn_skipped(entry["skipped"], root)
        self.classes = tuple(entry["classes"])
        self._loaded[split] = TensorImageDataset(entry["images"], entry["labels"])
        return self._loaded[split]

    def _whitener(self, train_images: Callable[[], torch.Tensor]) -> GCNZCAWhitener:
        """GCN+ZCA fitted on the training part of the split, cached on source, split and settings."""
        key = hash_strings(self._source_keys["train"], self.seed, self.val_size, self.gcn_scale, self.zca_epsilon)
        prefix = f"{self.cache_name}-zca-{hash_strings(self.data_dir.resolve())[:8]}"
        whitener = GCNZCAWhitener(self.gcn_scale, self.zca_epsilon)
        state = self.cache.get_or_build(prefix, key, lambda: whitener.fit(train_images()).state_dict())
        return whitener.load_state_dict(state)

    def _pixel_mean(self) -> torch.Tensor:
        """The mean training image in [0, 1], cached on source, split and seed."""
        key = hash_strings(self._source_keys["train"], self.seed, self.val_size, "pixel_mean")
        prefix = f"{self.cache_name}-pixel-mean-{hash_strings(self.data_dir.resolve())[:8]}"

        def build() -> dict[str, torch.Tensor]:
            images = self.train_set.images
            total = torch.zeros(images.shape[1:], dtype=torch.float64)
            for start in range(0, len(images), 4096):  # float64 sums of uint8 chunks: exact, small
                total += images[start : start + 4096].sum(0, dtype=torch.float64)
            return {"mean": (total / len(images) / 255).float()}

        return self.cache.get_or_build(prefix, key, build)["mean"]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            super().setup(stage)
            if self.whiten == "gcn_zca":
                self.whitener = self._whitener(lambda: self.train_set.images)
            if self.normalization == "pixel_mean" and self.pixel_mean is None:
                self.pixel_mean = self._pixel_mean()
            self._loaded.clear()  # the splits hold what they need

    def state_dict(self) -> dict[str, Any]:
        # Saved in every checkpoint: a run is evaluated with the mean it trained with.
        return {"pixel_mean": self.pixel_mean} if self.pixel_mean is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        mean = state_dict.get("pixel_mean")
        if mean is not None and self.normalization == "pixel_mean":
            if tuple(mean.shape) != (self.in_chans, *type(self).image_size):
                raise DataFormatError(
                    f"{self.display_name}: the checkpoint's per-pixel mean has shape {tuple(mean.shape)}, "
                    f"this data's images are {(self.in_chans, *type(self).image_size)}"
                )
            self.pixel_mean = mean.float()

    # ----- batches on the device ---------------------------------------------------------------

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self._preset(images)

    def augment_normalized(self, images: torch.Tensor) -> torch.Tensor:
        return self._normalized_preset(images)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if self.whitener is not None:
            return self.whitener(images)
        if self.normalization == "pixel_mean":
            if self.pixel_mean is None:
                raise RuntimeError("setup() must run before batches are normalised (the per-pixel mean)")
            return images.float().div_(255) - self.pixel_mean.to(images.device)
        return super().normalize(images)

    def postprocess(self, images: torch.Tensor) -> torch.Tensor:
        return resize_batch(images, self.resize)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100, 3x32x32, 100 fine classes; same knobs as ``CIFAR10DataModule``.

    Sources: ``cifar-100-python/`` (torchvision's pickles) or ``train/`` + ``test/`` class folders.
    """

    num_classes = 100
    # Per-channel statistics of the 50k training images.
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    classes = CIFAR100_CLASSES
    display_name = "CIFAR-100"
    cache_name = "cifar100"
    pickle_folder = "cifar-100-python"
    pickle_layout = CIFAR100
    label_key = "fine_labels"
    downloader = CIFAR100
