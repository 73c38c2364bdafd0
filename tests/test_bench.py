"""``ablate bench``: every comparison runs end to end on a small synthetic CIFAR-10 and prints its
figures; the time-to-accuracy clock stops at the target and says when a side never reached it."""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import time
import weakref
from pathlib import Path

import pytest
import yaml

from datamodules.synthetic import write_cifar10_pickles, write_image_tree
from experiments.benchmarks import bench, side_by_side, time_to_acc
from tests.support import write_synthetic_mnist


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar10_pickles(tmp_path_factory.mktemp("cifar"), per_batch=400, num_test=200)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABLATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def _printed_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.mark.end_to_end
def test_time_to_accuracy_stops_both_sides_at_the_target(cifar: Path, capsys) -> None:
    assert (
        bench.main(
            [
                "time-to-acc",
                "--network",
                "lenet5",
                "--data-dir",
                str(cifar),
                "--target",
                "0.0",
                "--epochs",
                "3",
                "--format",
                "json",
            ]
        )
        == 0
    )
    result = _printed_json(capsys)
    (row,) = result["rows"]
    assert row["plain_epochs"] == row["ablate_epochs"] == 1, "a target of 0 is reached after the first epoch"
    for side in ("naive", "plain", "ablate"):
        (run,) = result["runs"][side]
        assert len(run["accuracies"]) == 1 and 0.0 <= run["accuracies"][0] <= 1.0
        assert run["seconds"] > 0
    assert row["ratio"] == pytest.approx(row["ablate_s"] / row["plain_s"])
    assert result["recipe"] == "experiments/fast_cifar10.yaml"


@pytest.mark.end_to_end
def test_time_to_accuracy_says_when_the_target_is_not_reached(cifar: Path, capsys) -> None:
    assert (
        bench.main(
            [
                "time-to-acc",
                "--network",
                "lenet5",
                "--data-dir",
                str(cifar),
                "--target",
                "1.01",
                "--epochs",
                "2",
                "--format",
                "json",
            ]
        )
        == 0
    )
    result = _printed_json(capsys)
    (row,) = result["rows"]
    assert row["plain_epochs"] == row["ablate_epochs"] == "not reached"
    assert math.isnan(row["ratio"]), "no time to accuracy is invented for a run that never got there"
    # The loops still compare per epoch: both sides ran the whole two-epoch budget.
    (plain,), (ours,) = result["runs"]["plain"], result["runs"]["ablate"]
    assert len(plain["accuracies"]) == len(ours["accuracies"]) == 2
    assert row["epoch_ratio"] == pytest.approx(ours["seconds_per_epoch"] / plain["seconds_per_epoch"])


@pytest.mark.end_to_end
def test_time_to_accuracy_full_schedule_compares_auto_with_fp32(cifar: Path, capsys) -> None:
    """``--sides ablate,ablate-fp32 --full-schedule``: both sides train every epoch although the target is
    met after the first, the time to the target is still read off, and the final accuracy is reported."""
    assert (
        bench.main(
            [
                "time-to-acc",
                "--network",
                "lenet5",
                "--data-dir",
                str(cifar),
                "--target",
                "0.0",
                "--epochs",
                "2",
                "--sides",
                "ablate,ablate-fp32",
                "--full-schedule",
                "--format",
                "json",
            ]
        )
        == 0
    )
    result = _printed_json(capsys)
    assert set(result["runs"]) == {"ablate", "ablate-fp32"}
    (row,) = result["rows"]
    for side in ("ablate", "ablate-fp32"):
        (run,) = result["runs"][side]
        assert len(run["accuracies"]) == len(run["train_seconds"]) == 2, "the whole schedule ran"
        assert row[f"{side}_epochs"] == 1 and row[f"{side}_s"] == pytest.approx(run["train_seconds"][0])
        assert row[f"{side}_final_acc"] == run["accuracies"][-1]
    assert row["fp32_over_auto"] == pytest.approx(row["ablate-fp32_s"] / row["ablate_s"])
    assert "ratio" not in row, "no ratio against a side that did not run"


def test_time_to_accuracy_refuses_an_unknown_side(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["time-to-acc", "--sides", "ablate,fp16"])
    assert exit_info.value.code == 2
    assert "unknown side fp16; choose from naive, plain, ablate, ablate-fp32" in capsys.readouterr().err


def test_time_to_accuracy_schedule_defaults_to_the_preset() -> None:
    """One source for the schedule's length: the preset a user runs with ``ablate fit``."""
    config = yaml.safe_load(time_to_acc.RECIPE.read_text())
    parser = argparse.ArgumentParser()
    time_to_acc.add_parser(parser.add_subparsers(dest="which"))
    assert parser.parse_args(["time-to-acc"]).epochs == config["trainer"]["max_epochs"]


