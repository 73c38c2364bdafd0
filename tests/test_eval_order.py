"""Evaluation splits in class-interleaved order: every prefix a limited evaluation reads
holds every class, the logs say what a limited evaluation covered, and prediction files keep
indexing the official split."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from datamodules import CIFAR10DataModule
from datamodules.base import TensorImageDataset, class_interleaved_order
from datamodules.cifar import CIFAR10_CLASSES
from datamodules.synthetic import write_image_tree
from lightning_modules.classifier import ImageClassifier
from lightning_modules.evaluation import ClassCounts
from lightning_modules.prediction_writer import CSVPredictionWriter
from tests.support import QUICK, REPO

FAST_CIFAR10 = str(REPO / "experiments" / "fast_cifar10.yaml")


def _labels(sizes: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((size,), label) for label, size in enumerate(sizes)])


def _worst_prefix_error(labels: torch.Tensor, order: torch.Tensor) -> float:
    """Largest ``|count of class c in the first k| - k * n_c / N`` over every prefix and class."""
    sizes = torch.bincount(labels).double()
    counts = nn.functional.one_hot(labels[order], len(sizes)).double().cumsum(0)
    k = torch.arange(1, len(labels) + 1, dtype=torch.float64)[:, None]
    return float((counts - k * sizes / len(labels)).abs().max())


# ----- the order ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes",
    [[20] * 10, [1000] * 10, [7, 3, 12, 5, 9, 4, 11, 6, 8, 10], [50, 30, 20], [1, 2], [13]],
    ids=["balanced", "cifar-test", "unequal", "three-unequal", "tiny", "one-class"],
)
def test_every_prefix_holds_each_class_in_proportion(sizes: list[int]) -> None:
    labels = _labels(sizes)  # stored class by class, like an image-folder tree
    order = class_interleaved_order(labels, seed=0)
    assert sorted(order.tolist()) == list(range(len(labels)))
    assert _worst_prefix_error(labels, order) <= 1.0


def test_the_bound_for_any_class_sizes() -> None:
    """Within 1 while no class exceeds 1 / (C - 2) of the split, within 1/2 + (C - 2) n_c / 2N always."""
    rng = np.random.default_rng(0)
    for seed in range(100):
        sizes = rng.integers(1, 40, size=int(rng.integers(2, 12))).tolist()
        labels = _labels(sizes)[torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(seed))]
        order = class_interleaved_order(labels, seed)
        share, classes = max(sizes) / sum(sizes), len(sizes)
        assert _worst_prefix_error(labels, order) <= 0.5 + (classes - 2) * share / 2 + 1e-9
        if classes <= 2 or share <= 1 / (classes - 2):
            assert _worst_prefix_error(labels, order) <= 1.0 + 1e-9


def test_order_is_fixed_by_labels_and_seed_alone() -> None:
    labels = _labels([6, 6, 6, 6])
    torch.manual_seed(1)
    first = class_interleaved_order(labels, seed=3)
    torch.manual_seed(2)  # the global RNG plays no part
    assert torch.equal(first, class_interleaved_order(labels, seed=3))
    assert not torch.equal(first, class_interleaved_order(labels, seed=4))
    assert len(class_interleaved_order(torch.zeros(0, dtype=torch.long), seed=0)) == 0


def test_ranks_together_read_a_balanced_prefix() -> None:
    """Under DDP rank r of W reads r::W; the first m of every rank together are the first m * W."""
    labels = _labels([30] * 10)
    order = class_interleaved_order(labels, seed=0)
    world, per_rank = 4, 5
    read = torch.cat([order[rank::world][:per_rank] for rank in range(world)])
    assert sorted(read.tolist()) == sorted(order[: world * per_rank].tolist())
    assert torch.bincount(labels[read], minlength=10).tolist() == [2] * 10


# ----- the data modules -----------------------------------------------------------------------------


@pytest.fixture
def class_ordered_tree(tmp_path: Path) -> Path:
    """A CIFAR-10 image-folder tree; the loaders scan it class by class (airplane first)."""
    root = tmp_path / "tree"
    write_image_tree(root, per_class={"train": 6, "test": 8}, formats=("png",))
    return root


def test_evaluation_splits_are_interleaved_and_remember_their_source(class_ordered_tree: Path, tmp_path: Path) -> None:
    dm = CIFAR10DataModule(str(class_ordered_tree), val_size=20, download=False, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    official = dm.load_split(train=False)
    test = dm.test_set
    assert torch.bincount(test.labels[:10], minlength=10).tolist() == [1] * 10
    assert sorted(test.source_index.tolist()) == list(range(80))
    assert torch.equal(test.images, official.images[test.source_index])
    assert torch.equal(test.labels, official.labels[test.source_index])
    full_train = dm.load_split(train=True)
    assert torch.equal(dm.val_set.images, full_train.images[dm.val_set.source_index])
    _, val_idx = dm.split_indices(len(full_train))  # the same images as the seeded split, reordered
    assert sorted(dm.val_set.source_index.tolist()) == val_idx.tolist()
    assert dm.train_set.source_index is None  # training order is the sampler's business


def test_dataset_rejects_a_source_index_of_another_length() -> None:
    with pytest.raises(ValueError, match="4 images but 3 source indices"):
        TensorImageDataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4), torch.arange(3))


# ----- limited evaluation through the real CLI -------------------------------------------------------


def test_limited_test_covers_every_class(class_ordered_tree: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Two test batches of 8 from a class-ordered tree: all 10 classes, and the log says so."""
    from architectures import create_model
    from experiments.cli import main

    # `ablate test` refuses random weights; which weights does not matter to coverage.
    weights = tmp_path / "lenet5.pt"
    torch.save(create_model("lenet5", num_classes=10, in_chans=3).state_dict(), weights)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["ablate"])  # pytest's own arguments are not the run's
    code = main([
        "test", "--config", FAST_CIFAR10, *QUICK, "--model.network.init_args.name=lenet5",
        f"--data.data_dir={class_ordered_tree}", "--data.init_args.val_size=20", "--data.init_args.batch_size=8",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--trainer.limit_test_batches=2",
        f"--fine_tune.weights={weights}",
    ])  # fmt: skip
    assert code == 0
    run = sorted((tmp_path / "runs" / "fast_cifar10").glob("version_*"))[-1]
    rows = list(csv.DictReader((run / "per_class_accuracy.csv").open()))
    totals = {row["class"]: int(row["total"]) for row in rows}
    assert sum(totals.values()) == 16 and all(total >= 1 for total in totals.values()), totals
    metrics = next(row for row in csv.DictReader((run / "metrics.csv").open()) if row.get("test/classes_seen"))
    assert (float(metrics["test/images"]), float(metrics["test/classes_seen"])) == (16.0, 10.0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ablate: test limited")]
    counts = ", ".join(f"{name} {totals[name]}" for name in CIFAR10_CLASSES)
    assert lines == [f"ablate: test limited to 16 of 80 images (10 of 10 classes: {counts})"]


def test_full_evaluation_logs_coverage_without_a_message(class_ordered_tree: Path, tmp_path: Path, capsys) -> None:
    dm = CIFAR10DataModule(str(class_ordered_tree), val_size=20, batch_size=16, download=False,
                           cache_dir=str(tmp_path / "cache"))  # fmt: skip
    model = ImageClassifier(_PaletteNet())
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (results,) = trainer.test(model, datamodule=dm, verbose=False)
    assert (results["test/images"], results["test/classes_seen"]) == (80.0, 10.0)
    assert "limited" not in capsys.readouterr().err
    assert not any("eval_counts" in key for key in model.state_dict()), "not persistent: old checkpoints load"


def test_class_counts_sum_per_class() -> None:
    counts = ClassCounts(4)
    counts.update(torch.tensor([0, 2, 2]))
    counts.update(torch.tensor([3]))
    assert counts.compute().tolist() == [1, 0, 2, 1]
    assert counts.state_dict() == {}


# ----- prediction files --------------------------------------------------------------------------


class _PaletteNet(nn.Module):
    """Predicts the class of ``write_image_tree``'s images from their mean colour (each class has its
    own), so a prediction row can be checked against the true label of the image it names."""

    num_classes, in_chans = 10, 3

    def __init__(self) -> None:
        super().__init__()
        palette = np.random.default_rng(1234).integers(40, 216, size=(10, 3))  # synthetic_images' palette
        mean, std = torch.tensor(CIFAR10DataModule.mean), torch.tensor(CIFAR10DataModule.std)
        self.register_buffer("palette", (torch.tensor(palette, dtype=torch.float32) / 255 - mean) / std)
        self.scale = nn.Parameter(torch.ones(()))  # something for the optimiser to hold

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return -self.scale * torch.cdist(images.mean((2, 3)), self.palette)


def test_prediction_index_is_the_official_split_index(class_ordered_tree: Path, tmp_path: Path) -> None:
    dm = CIFAR10DataModule(str(class_ordered_tree), val_size=20, batch_size=16, download=False,
                           cache_dir=str(tmp_path / "cache"))  # fmt: skip
    path = tmp_path / "predictions.csv"
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         callbacks=[CSVPredictionWriter(str(path))])  # fmt: skip
    trainer.predict(ImageClassifier(_PaletteNet()), datamodule=dm)
    rows = list(csv.DictReader(path.open()))
    indices = [int(row["index"]) for row in rows]
    assert sorted(indices) == list(range(80))
    assert indices != sorted(indices), "rows follow the interleaved order"
    # The tree's official test split is class by class, 8 images each: image i is of class i // 8.
    assert [int(row["class_index"]) for row in rows] == [index // 8 for index in indices]
    assert [int(row["true_class_index"]) for row in rows] == [index // 8 for index in indices]
