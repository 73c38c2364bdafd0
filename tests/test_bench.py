"""``ablate bench``: every comparison runs end to end on a small synthetic CIFAR-10 and prints its
figures; the time-to-accuracy clock stops at the target and says when a side never reached it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from datamodules.synthetic import write_cifar10_pickles
from experiments import bench, bench_time_to_acc


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar10_pickles(tmp_path_factory.mktemp("cifar"), per_batch=400, num_test=200)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABLATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def _printed_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_time_to_accuracy_stops_both_sides_at_the_target(cifar: Path, capsys) -> None:
    assert bench.main(["time-to-acc", "--network", "lenet5", "--data-dir", str(cifar), "--target", "0.0",
                       "--epochs", "3", "--format", "json"]) == 0
    result = _printed_json(capsys)
    (row,) = result["rows"]
    assert row["plain_epochs"] == row["ablate_epochs"] == 1, "a target of 0 is reached after the first epoch"
    for side in ("plain", "ablate"):
        (run,) = result["runs"][side]
        assert len(run["accuracies"]) == 1 and 0.0 <= run["accuracies"][0] <= 1.0
        assert run["seconds"] > 0
    assert row["ratio"] == pytest.approx(row["ablate_s"] / row["plain_s"])
    assert result["recipe"] == "experiments/fast_cifar10.yaml"


def test_time_to_accuracy_says_when_the_target_is_not_reached(cifar: Path, capsys) -> None:
    assert bench.main(["time-to-acc", "--network", "lenet5", "--data-dir", str(cifar), "--target", "1.01",
                       "--epochs", "2", "--format", "json"]) == 0
    (row,) = _printed_json(capsys)["rows"]
    assert row["plain_epochs"] == row["ablate_epochs"] == "not reached"
    assert math.isnan(row["ratio"]), "no time to accuracy is invented for a run that never got there"


def test_both_sides_train_the_same_recipe(cifar: Path) -> None:
    """Same seed, batches, augmentation, optimiser, schedule and loss: the same accuracy per epoch."""
    plain = bench_time_to_acc.plain_side("lenet5", cifar, epochs=2, target=1.01, seed=0)
    ours = bench_time_to_acc.project_side("lenet5", cifar, epochs=2, target=1.01, seed=0)
    assert plain["accuracies"] == pytest.approx(ours["accuracies"], abs=0.011)


def test_time_to_accuracy_without_data_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train/ \\+ test/ class folders"):
        bench.main(["time-to-acc", "--data-dir", str(tmp_path / "absent")])


def test_overhead_and_throughput_print_their_tables(cifar: Path, capsys) -> None:
    assert bench.main(["overhead", "--networks", "lenet5", "--steps", "6", "--warmup", "2", "--repeats", "1",
                       "--batch-size", "32", "--data-dir", str(cifar), "--format", "json"]) == 0
    (row,) = _printed_json(capsys)["rows"]
    assert row["network"] == "lenet5" and row["plain_img_s"] > 0 and row["ablate_img_s"] > 0
    assert row["ratio"] == pytest.approx(row["ablate_img_s"] / row["plain_img_s"])
    assert bench.main(["throughput", "--pattern", "lenet5", "--steps", "1"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("### throughput") and "| lenet5 | 60,850 |" in table
