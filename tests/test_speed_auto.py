"""The automatic speed setting: what it picks per device, that a value the user set always wins (YAML
or command line), its one line, fingerprints of equal settings, and real runs with it on this CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from experiments.benchmarks import bench, time_to_acc
from experiments.cli import main, run_lightning_cli
from experiments.studies.fingerprint import REPO, Fingerprint, resolve_fit_config
from lightning_modules import speed
from tests.support import write_synthetic_mnist

BF16_CPU = speed.Device("cpu", "CPU has AMX-BF16", fast_channels_last=True)
AVX2_CPU = speed.Device("cpu", None, fast_channels_last=True)
OTHER_CPU = speed.Device("cpu", None, fast_channels_last=False)
BF16_GPU = speed.Device("cuda", "GPU supports bf16", fast_channels_last=False)
OLD_GPU = speed.Device("cuda", None, fast_channels_last=False)


@pytest.mark.parametrize(
    ("device", "precision", "channels_last"),
    [
        (BF16_CPU, "bf16-mixed", True),
        (AVX2_CPU, "32-true", True),
        (OTHER_CPU, "32-true", False),
        (BF16_GPU, "bf16-mixed", True),
        (OLD_GPU, "32-true", False),
        (speed.Device("mps", None, fast_channels_last=False), "32-true", False),
    ],
)
def test_each_device_gets_its_fastest_settings(device, precision: str, channels_last: bool) -> None:
    choice = speed.choose(device)
    assert (choice.precision, choice.channels_last) == (precision, channels_last)


@pytest.mark.parametrize(
    ("flags", "vector", "native", "fast_channels_last"),
    [
        ({"avx512f", "avx512_bf16"}, "AVX512", None, True),  # measured: bf16 slower than fp32 there
        ({"avx512f", "amx_bf16", "amx_tile"}, "AVX512", "CPU has AMX-BF16", True),
        ({"avx512f"}, "AVX512", None, True),  # AVX-512 without BF16 emulates bf16
        ({"avx2"}, "AVX2", None, True),
        (set(), "DEFAULT", None, False),
    ],
)
def test_the_cpu_probe_reads_the_instruction_sets(monkeypatch, flags, vector, native, fast_channels_last) -> None:
    monkeypatch.setattr(speed, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: vector)
    assert speed.probe("cpu") == speed.Device("cpu", native, fast_channels_last)


def test_a_value_set_is_kept_and_the_rest_still_chosen() -> None:
    choice, line = speed.resolve("auto", "cpu", 32, None, device=BF16_CPU)
    assert (choice.precision, choice.channels_last) == ("32-true", True)
    assert line == (
        "speed: 32-true + channels_last (CPU has AMX-BF16; NHWC convolutions are faster here, "
        "precision as set); --channels_last false for fp32 contiguous"
    )
    choice, line = speed.resolve("auto", "cpu", None, False, device=BF16_CPU)
    assert (choice.precision, choice.channels_last) == ("bf16-mixed", False)
    assert line.endswith("(CPU has AMX-BF16, layout as set); --trainer.precision 32-true for fp32 contiguous")
    assert speed.resolve("auto", "cpu", "bf16", True, device=BF16_CPU) == (
        speed.Choice("bf16-mixed", True, "as set"),
        None,
    ), "both set: nothing chosen, nothing printed"


def test_speed_off_leaves_unset_as_fp32_contiguous() -> None:
    assert speed.resolve("off", "cpu", None, None, device=BF16_CPU) == (speed.Choice("32-true", False, "as set"), None)


def test_the_one_line_says_the_choice_why_and_how_to_undo_it() -> None:
    _, line = speed.resolve("auto", "cpu", None, None, device=BF16_CPU)
    assert line == (
        "speed: bf16-mixed + channels_last (CPU has AMX-BF16); "
        "--channels_last false --trainer.precision 32-true for fp32 contiguous"
    )
    _, line = speed.resolve("auto", "cpu", None, None, device=OTHER_CPU)
    assert line == "speed: 32-true, contiguous (CPU without native bf16)"


@pytest.mark.parametrize(
    ("accelerator", "cuda", "expected"),
    [
        ("cpu", True, "cpu"),
        ("auto", False, "cpu"),
        ("auto", True, "cuda"),
        ("gpu", True, "cuda"),
        (None, False, "cpu"),
    ],
)
def test_the_device_type_follows_the_accelerator_setting(monkeypatch, accelerator, cuda: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert speed.device_type(accelerator) == expected


# ----- through the CLI -------------------------------------------------------------------------------


@pytest.fixture
def mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["ablate"])  # not pytest's arguments (LightningCLI warns of both)
    data = write_synthetic_mnist(tmp_path / "data", n_train=300, n_test=50)
    return [
        "--config",
        str(REPO / "experiments" / "quickstart_fast.yaml"),
        f"--data.data_dir={data}",
        "--data.init_args.val_size=100",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def _built(args: list[str], device: speed.Device, monkeypatch) -> tuple[str, bool]:
    """(the trainer's precision, the model's channels_last) of a CLI built on ``device``."""
    monkeypatch.setattr(speed, "probe", lambda device_type: device)
    cli = run_lightning_cli(args, run=False)
    return cli.config.trainer.precision, cli.model.channels_last


def test_the_cli_fills_in_what_is_unset_and_prints_one_line(mnist, monkeypatch, capsys) -> None:
    assert _built(mnist, BF16_CPU, monkeypatch) == ("bf16-mixed", True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("speed:")]
    assert lines == [
        "speed: bf16-mixed + channels_last (CPU has AMX-BF16); "
        "--channels_last false --trainer.precision 32-true for fp32 contiguous"
    ]
    assert _built(mnist, AVX2_CPU, monkeypatch) == ("32-true", True)
    assert _built([*mnist, "--speed=off"], BF16_CPU, monkeypatch) == ("32-true", False)


def test_settings_on_the_command_line_win(mnist, monkeypatch, capsys) -> None:
    given = [*mnist, "--trainer.precision=32-true", "--channels_last=false"]
    assert _built(given, BF16_CPU, monkeypatch) == ("32-true", False)
    assert "speed:" not in capsys.readouterr().out, "nothing was chosen"
    assert _built([*mnist, "--channels_last=false"], BF16_CPU, monkeypatch) == ("bf16-mixed", False)


def test_settings_in_a_yaml_file_win(mnist, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "fp32.yaml").write_text("trainer:\n  precision: 32-true\nchannels_last: false\n")
    assert _built([*mnist, "--config", str(tmp_path / "fp32.yaml")], BF16_CPU, monkeypatch) == ("32-true", False)
    (tmp_path / "bf16.yaml").write_text("trainer:\n  precision: bf16-mixed\n")
    assert _built([*mnist, "--config", str(tmp_path / "bf16.yaml")], OTHER_CPU, monkeypatch) == ("bf16-mixed", False)


def test_every_study_trains_in_fp32_as_its_paper(monkeypatch) -> None:
    monkeypatch.setattr(speed, "probe", lambda device_type: BF16_CPU)
    for base in sorted((REPO / "experiments" / "studies").glob("*/base.yaml")):
        assert yaml.safe_load(base.read_text())["trainer"]["precision"] == "32-true", base


def test_equal_precisions_give_one_fingerprint(monkeypatch) -> None:
    """A study that now states fp32 has the fingerprint of one that left it to a run in fp32; an unset
    precision is fingerprinted as what the run trains in on this machine."""
    monkeypatch.setattr(speed, "probe", lambda device_type: BF16_CPU)
    planned = resolve_fit_config(["--config", str(REPO / "experiments" / "studies" / "resnet_depth" / "base.yaml")])
    assert planned["trainer"]["precision"] == "32-true"

    def fingerprint(precision, speed_setting: str = "auto") -> str:
        config = {**planned, "speed": speed_setting, "trainer": {**planned["trainer"], "precision": precision}}
        return Fingerprint.of(config, tier="short").value

    assert fingerprint("32-true") == fingerprint(32) == fingerprint("32") == fingerprint(None, "off")
    assert fingerprint(None) == fingerprint("bf16-mixed") != fingerprint("32-true")


def test_a_deterministic_tiny_fit_with_auto_repeats_bitwise(mnist, tmp_path: Path) -> None:
    """The automatic setting on this CPU, with --trainer.deterministic: two runs, the same weights."""
    weights = []
    for name in ("first", "second"):
        assert (
            main(
                [
                    "fit",
                    *mnist,
                    "--trainer.deterministic=true",
                    "--trainer.max_epochs=1",
                    "--trainer.limit_train_batches=4",
                    "--trainer.limit_val_batches=2",
                    f"--trainer.default_root_dir={tmp_path / name}",
                    '--trainer.logger={"class_path": "pytorch_lightning.loggers.CSVLogger", '
                    f'"init_args": {{"save_dir": "{tmp_path / name}"}}}}',
                ]
            )
            == 0
        )
        (folder,) = (tmp_path / name).glob("*/version_0")
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        choice = speed.choose(speed.probe("cpu"))
        assert (saved["trainer"]["precision"], saved["channels_last"]) == (
            choice.precision,
            choice.channels_last,
        ), "config.yaml records what the run used"
        weights.append(torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


# ----- benchmarks ------------------------------------------------------------------------------------


def test_throughput_reports_the_automatic_choice_beside_the_fixed_variants(capsys) -> None:
    assert (
        bench.main(
            [
                "throughput",
                "--pattern",
                "lenet5",
                "--batch-size",
                "8",
                "--steps",
                "1",
                "--variants",
                "fp32-cl,auto",
                "--format",
                "json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [row["variant"] for row in rows] == ["fp32-cl", "auto"]
    choice = speed.choose(speed.probe("cpu"))
    assert rows[1]["auto_is"] == ("bf16" if "bf16" in choice.precision else "fp32") + "-cl" * choice.channels_last
    assert all(row["train_img_s"] > 0 and row["warmup_s"] > 0 for row in rows)


def test_the_naive_loop_trains_the_recipe_from_a_dataloader(tmp_path: Path) -> None:
    from datamodules.synthetic import write_cifar10_pickles

    cifar = write_cifar10_pickles(tmp_path, per_batch=60, num_test=40)
    result = time_to_acc.naive_side("lenet5", cifar, epochs=1, target=0.0, seed=0)
    assert result["reached"] and result["epochs"] == 1 and 0.0 <= result["accuracies"][0] <= 1.0


def test_a_config_saved_before_the_automatic_setting_trained_in_fp32() -> None:
    old = {"trainer": {"precision": None}, "model": {"channels_last": False}}  # no `speed` key
    assert speed.effective_precision(old, device=BF16_GPU) == "32-true"
    assert speed.effective_precision({**old, "speed": "auto"}, device=BF16_GPU) == "bf16-mixed"
