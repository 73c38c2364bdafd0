"""``ablate shapes``: the lecture's numbers exactly, receptive fields, the output-size formula.

No trained run is needed: everything runs on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from architectures import create_model
from experiments import cli
from experiments.analysis import shapes
from experiments.analysis.zoo import multiply_adds


def test_inception_lecture_naive_5x5_conv_costs_120m_multiply_adds() -> None:
    result = shapes.conv_arithmetic("28x28x192", out_chs=32, kernel=5)
    assert result["macs"] == 120_422_400
    assert result["rows"][0]["output"] == "28x28x32"
    assert result["params"] == 5 * 5 * 192 * 32


def test_inception_lecture_1x1_bottleneck_costs_12m_multiply_adds() -> None:
    result = shapes.conv_arithmetic("28x28x192", out_chs=32, kernel=5, bottleneck=16)
    assert [row["macs"] for row in result["rows"]] == [2_408_448, 10_035_200]
    assert result["macs"] == 12_443_648
    assert result["without_bottleneck"]["macs"] == 120_422_400


def test_arithmetic_mode_prints_the_lecture_numbers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert (
        shapes.main(
            ["--conv", "28x28x192", "--out-chs", "32", "--kernel", "5", "--bottleneck", "16", "--out", str(tmp_path)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "12,443,648" in printed and "120,422,400" in printed
    assert json.loads((tmp_path / "shapes.json").read_text())["macs"] == 12_443_648
    assert (tmp_path / "shapes.png").stat().st_size > 0 and (tmp_path / "shapes.csv").is_file()


@pytest.mark.parametrize(("stack", "field"), [("3", 3), ("3,3", 5), ("3,3,3", 7), ("5", 5), ("3/2,3", 7)])
def test_stacked_convolutions_receptive_field(stack: str, field: int) -> None:
    assert shapes.stack_arithmetic(stack)["rf"] == field


def test_two_3x3_see_5x5_and_three_see_7x7_inside_a_network() -> None:
    network = nn.Sequential(*(nn.Conv2d(8, 8, 3, padding=1) for _ in range(3)))
    rows = shapes.layer_table(network, (8, 32, 32))["rows"]
    assert [row["rf"] for row in rows] == [[3, 3], [5, 5], [7, 7]]
    three = shapes.stack_arithmetic("3,3,3", chs=64)
    assert (three["params"], three["single_conv_params"]) == (27 * 64 * 64, 49 * 64 * 64)


@pytest.mark.parametrize("ceil", [False, True])
def test_output_size_formula_matches_pytorch(ceil: bool) -> None:
    for i in (5, 7, 28, 32, 33):
        for k in (1, 2, 3, 5):
            for s in (1, 2, 3):
                for p in range(0, k // 2 + 1):
                    if ceil:
                        actual = nn.MaxPool2d(k, s, p, ceil_mode=True)(torch.zeros(1, 1, i, i)).shape[-1]
                    else:
                        actual = nn.Conv2d(1, 1, k, s, p)(torch.zeros(1, 1, i, i)).shape[-1]
                    assert shapes.output_size(i, k, s, p, ceil=ceil) == actual, (i, k, s, p)
    assert shapes.output_size(32, 3, 2, 1) == 16  # floor((32 + 2 - 3) / 2) + 1
    assert shapes.output_size(224, 7, 2, 3) == 112


def test_resnet20_table_fields_totals_and_formula() -> None:
    table = shapes.layer_table(create_model("resnet20"), (3, 32, 32))
    rows = {row["layer"]: row for row in table["rows"]}
    # 3x3 stem, then 6 convs per stage; the first conv of stages 2 and 3 has stride 2.
    assert rows["conv1"]["rf"] == [3, 3]
    assert rows["layer1.2.conv2"]["rf"] == [15, 15]
    assert rows["layer2.0.conv1"]["rf"] == [17, 17] and rows["layer2.0.conv1"]["jump"] == [2, 2]
    assert rows["layer3.2.conv2"]["rf"] == [81, 81] and rows["layer3.2.conv2"]["jump"] == [4, 4]
    assert rows["layer2.0.downsample.0"]["jump"] == [2, 2], "option A's strided slicing doubles the jump"
    assert rows["layer2.0.conv1"]["formula"] == "⌊(32+2·1−3)/2⌋+1 = 16"
    assert table["params"] == 269_722
    assert table["macs"] == multiply_adds("resnet20") == sum(row["macs"] for row in table["rows"])


def test_inception_branches_are_reported_per_module() -> None:
    rows = {row["layer"]: row for row in shapes.layer_table(create_model("inception_mnist"), (1, 28, 28))["rows"]}
    # conv1 5x5 (r 5), functional 2x2/2 max-pool (r 6, j 2), then each branch on its own:
    assert rows["incept1.branch1x1"]["rf"] == [6, 6]
    assert rows["incept1.branch5x5_2"]["rf"] == [14, 14]  # 6 + 4 * 2
    assert rows["incept1.branch3x3dbl_2"]["rf"] == [10, 10]
    assert rows["incept1.branch3x3dbl_3"]["rf"] == [14, 14]
    assert rows["incept1.branch_pool"]["rf"] == [10, 10]  # functional 3x3 avg-pool, then 1x1
    assert rows["conv2"]["rf"] == [22, 22], "after the concatenation: the widest branch (14) + 4 * 2"


def test_depth_rows_sum_to_the_totals() -> None:
    table = shapes.layer_table(create_model("resnet20"), (3, 32, 32), depth=1)
    names = [row["layer"] for row in table["rows"]]
    assert names[:1] == ["conv1"] and {"layer1", "layer2", "layer3", "fc"} <= set(names)
    assert sum(row["macs"] for row in table["rows"]) == table["macs"]
    assert sum(row["params"] for row in table["rows"]) == table["params"]


def test_shapes_of_a_registered_network_writes_json_csv_png(tmp_path: Path, capsys) -> None:
    assert shapes.main(["nin_cifar", "--out", str(tmp_path)]) == 0
    assert "| features.mlpconv1.0 | Conv2d |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "shapes.json").read_text())
    assert saved["params"] == 966_986 and saved["rows"]
    assert 0 < (tmp_path / "shapes.png").stat().st_size < 300_000
    assert (tmp_path / "shapes.csv").read_text().startswith("layer,")


def test_bad_arithmetic_input_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["shapes", "--conv", "28x28"]) == 2  # a bad input: the command could not start
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("ablate: error: ValueError: --conv takes HxWxC")


def test_unknown_architecture_ends_in_a_clear_message(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["shapes", "resnet_twenty"]) == 2
    stderr = capsys.readouterr().err
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("ablate: error: KeyError: unknown architecture 'resnet_twenty'"), stderr[-2000:]