@pytest.mark.end_to_end
def test_both_sides_train_the_same_recipe(cifar: Path) -> None:
    """Same seed, batches, augmentation, optimiser, schedule and loss: the same accuracy per epoch."""
    plain = time_to_acc.plain_side("lenet5", cifar, epochs=2, target=1.01, seed=0)
    ours = time_to_acc.project_side("lenet5", cifar, epochs=2, target=1.01, seed=0)
    assert plain["accuracies"] == pytest.approx(ours["accuracies"], abs=0.011)


def test_time_to_accuracy_without_data_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train/ \\+ test/ class folders"):
        bench.main(["time-to-acc", "--data-dir", str(tmp_path / "absent")])


def _whoami(side: str) -> tuple[str, int, int]:
    return side, os.getpid(), time.monotonic_ns()


def _fails() -> None:
    raise ValueError("bad side")


def _dies() -> None:
    os._exit(3)


@pytest.mark.end_to_end
def test_sides_run_in_their_own_processes_taking_turns() -> None:
    runs = side_by_side.interleaved({"a": functools.partial(_whoami, "a"), "b": functools.partial(_whoami, "b")}, 4)
    pids = {side: {pid for _, pid, _ in results} for side, results in runs.items()}
    assert len(pids["a"]) == len(pids["b"]) == 1, "one process per side, kept across repeats"
    assert pids["a"] != pids["b"] and os.getpid() not in pids["a"] | pids["b"]
    order = [side for side, _, _ in sorted((r for results in runs.values() for r in results), key=lambda r: r[2])]
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"], "the order alternates, so drift favours neither"


_last_run: list = []


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _leaves_a_cycle() -> bool:
    """Whether the last call's reference cycle was freed; gc is off, so only an explicit collect frees it."""
    gc.disable()
    freed = not _last_run or _last_run[0]() is None
    _last_run[:] = [weakref.ref(_Cycle())]
    return freed


@pytest.mark.end_to_end
def test_each_side_starts_a_repeat_with_the_last_ones_garbage_collected() -> None:
    # A finished Lightning fit is a reference cycle (trainer, module, data); left for the cycle
    # collector, it would be collected during the next repeat's timed steps (docs/benchmarks.md).
    runs = side_by_side.interleaved({"a": _leaves_a_cycle}, 3)
    assert runs["a"] == [True, True, True]


@pytest.mark.end_to_end
def test_a_side_that_fails_or_dies_stops_the_comparison_with_its_name() -> None:
    with pytest.raises(RuntimeError, match="the b side failed: ValueError: bad side"):
        side_by_side.interleaved({"a": functools.partial(_whoami, "a"), "b": _fails}, 2)
    with pytest.raises(RuntimeError, match="the a side's process died \\(exit status 3\\)"):
        side_by_side.interleaved({"a": _dies, "b": functools.partial(_whoami, "b")}, 2)


