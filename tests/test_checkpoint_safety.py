"""Safe checkpoints, results and secrets.

- Checkpoints and caches are read with ``weights_only=True``: a checkpoint carrying a pickled
  payload is refused before anything in it runs, even where torch is told to trust files.
- Results are written atomically: a writer that dies mid-write leaves the previous file whole, and
  two sweeps pointed at the same study folder do not run at once.
- An API key in the environment never reaches logs, saved configs or run folders.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import Namespace

from datamodules.synthetic import write_cifar10_pickles
from experiments.studies import sweep
from lightning_modules.run_preparation import prepare_run
from tests.bad_inputs import MARKER, write_checkpoints
from tests.support import REPO, run_ablate, write_synthetic_mnist

PACKAGES = ("architectures", "datamodules", "lightning_modules", "experiments")
SENTINEL = "SENTINEL-4f1c-api-key-3b9d8e7a6c5b4a39"


def _fit_args(data: Path) -> list[str]:
    return [
        "fit",
        "--model.network=architectures.ZooModel",
        "--model.network.init_args.name=lenet5",
        "--data=datamodules.MNISTDataModule",
        f"--data.data_dir={data}",
        "--data.val_size=50",
        "--data.batch_size=50",
        "--data.download=false",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


# ----- weights_only ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["ckpt_path", "weights"])
@pytest.mark.end_to_end
def test_a_checkpoint_carrying_code_is_refused_before_it_runs(how: str, tmp_path: Path) -> None:
    """The payload would create MARKER in the working folder; TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD makes
    every `torch.load` that does not pass weights_only=True itself unpickle arbitrary objects."""
    data = write_synthetic_mnist(tmp_path / "data", n_train=200, n_test=20)
    malicious = write_checkpoints(tmp_path / "checkpoints")["ckpt_malicious"]
    option = f"--ckpt_path={malicious}" if how == "ckpt_path" else f"--fine_tune.weights={malicious}"
    result = run_ablate(
        *_fit_args(data),
        "--trainer.fast_dev_run=true",
        option,
        cwd=tmp_path,
        env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert not (tmp_path / MARKER).exists(), "the pickled payload ran"
    last = result.stderr.strip().splitlines()[-1]
    if how == "ckpt_path":
        assert last.startswith(
            f"ablate: error: CheckpointError: refusing to load {malicious}: it holds pickled "
            "Python objects (it would call posix.system)"
        ), last
    assert not list(tmp_path.rglob("runs/**/*.ckpt"))


def test_weights_only_defaults_to_true_and_can_be_turned_off() -> None:
    def parsed(weights_only: bool | None) -> Namespace:
        return Namespace(
            subcommand="test",
            test=Namespace(
                weights_only=weights_only, ckpt_path=None, data=Namespace(class_path="datamodules.MNISTDataModule")
            ),
        )

    config = parsed(None)
    prepare_run(config)
    assert config.test.weights_only is True
    config = parsed(False)  # `--weights_only false`: the user vouches for the file
    prepare_run(config)
    assert config.test.weights_only is False


def _torch_load_calls(path: Path) -> list[tuple[int, bool]]:
    """(line, passes weights_only=True) for every `torch.load(...)` call in a source file."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            safe = any(
                keyword.arg == "weights_only"
                and isinstance(keyword.value, ast.Constant)
                and keyword.value.value is True
                for keyword in node.keywords
            )
            calls.append((node.lineno, safe))
    return calls


def test_every_torch_load_in_the_project_passes_weights_only_true() -> None:
    calls = {path: _torch_load_calls(path) for package in PACKAGES for path in (REPO / package).rglob("*.py")}
    unsafe = [f"{path.relative_to(REPO)}:{line}" for path, found in calls.items() for line, safe in found if not safe]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
    assert sum(len(found) for found in calls.values()) >= 3, "the scan sees the known loaders"


# ----- atomic results, one sweep per folder -----------------------------------------------------------


def test_a_result_write_that_dies_midway_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "result.json"
    sweep.write_json_atomic(target, {"status": "completed", "metrics": {"test/err": 8.1}})
    import lightning_modules.files as files

    def dies_before_the_rename(descriptor: int) -> None:  # the new text is half on disk, in the temp file
        raise KeyboardInterrupt  # the process is stopped in the middle of writing

    monkeypatch.setattr(files.os, "fsync", dies_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        sweep.write_json_atomic(target, {"status": "failed", "reason": "x" * 10_000})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"status": "completed", "metrics": {"test/err": 8.1}}
    assert [path.name for path in tmp_path.iterdir()] == ["result.json"], "no temp file left behind"
    assert sweep.read_result(tmp_path)["status"] == "completed"


