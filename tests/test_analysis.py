"""``ablate landscape | lesion | visualize`` on tiny trained runs.

One module-scoped fixture trains ResNet-20, plain-20 and LeNet-5 (no residual units, no global
average pooling) for one short epoch (5 steps) on synthetic CIFAR-10 pickles, each with ``ablate fit`` run
in this process (``experiments.cli.main``), and the tests read those run directories.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from architectures import create_model
from datamodules.synthetic import write_cifar10_pickles
from experiments import cli
from experiments.analysis import common, landscape, lesion, visualize

NETWORKS = ("resnet20", "plain20", "lenet5")


def _config(root: Path, name: str) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": [
                {
                    "class_path": "pytorch_lightning.loggers.CSVLogger",
                    "init_args": {"save_dir": str(root / "runs"), "name": name},
                }
            ],
        },
        "model": {"network": {"class_path": "architectures.ZooModel", "init_args": {"name": name}}},
        "data": {
            "class_path": "datamodules.CIFAR10DataModule",
            "init_args": {
                "data_dir": str(root / "data"),
                "batch_size": 32,
                "val_size": 40,
                "cache_dir": str(root / "cache"),
            },
        },
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{network: run directory}``: 160 training, 40 validation and 60 test images, 5 steps."""
    root = tmp_path_factory.mktemp("analysis")
    write_cifar10_pickles(root / "data", per_batch=40, num_test=60)
    found = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for name in NETWORKS:
            config = root / f"{name}.yaml"
            config.write_text(yaml.safe_dump(_config(root, name)))
            assert cli.main(["fit", "--config", str(config), "--test_after_fit", "true"]) == 0, name
            found[name] = root / "runs" / name / "version_0"
    return found


def _test_err(run_dir: Path) -> float:
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    return float(next(row["test/err"] for row in rows if row.get("test/err")))


def _last_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# ----- loading ----------------------------------------------------------------------------------