@pytest.mark.end_to_end
def test_overhead_and_throughput_print_their_tables(cifar: Path, capsys) -> None:
    assert (
        bench.main(
            [
                "overhead",
                "--networks",
                "lenet5",
                "--steps",
                "6",
                "--warmup",
                "2",
                "--repeats",
                "1",
                "--batch-size",
                "32",
                "--data-dir",
                str(cifar),
                "--format",
                "json",
            ]
        )
        == 0
    )
    (row,) = _printed_json(capsys)["rows"]
    assert row["network"] == "lenet5" and row["plain_img_s"] > 0 and row["ablate_img_s"] > 0
    assert row["ratio"] == pytest.approx(row["ablate_img_s"] / row["plain_img_s"])
    assert bench.main(["throughput", "--pattern", "lenet5", "--steps", "1"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("### throughput") and "| lenet5 | fp32 | 1x28x28 | 326,520 | 60,850 |" in table


@pytest.mark.end_to_end
def test_throughput_measures_each_network_in_its_own_process(capsys) -> None:
    """A small network measured after a bigger one reports its own peak memory, not the bigger one's;
    a given peak turns counted FLOPs into a utilisation; bf16 autocast and channels_last run on CPU."""
    assert (
        bench.main(
            [
                "throughput",
                "--pattern",
                "resnet56,resnet5[6]",
                "--batch-size",
                "32",
                "--steps",
                "1",
                "--variants",
                "fp32,bf16-cl",
                "--peak-tflops",
                "1",
                "--format",
                "json",
            ]
        )
        == 0
    )
    big = _printed_json(capsys)["rows"]
    assert (
        bench.main(["throughput", "--pattern", "lenet5", "--batch-size", "32", "--steps", "1", "--format", "json"]) == 0
    )
    (small,) = _printed_json(capsys)["rows"]
    assert [row["variant"] for row in big] == ["fp32", "bf16-cl"]
    for row in big:
        assert row["train_img_s"] > 0 and row["mfu"] == pytest.approx(row["train_tflops"])
        assert row["peak_train_mb"] > row["peak_infer_mb"] > 0, "training keeps activations and gradients"
    assert 0 < small["peak_train_mb"] < big[0]["peak_train_mb"] / 2
    assert "mfu" not in small, "no CPU peak is assumed"


def _out_of_memory(job) -> dict:
    raise RuntimeError("out of memory (simulated)\nmore lines")


def _killed(job) -> dict:
    os._exit(9)  # as the kernel's OOM killer would end it


@pytest.mark.end_to_end
def test_a_network_that_fails_is_a_row_with_its_error() -> None:
    from experiments.benchmarks.throughput import Job, run_isolated

    job = Job("lenet5", "fp32", "cpu", batch_size=2, steps=1, warmup=0)
    assert run_isolated(job, _out_of_memory)["error"] == "RuntimeError: out of memory (simulated)"
    assert run_isolated(job, _killed) == {"error": "the measuring process died (exit code 9)"}
    with pytest.raises(SystemExit, match="unknown variant"):
        bench.main(["throughput", "--pattern", "lenet5", "--variants", "fp16"])
    with pytest.raises(SystemExit, match="no registered network matches 'lenet6'"):
        bench.main(["throughput", "--pattern", "lenet6"])


# ``ablate bench data``: MNIST, CIFAR-10 and a JPEG folder side by side. Tiny batches keep each run to
# seconds; 0 workers keeps the folder's decoding in the test process (the worker path is the module's own).
TINY_DATA_BENCH = [
    "--batch-size",
    "16",
    "--batches",
    "2",
    "--steps",
    "1",
    "--presets",
    "standard",
    "--num-workers",
    "0",
    "--skip-decode",
]


def _data_bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "data_bench.json"
    assert bench.main(["data", *TINY_DATA_BENCH, "--json", str(out), *args]) == 0
    return json.loads(out.read_text())


@pytest.mark.end_to_end
def test_data_bench_prints_json_or_markdown(cifar: Path, tmp_path: Path, capsys) -> None:
    args = ["data", *TINY_DATA_BENCH, "--datasets", "cifar", "--data-dir", str(cifar)]
    assert bench.main([*args, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["cifar"]["loader_images_per_s"]["standard"] > 0
    assert bench.main(args) == 0
    assert capsys.readouterr().out.startswith("### Data pipeline vs training")


def _assert_positive_rates(section: dict) -> None:
    train = section["train"]["images_per_s"]
    assert train > 0 and section["loader_images_per_s"]
    for pipeline, rate in section["loader_images_per_s"].items():
        assert rate > 0
        assert section["loader_over_train"][pipeline] == pytest.approx(rate / train)


@pytest.mark.end_to_end
def test_data_bench_reports_mnist_cifar_and_a_jpeg_folder_side_by_side(cifar: Path, tmp_path: Path, capsys) -> None:
    mnist = write_synthetic_mnist(tmp_path / "mnist", n_train=300, n_test=50)
    folder = tmp_path / "jpeg"
    write_image_tree(folder, per_class={"train": 4, "test": 1}, formats=("jpg",))  # the real tree's train/ + test/
    result = _data_bench(tmp_path, "--mnist-dir", str(mnist), "--data-dir", str(cifar), "--folder-dir", str(folder))
    assert result["datasets"] == ["mnist", "cifar", "folder"]
    for name in result["datasets"]:
        assert not result[name]["synthetic"], "data given on the command line is used as is"
        _assert_positive_rates(result[name])
    assert result["mnist"]["train"]["network"] == "inception_mnist"
    assert set(result["mnist"]["loader_images_per_s"]) == {"none", "shift"}
    assert result["cifar"]["train"]["network"] == result["folder"]["train"]["network"] == "resnet20"
    assert result["folder"]["loader_images_per_s"].keys() == {"imagenet 32px"}
    assert result["folder"]["data"] == str(folder)
    assert "cpu_threads" in result["machine"] and "load_average" in result["machine"]
    table = capsys.readouterr().out
    assert "| JPEG folder (main process, per image) | imagenet 32px | 16 |" in table
    assert "| MNIST | shift | 16 |" in table and "**synthetic**" not in table


@pytest.mark.end_to_end
def test_data_bench_without_data_labels_its_synthetic_stand_ins(tmp_path: Path, capsys) -> None:
    absent = str(tmp_path / "absent")
    result = _data_bench(
        tmp_path,
        "--datasets",
        "mnist,folder",
        "--mnist-presets",
        "shift",
        "--mnist-dir",
        absent,
        "--folder-dir",
        absent,
    )
    assert "cifar" not in result, "--datasets selects the sections"
    for name in ("mnist", "folder"):
        assert result[name]["synthetic"] and result[name]["data"].startswith("synthetic")
        _assert_positive_rates(result[name])
    assert "| MNIST **synthetic** | shift |" in capsys.readouterr().out


def test_data_bench_rejects_an_unknown_dataset() -> None:
    with pytest.raises(SystemExit):
        bench.main(["data", "--datasets", "mnist,imagenet"])