@pytest.mark.end_to_end
def test_a_killed_writer_never_leaves_a_torn_result(tmp_path: Path) -> None:
    """A process rewriting result.json (1 MB records) is SIGKILLed at random moments."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from experiments.studies.sweep import write_json_atomic
        target, index = Path(sys.argv[1]), 0
        while True:
            index += 1
            write_json_atomic(target, {{"index": index, "payload": "x" * 1_000_000}})
    """)
    target = tmp_path / "result.json"
    sweep.write_json_atomic(target, {"index": 0, "payload": ""})
    for delay in (0.3, 0.45, 0.6, 0.75, 0.9):
        writer = subprocess.Popen([sys.executable, "-c", script, str(target)])
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        record = json.loads(target.read_text())  # never half a file
        assert record["index"] == 0 or len(record["payload"]) == 1_000_000


def _tiny_study(root: Path) -> Path:
    study = root / "locked"
    study.mkdir(parents=True)
    source = REPO / "experiments" / "studies" / "resnet_depth"
    (study / "base.yaml").write_text((source / "base.yaml").read_text())
    (study / "arms").mkdir()
    (study / "arms" / "resnet20.yaml").write_text((source / "arms" / "resnet20.yaml").read_text())
    meta = yaml.safe_load((source / "study.yaml").read_text())
    meta.update(name="locked", arms={"resnet20": meta["arms"]["resnet20"]})
    (study / "study.yaml").write_text(yaml.safe_dump(meta))
    return study


@pytest.mark.end_to_end
def test_a_second_sweep_on_the_same_folder_is_refused_and_the_first_finishes(tmp_path: Path) -> None:
    cifar = write_cifar10_pickles(tmp_path / "cifar", per_batch=20, num_test=30)
    study, out = _tiny_study(tmp_path), tmp_path / "runs"
    args = [
        "sweep",
        str(study),
        "--tier",
        "smoke",
        "--out",
        str(out),
        "--set",
        f"data.init_args.data_dir={cifar}",
        "--set",
        "data.init_args.val_size=20",
        "--set",
        "data.init_args.batch_size=16",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "NO_COLOR": "1"}
    env.pop("WANDB_API_KEY", None)
    first = subprocess.Popen(
        [sys.executable, "-m", "experiments.cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = out / "locked" / "smoke" / ".sweep.lock"
    deadline = time.time() + 300
    while not (lock.is_file() and lock.read_text().startswith("pid")):
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.1)
    second = run_ablate(*args, cwd=tmp_path, timeout=600)
    assert first.poll() is None, "the first sweep was still running when the second was refused"
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1] == (
        f"ablate: error: StudyError: another sweep ({lock.read_text()}) is running on {out / 'locked' / 'smoke'}; "
        "wait for it or use another --out"
    )
    stdout, stderr = first.communicate(timeout=1200)
    assert first.returncode == 0, stdout[-2000:] + stderr[-2000:]
    record = json.loads((out / "locked" / "smoke" / "resnet20" / "seed_0" / "result.json").read_text())
    assert record["status"] == "completed" and record["metrics"]["test/err"] >= 0
    assert list((out / "locked" / "smoke" / "resnet20" / "seed_0").glob(".*.tmp")) == [], "no stray temp files"


# ----- secrets -------------------------------------------------------------------------------------------


@pytest.mark.end_to_end
def test_an_api_key_never_reaches_logs_configs_or_run_folders(tmp_path: Path) -> None:
    data = write_synthetic_mnist(tmp_path / "data", n_train=200, n_test=20)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NO_COLOR": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_API_KEY": SENTINEL,
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.cli",
            *_fit_args(data),
            "--trainer.max_epochs=1",
            "--config",
            str(REPO / "experiments" / "presets" / "wandb.yaml"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = tmp_path / "runs"
    assert list(runs.glob("wandb/offline-run-*")), "the W&B run was written (offline)"
    assert SENTINEL not in result.stdout + result.stderr
    leaked = [str(path) for path in tmp_path.rglob("*") if path.is_file() and SENTINEL.encode() in path.read_bytes()]
    assert not leaked, f"the API key was written to {leaked}"
    (config,) = runs.glob("default/version_*/config.yaml")
    assert yaml.safe_load(config.read_text())["weights_only"] is True, "the project default is stored with the run"
    (last,) = runs.glob("default/version_*/checkpoints/last.ckpt")
    assert "ExactResume" in torch.load(last, map_location="cpu", weights_only=True)["callbacks"], (
        "our own checkpoints, RNG states included, load with weights_only=True"
    )