def test_lightning_checkpoints_load_with_weights_only(runs: dict[str, Path]) -> None:
    checkpoint = torch.load(runs["resnet20"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "state_dict" in checkpoint and "hyper_parameters" in checkpoint
    best = common.find_checkpoint(runs["resnet20"], "best")
    assert best.name != "last.ckpt", "the ModelCheckpoint's best, as --test_after_fit tests"


def test_a_missing_run_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["landscape", str(tmp_path / "nowhere")]) == 2
    assert _last_error_line(capsys).startswith("ablate: error: FileNotFoundError:")
    (tmp_path / "checkpoints").mkdir()
    assert cli.main(["lesion", str(tmp_path)]) == 2
    assert "no checkpoints in" in _last_error_line(capsys)


# ----- landscape --------------------------------------------------------------------------------


def test_filter_normalised_directions_match_filter_norms_and_skip_1d_parameters() -> None:
    network = create_model("resnet20")
    direction = landscape.filter_normalized_direction(network, torch.Generator().manual_seed(0))
    for param, step in zip(network.parameters(), direction, strict=True):
        if param.dim() <= 1:
            assert not step.any(), "BN scales/shifts and biases are not perturbed"
        else:
            torch.testing.assert_close(step.flatten(1).norm(dim=1), param.flatten(1).norm(dim=1))


def test_landscape_writes_pictures_and_grid_and_the_origin_is_the_models_loss(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "landscape"
    assert (
        landscape.main(
            [
                str(runs["resnet20"]),
                "--steps",
                "3",
                "--span",
                "0.5",
                "--subset",
                "0",
                "--surface",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    saved = json.loads((out / "landscape.json").read_text())
    result = saved["runs"][0]
    assert result["subset"] == 160 and len(result["loss_2d"]) == 3
    assert result["loss_2d"][1][1] == result["origin_loss"] == result["loss_1d"][1]
    for name in ("landscape_1d.png", "landscape_2d.png", "landscape_3d.png"):
        assert 0 < (out / name).stat().st_size < 300_000
    assert len(list(csv.DictReader((out / "landscape.csv").open()))) == 9
    # The model's own loss on the whole training split, computed independently of the tool:
    run = common.load_run(runs["resnet20"])
    common.setup_data(run.datamodule)
    train = run.datamodule.train_set
    images, labels = run.datamodule.transform_batch((train.images, train.labels), train=False)
    with torch.no_grad():
        expected = float(run.module.compute_loss(run.module(images), labels)["loss"])
    assert result["origin_loss"] == pytest.approx(expected, rel=1e-5)
    assert "loss at the trained weights" in capsys.readouterr().out


def test_landscape_is_deterministic_given_a_seed(runs: dict[str, Path]) -> None:
    run = common.load_run(runs["plain20"])
    first = landscape.landscape(run, steps=3, span=1.0, subset=16, seed=7, batch_size=16)
    again = landscape.landscape(run, steps=3, span=1.0, subset=16, seed=7, batch_size=16)
    other = landscape.landscape(run, steps=3, span=1.0, subset=16, seed=8, batch_size=16)
    assert (first["loss_2d"] == again["loss_2d"]).all()
    assert (first["loss_2d"] != other["loss_2d"]).any()


def test_landscape_rejects_a_grid_without_the_origin(runs: dict[str, Path], capsys) -> None:
    assert cli.main(["landscape", str(runs["resnet20"]), "--steps", "4"]) == 2
    assert "--steps must be odd" in _last_error_line(capsys)


# ----- lesion -----------------------------------------------------------------------------------


def test_deleting_a_unit_leaves_its_shortcut() -> None:
    network = create_model("resnet20").eval()
    units = {unit.name: unit for unit in lesion.residual_units(network)}
    assert len(units) == 9 and [u.name for u in units.values() if u.downsampling] == ["layer2.0", "layer3.0"]
    x = torch.relu(torch.randn(2, 16, 8, 8))  # a unit's input is the previous ReLU's output
    with lesion.lesioned([units["layer1.1"]]), torch.no_grad():
        assert torch.equal(units["layer1.1"].module(x), x)
    with lesion.lesioned([units["layer2.0"]]), torch.no_grad():
        expected = torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 16))  # option A: h(x)
        assert torch.equal(units["layer2.0"].module(x), expected)
    with torch.no_grad():
        assert not torch.equal(units["layer1.1"].module(x), x), "hooks are removed on leaving the block"


def test_deleting_an_xception_block_leaves_its_shortcut() -> None:
    network = create_model("xception").eval()
    units = lesion.residual_units(network)
    # Entry flow 3 blocks and exit flow 1 with a strided 1x1 shortcut; middle flow 8 with identity.
    assert len(units) == 12 and sum(unit.downsampling for unit in units) == 4
    middle, entry = next(u for u in units if not u.downsampling), units[0]
    x = torch.randn(1, 728, 19, 19)
    with lesion.lesioned([middle]), torch.no_grad():
        assert torch.equal(middle.module(x), x)
    x = torch.randn(1, 64, 147, 147)
    with lesion.lesioned([entry]), torch.no_grad():
        assert torch.equal(entry.module(x), entry.module.skipbn(entry.module.skip(x)))
    x = torch.randn(1, 728, 19, 19)
    with torch.no_grad():
        assert not torch.equal(middle.module(x), x), "hooks are removed on leaving the block"


def test_plain_units_become_the_identity_where_shapes_allow() -> None:
    units = lesion.residual_units(create_model("plain20").eval())
    assert not any(unit.residual for unit in units)
    assert [unit.name for unit in units if not unit.removable] == ["layer2.0", "layer3.0"]
    x = torch.randn(2, 16, 8, 8)
    with lesion.lesioned([units[1]]), torch.no_grad():
        assert torch.equal(units[1].module(x), x)
    with pytest.raises(ValueError, match="cannot be removed"), lesion.lesioned([units[3]]):
        pass


def test_lesion_of_no_unit_reproduces_the_test_error_and_writes_table(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lesion"
    assert (
        lesion.main(
            [
                str(runs["resnet20"]),
                str(runs["plain20"]),
                "--random-k",
                "1",
                "2",
                "--samples",
                "2",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| resnet20 | none |" in printed and "| plain20 | layer2.0 | yes | n/a |" in printed
    results = json.loads((out / "lesion.json").read_text())["results"]
    for result, name in zip(results, ("resnet20", "plain20"), strict=True):
        assert result["err_none"] == pytest.approx(_test_err(runs[name]), abs=1e-4)
        assert result["images"] == 60
    assert [row["k"] for row in results[0]["random"]] == [1, 2]
    assert 0 < (out / "lesion.png").stat().st_size < 300_000
    rows = list(csv.DictReader((out / "lesion.csv").open()))
    assert rows[0]["deleted"] == "none" and len(rows) == 2 * (1 + 9 + 2)


def test_lesion_of_a_network_without_residual_units_fails_clearly(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["lesion", str(runs["lenet5"] / "checkpoints" / "last.ckpt")]) == 2
    last = _last_error_line(capsys)
    assert last.startswith("ablate: error: ValueError: lenet5 (LeNet5) has no residual units"), last


# ----- visualize --------------------------------------------------------------------------------


def test_visualize_draws_filters_and_class_activation_maps(runs: dict[str, Path], tmp_path: Path) -> None:
    assert visualize.main([str(runs["resnet20"]), "--images", "4", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "visualize.json").read_text())
    assert saved["filters"]["layer"] == "conv1" and saved["filters"]["shape"] == [16, 3, 3, 3]
    assert saved["cam"]["kind"] == "linear" and saved["cam"]["map_size"] == [8, 8] and len(saved["cam"]["images"]) == 4
    for name in ("visualize_filters.png", "visualize_cam.png"):
        assert 0 < (tmp_path / name).stat().st_size < 300_000


def test_class_activation_maps_sum_to_the_logits() -> None:
    images = torch.randn(2, 3, 32, 32)
    for name, kind in (("resnet20", "linear"), ("nin_cifar", "class_maps"), ("all_cnn_c", "class_maps")):
        network = create_model(name).eval()
        maps, logits, found = visualize.class_activation_maps(network, images)
        assert found == kind
        bias = network.fc.bias if kind == "linear" else 0
        torch.testing.assert_close(maps.mean(dim=(2, 3)) + bias, logits, rtol=1e-4, atol=1e-4)


def test_visualize_refuses_a_head_that_is_not_global_average_pooling(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["visualize", str(runs["lenet5"]), "--out", str(tmp_path)]) == 2
    assert "no class activation maps for LeNet5" in _last_error_line(capsys)
    assert visualize.main([str(runs["lenet5"]), "--no-cam", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "visualize_filters.png").is_file()


def test_visualize_logs_to_wandb_offline(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert visualize.main([str(runs["resnet20"]), "--images", "2", "--wandb", "--out", str(tmp_path)]) == 0
    offline = list((tmp_path / "wandb").glob("offline-run-*"))
    assert offline, "an offline W&B run beside the pictures"
    media = list(offline[0].rglob("*.png"))
    assert len(media) == 2, media


def test_two_arms_of_one_network_get_labels_that_tell_them_apart() -> None:
    from types import SimpleNamespace

    sweep = Path("runs/resnet_shortcuts/short")
    runs = [
        SimpleNamespace(label="resnet20", run_dir=sweep / "original" / "seed_0"),
        SimpleNamespace(label="resnet20", run_dir=sweep / "constant_scaling_0_1" / "seed_0"),
        SimpleNamespace(label="plain20", run_dir=sweep / "plain" / "seed_0"),
    ]
    assert common.unique_labels(runs) == [
        "resnet20 (original/seed_0)",
        "resnet20 (constant_scaling_0_1/seed_0)",
        "plain20",
    ]
    runs[1].run_dir = sweep / "original" / "seed_1"
    assert common.unique_labels(runs)[:2] == ["resnet20 (seed_0)", "resnet20 (seed_1)"]
