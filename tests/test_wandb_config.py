"""W&B, offline: the resolved config once, no duplicate hyper-parameters, the summaries, the names
the sweep gives, the study report as a Table, and no API key anywhere on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments.studies import sweep
from experiments.studies.study import load_study
from tests.support import QUICK, REPO, run_ablate
from tests.wandb_runs import config_updates, read_wandb_run

SENTINEL = "sentinel0123456789abcdef0123456789abcdef01"  # 42 characters, shaped like a W&B key


@pytest.mark.end_to_end
def test_config_once_summary_and_no_api_key_on_disk(synthetic_mnist: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "NO_COLOR": "1",
        "HOME": str(tmp_path),
        "WANDB_API_KEY": SENTINEL,
    }
    cmd = [
        sys.executable,
        "-m",
        "experiments.cli",
        "fit",
        "--config",
        str(REPO / "experiments" / "quickstart_fast.yaml"),
        "--config",
        str(REPO / "experiments" / "presets" / "wandb.yaml"),
        *QUICK,
        f"--data.data_dir={synthetic_mnist}",
        "--data.init_args.val_size=100",
        "--model.network.init_args.name=lenet5",
        "--test_after_fit=true",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "WANDB_MODE=offline wins over a configured key"
    logged = read_wandb_run(runs[0])

    # The full resolved config, as config.yaml holds it, once; the module's arguments nowhere else.
    saved = yaml.safe_load((tmp_path / "runs" / "quickstart_fast" / "version_0" / "config.yaml").read_text())
    for section in ("trainer", "model", "data", "seed_everything"):
        assert logged["config"][section] == json.loads(json.dumps(saved[section])), section
    full_updates = [keys for keys in config_updates(runs[0]) if "model" in keys]
    assert len(full_updates) == 1, "the resolved config is logged once, also with a test pass after fit"
    root_keys = set(logged["config"]) - {"_wandb", *saved}
    assert root_keys == {"model/params", "model/trainable_params", "model/network"}, root_keys
    assert logged["config"]["model/params"] == 60_850  # LeNet-5

    # Names from the experiment, summaries.
    assert logged["run"]["name"] == "lenet5-seed0"
    assert logged["run"]["tags"] == ["lenet5", "MNISTDataModule"]
    best = max(row["val/acc_best"] for row in logged["history"] if "val/acc_best" in row)
    assert logged["summary"]["val/acc_best"] == {"max": best}
    assert 0.0 <= logged["summary"]["test/err"] <= 100.0
    history_keys = {key for row in logged["history"] for key in row}
    assert {"train/loss_epoch", "val/acc", "val/acc_best", "test/err"} <= history_keys

    # The key never reaches the disk (config, logs, W&B files) nor the output.
    leaks = [path for path in tmp_path.rglob("*") if path.is_file() and SENTINEL.encode() in path.read_bytes()]
    assert leaks == [], leaks
    assert SENTINEL not in result.stdout + result.stderr


def test_sweep_names_wandb_runs_by_study_arm_and_seed(tmp_path: Path) -> None:
    study = load_study("resnet_depth")
    run = sweep.plan(study, "short", 3, tmp_path, ["resnet56"])[2]
    loggers = sweep.run_config(run, wandb=True)["trainer"]["logger"]
    wandb_args = next(entry["init_args"] for entry in loggers if entry["class_path"].endswith("WandbLogger"))
    assert wandb_args["group"] == "resnet_depth-short"
    assert wandb_args["name"] == "resnet56-seed2"
    assert wandb_args["tags"] == ["resnet_depth", "short", "resnet56"]
    assert wandb_args["save_dir"] == str(run.directory)


@pytest.mark.end_to_end
def test_study_report_pushed_as_a_wandb_table_offline(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    for arm, errors in {"resnet20": (9.0, 9.5), "plain20": (10.0, 11.0)}.items():
        for seed, error in enumerate(errors):
            folder = out / "resnet_depth" / "smoke" / arm / f"seed_{seed}"
            folder.mkdir(parents=True)
            sweep.write_json_atomic(
                folder / "result.json",
                {"status": "completed", "arm": arm, "seed": seed, "metrics": {"test/err": error}},
            )
    result = run_ablate(
        "report",
        "resnet_depth",
        "--tier",
        "smoke",
        "--out",
        str(out),
        "--wandb",
        cwd=tmp_path,
        env={"HOME": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((out / "resnet_depth" / "smoke" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = read_wandb_run(runs[0])
    row = next(row for row in logged["history"] if "resnet_depth/table._type" in row)  # nested keys, as W&B spells them
    assert row["resnet_depth/table._type"] == "table-file"
    assert row["resnet_depth/chart._type"] == "image-file"
    assert (runs[0] / "files" / row["resnet_depth/chart.path"]).is_file()
    table = json.loads((runs[0] / "files" / row["resnet_depth/table.path"]).read_text())
    assert table["columns"] == ["arm", "paper", "mean", "std", "median", "n", "failed"]
    by_arm = {line[0]: line for line in table["data"]}
    assert by_arm["ResNet-20"][2] == 9.25 and by_arm["plain-20"][5] == 2
    assert len(table["data"]) == len(load_study("resnet_depth").arms)
