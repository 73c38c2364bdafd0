"""Bad inputs end with one clear line and leave nothing that looks like a result.

The corpus is the table in ``tests/bad_inputs``; every case runs the real ``ablate`` in a
subprocess (three at a time: each is mostly Python start-up) and is then checked on its own.
The last two tests follow a diverging run: ``ablate fit`` (in this process) stops at the first
non-finite loss, and ``ablate sweep`` records such an arm as failed and carries on.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from datamodules.synthetic import write_cifar10_pickles
from experiments.cli import main
from tests.bad_inputs import CASES, MARKER, Case, write_inputs
from tests.support import REPO, run_ablate, write_synthetic_mnist

PARALLEL = 3
# The first case's setup runs the whole corpus (about 100 `ablate` processes): past the suite's
# 900 s per test on two busy cores.
pytestmark = pytest.mark.timeout(3600)


@dataclass(frozen=True)
class Outcome:
    returncode: int
    last_line: str
    stderr: str
    leftovers: list[str]  # checkpoints, results or the malicious payload's marker found afterwards


def _expand(args: str, inputs: dict[str, str]) -> list[str]:
    """Shell-split ``args`` after replacing ``{name}`` fields (JSON braces are left alone)."""
    return shlex.split(re.sub(r"\{(\w+)\}", lambda match: inputs.get(match.group(1), match.group(0)), args))


def _run(case: Case, inputs: dict[str, str], root: Path) -> Outcome:
    workdir = root / case.id
    workdir.mkdir(parents=True)
    result = run_ablate(
        *_expand(case.args, inputs), cwd=workdir, timeout=600, env={"ABLATE_CACHE_DIR": str(workdir / "cache")}
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    leftovers = [
        str(path.relative_to(workdir))
        for pattern in ("*.ckpt", "result.json", MARKER)
        for path in workdir.rglob(pattern)
    ]
    return Outcome(result.returncode, lines[-1] if lines else "", result.stderr, leftovers)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("bad_inputs")
    inputs = write_inputs(root / "inputs")
    with ThreadPoolExecutor(PARALLEL) as pool:
        done = pool.map(lambda case: _run(case, inputs, root / "runs"), CASES)
        outcomes = {case.id: outcome for case, outcome in zip(CASES, done, strict=True)}
    # What every case printed last, for reading the corpus at a glance.
    lines = [f"{key}\t{outcome.returncode}\t{outcome.last_line}\n" for key, outcome in outcomes.items()]
    (root / "last_lines.tsv").write_text("".join(lines))
    return outcomes


def test_the_corpus_is_large_and_its_ids_unique() -> None:
    assert len(CASES) >= 25
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, id=case.id, marks=[pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else [])
        for case in CASES
    ],
)
@pytest.mark.end_to_end
def test_bad_input_fails_with_one_clear_line(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    assert outcome.returncode != 0, outcome.stderr[-3000:]
    assert outcome.last_line.startswith("ablate: error: "), outcome.stderr[-3000:]
    assert case.expect in outcome.last_line, outcome.last_line
    assert not outcome.leftovers, f"left behind: {outcome.leftovers}"


# Cases whose traceback is expected, with why (a bug's report needs it); none at present.
PRINTS_A_TRACEBACK: dict[str, str] = {}


@pytest.mark.skipif(bool(os.environ.get("ABLATE_DEBUG")), reason="ABLATE_DEBUG prints every traceback")
@pytest.mark.end_to_end
def test_no_bad_input_prints_a_traceback(outcomes: dict[str, Outcome]) -> None:
    """A user's mistake is one line; a traceback is for bugs (and for ABLATE_DEBUG=1)."""
    printed = {
        key: outcome.stderr[outcome.stderr.find("Traceback") :][:600]
        for key, outcome in outcomes.items()
        if "Traceback" in outcome.stderr and key not in PRINTS_A_TRACEBACK
    }
    assert not printed, "\n\n".join(f"{key}:\n{text}" for key, text in printed.items())


def test_fit_stops_at_the_first_non_finite_loss(tmp_path: Path, monkeypatch, capsys) -> None:
    """An absurd learning rate on a network without normalisation layers (the lecture's Inception;
    LeNet-5's bounded tanh units keep even a learning rate of 1e30 finite)."""
    data = write_synthetic_mnist(tmp_path / "data", n_train=300, n_test=50)
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "fit",
            "--model.network=architectures.ZooModel",
            "--model.network.init_args.name=inception_mnist",
            "--data=datamodules.MNISTDataModule",
            f"--data.data_dir={data}",
            "--data.val_size=44",
            "--data.batch_size=32",
            "--model.optimizer=torch.optim.SGD",
            "--model.optimizer.init_args.lr=1e12",
            "--trainer.max_epochs=1",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    stderr = capsys.readouterr().err
    assert code == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(
        r"ablate: error: NonFiniteLossError: non-finite training loss \((nan|inf|-inf)\) at "
        r"global step (\d+) \(epoch 0, batch (\d+)\)\. Likely causes: a learning rate too high.*",
        last,
    )
    assert match, last
    assert 0 < int(match.group(2)) < 8, "stopped at the first non-finite loss, within the epoch"
    assert not list(tmp_path.rglob("*.ckpt")), "nothing saved from a diverged run"


@pytest.mark.end_to_end
def test_a_diverging_arm_is_recorded_as_failed_and_the_sweep_carries_on(tmp_path: Path) -> None:
    cifar = write_cifar10_pickles(tmp_path / "cifar", per_batch=20, num_test=30)
    study = tmp_path / "diverge"
    shutil.copytree(REPO / "experiments" / "studies" / "resnet_depth", study)
    meta = yaml.safe_load((study / "study.yaml").read_text())
    meta["name"] = "diverge"
    meta["arms"] = {"resnet20": meta["arms"]["resnet20"], "lr_1e12": {"paper": None, "label": "lr 1e12"}}
    (study / "study.yaml").write_text(yaml.safe_dump(meta))
    # All-CNN-C has no normalisation layer to absorb the blown-up weights: the loss is NaN at step 1.
    (study / "arms" / "lr_1e12.yaml").write_text(
        "# Diverges on purpose: a learning rate of 1e12 on a network without batch norm.\n"
        "model:\n  network:\n    init_args: {name: all_cnn_c}\n  optimizer:\n    init_args: {lr: 1.0e+12}\n"
    )
    out = tmp_path / "runs"
    result = run_ablate(
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
        cwd=tmp_path,
        timeout=1500,
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]  # a failed run fails the sweep
    assert result.stdout.strip().splitlines()[-1].startswith("diverge [smoke]: 1 completed, 1 failed, 0 skipped")
    diverged = json.loads((out / "diverge" / "smoke" / "lr_1e12" / "seed_0" / "result.json").read_text())
    assert diverged["status"] == "failed"
    assert diverged["reason"].startswith("NonFiniteLossError: non-finite training loss"), diverged["reason"]
    assert "at global step" in diverged["reason"] and "learning rate too high" in diverged["reason"]
    assert "FAILED  diverge/smoke/lr_1e12/seed_0: NonFiniteLossError" in result.stdout
    good = json.loads((out / "diverge" / "smoke" / "resnet20" / "seed_0" / "result.json").read_text())
    assert good["status"] == "completed", "the sweep carried on with the next arm"
