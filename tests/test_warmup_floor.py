"""Warm-ups that shrink with the run get a floor in steps; full-length recipes keep their schedules exactly.

Schedules are built as `ablate fit` builds them (jsonargparse from the recipe's YAML, lengths filled in
by the classifier from the trainer), and stepped without training.
"""

from __future__ import annotations

import bisect
import functools
import math
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from pytorch_lightning.cli import LRSchedulerCallable
from torch import nn

from lightning_modules.classifier import ImageClassifier
from lightning_modules.schedules import (
    SHORT_RUN_WARMUP,
    WARMUP_FLOOR_STEPS,
    WarmupCosine,
    WarmupMultiStep,
    floored_warmup,
)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# Training images after the data modules' default 5,000 held out for validation.
TRAIN_IMAGES = {"datamodules.MNISTDataModule": 60_000 - 5_000, "datamodules.CIFAR10DataModule": 50_000 - 5_000}
FLOOR = WARMUP_FLOOR_STEPS


class Net(nn.Linear):
    num_classes = 2

    def __init__(self) -> None:
        super().__init__(2, 2)


class Trainer:
    """What configure_optimizers reads from the trainer."""

    def __init__(self, total_steps: int, batches_per_epoch: int, max_epochs: int) -> None:
        self.estimated_stepping_batches = total_steps
        self.num_training_batches = batches_per_epoch
        self.accumulate_grad_batches = 1
        self.max_epochs = max_epochs
        self.train_dataloader = object()


def recipe(*names: str) -> dict:
    """The recipes' YAML merged like repeated --config (later files win, key by key)."""
    merged: dict = {}
    for name in names:
        for section, values in yaml.safe_load((EXPERIMENTS / name).read_text()).items():
            if isinstance(values, dict):
                merged.setdefault(section, {}).update(values)
    return merged


def build(config: dict, batches_per_epoch: int | None = None, max_steps: int | None = None):
    """(optimizer, scheduler, steps of the run) for the recipe, at full length unless shortened."""
    data = config["data"]
    per_epoch = batches_per_epoch or math.ceil(TRAIN_IMAGES[data["class_path"]] / data["init_args"]["batch_size"])
    max_steps = max_steps or config["trainer"].get("max_steps", -1)
    total = max_steps if max_steps > 0 else per_epoch * config["trainer"]["max_epochs"]
    parser = ArgumentParser()
    parser.add_argument("--sched", type=LRSchedulerCallable)
    factory = parser.instantiate(parser.parse_object({"sched": config["model"]["lr_scheduler"]})).sched
    optimizer = config["model"]["optimizer"]
    model = ImageClassifier(
        Net(),
        lr_scheduler=factory,
        scheduler_interval=config["model"].get("scheduler_interval"),
        optimizer=functools.partial(
            getattr(torch.optim, optimizer["class_path"].split(".")[-1]), **optimizer["init_args"]
        ),
    )
    model._trainer = Trainer(total, per_epoch, config["trainer"].get("max_epochs", 1))
    configured = model.configure_optimizers()
    return configured["optimizer"], configured["lr_scheduler"]["scheduler"], total, per_epoch


def rates(optimizer, scheduler, steps: int) -> list[float]:
    """The first group's rate at each of the first ``steps`` optimiser steps (closed form where there is one)."""
    if hasattr(scheduler, "factor"):
        return [scheduler.base_lrs[0] * scheduler.factor(step) for step in range(steps)]
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        scheduler.step()  # no optimiser step (torch warns about the order): only the rates matter here
    return out


def reference(config: dict, total: int, per_epoch: int):
    """The recipe's schedule built directly from its arguments: no floor anywhere."""
    spec = config["model"]["lr_scheduler"]
    module, name = spec["class_path"].rsplit(".", 1)
    cls = getattr(__import__(module, fromlist=[name]), name)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config["model"]["optimizer"]["init_args"]["lr"])
    extra = {"total_steps": total}
    if cls is not torch.optim.lr_scheduler.OneCycleLR:
        extra |= {"steps_per_epoch": per_epoch, "min_warmup_steps": 0}
    return optimizer, cls(optimizer, **spec["init_args"], **extra)


FULL_LENGTH = [
    ("quickstart_fast.yaml",),
    ("fast_cifar10.yaml",),
    ("quickstart.yaml", "presets/recipes_one_cycle.yaml"),
    ("quickstart.yaml", "presets/recipes_cosine_adamw.yaml"),
    ("fast_cifar10.yaml", "presets/recipes_cosine_adamw.yaml"),
    ("quickstart.yaml", "presets/recipes_multistep_fractions.yaml"),
    ("fast_cifar10.yaml", "presets/recipes_he2016_warmup.yaml"),
]


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("names", FULL_LENGTH, ids=lambda names: "+".join(Path(n).stem for n in names))
def test_full_length_schedules_are_unchanged(names, capsys) -> None:
    """The recipes' measured accuracies were trained on these exact rates: the floor must not touch them."""
    config = recipe(*names)
    optimizer, scheduler, total, per_epoch = build(config)
    expected = rates(*reference(config, total, per_epoch), total)
    assert rates(optimizer, scheduler, total) == expected
    assert "ablate:" not in capsys.readouterr().err, "nothing to say about a full-length run"


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("batches", [10, 50, 100, 200, 400])
def test_shortened_one_cycle_warms_up_over_the_floor(batches, capsys) -> None:
    """`--trainer.limit_train_batches N` on quickstart_fast: the warm-up is never steeper than the floor's."""
    config = recipe("quickstart_fast.yaml")
    optimizer, scheduler, total, _ = build(config, batches_per_epoch=batches)
    lrs = rates(optimizer, scheduler, total)
    peak_at = lrs.index(max(lrs))
    requested = int(0.3 * total)  # OneCycleLR's default pct_start
    warmup = max(requested, min(FLOOR, int(SHORT_RUN_WARMUP * total)))
    assert peak_at == pytest.approx(warmup, abs=1)
    assert max(lrs) == pytest.approx(0.1 * min(1.0, warmup / FLOOR))
    err = capsys.readouterr().err
    assert err.count("ablate: OneCycleLR:") == 1 and len(err.strip().splitlines()) == 1
    assert ("too short" in err) == (warmup < FLOOR)


def test_warmup_in_epochs_longer_than_the_run() -> None:
    """cosine_adamw's 5-epoch warm-up in a 2-epoch run: half the run, at the floor's slope (was an error)."""
    config = recipe("quickstart_fast.yaml", "presets/recipes_cosine_adamw.yaml")
    optimizer, scheduler, total, _ = build(config, batches_per_epoch=50)
    assert isinstance(scheduler, WarmupCosine) and scheduler.warmup_steps == total // 2 == 50
    lrs = rates(optimizer, scheduler, total)
    assert max(lrs) == pytest.approx(1e-3 * 50 / FLOOR) and lrs.index(max(lrs)) == 50


def test_fraction_warmup_raised_to_the_floor() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = WarmupMultiStep(
        optimizer,
        milestones=[0.5],
        warmup=0.05,
        warmup_unit="fraction",
        warmup_mode="linear",
        min_warmup_steps=FLOOR,
        total_steps=2000,
    )
    assert schedule.warmup_steps == FLOOR and schedule.peak_scale == 1.0 and "made 300" in schedule.note
    exact = WarmupMultiStep(optimizer, milestones=[0.5], warmup=0.05, warmup_unit="fraction", total_steps=2000)
    assert exact.warmup_steps == 100 and exact.note is None, "built directly, no floor unless asked"


def test_untouched_warmups() -> None:
    """Warm-ups in steps are the user's exact choice; the studies' schedule keeps its measured fractions."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    in_steps = WarmupMultiStep(
        optimizer, milestones=[400], unit="step", warmup=40, warmup_unit="step", min_warmup_steps=FLOOR, total_steps=500
    )
    assert in_steps.warmup_steps == 40 and in_steps.note is None
    study = WarmupMultiStep(
        optimizer, milestones=[0.5, 0.75], warmup=0.00625, warmup_unit="fraction", min_warmup_steps=0, total_steps=3520
    )  # as the study configs give it
    assert study.warmup_steps == 22 and study.note is None
    assert floored_warmup(0, 100, FLOOR).steps == 0, "no warm-up asked, none added"
    assert floored_warmup(FLOOR, 10 * FLOOR, FLOOR).note is None


def _merged(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``, key by key at every level (as a study's arm file on its base)."""
    merged = dict(base)
    for key, value in override.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both_dicts else value
    return merged


def study_schedules() -> list:
    """Every study base and arm on ``WarmupMultiStep``, at every tier's length."""
    cases = []
    for base_file in sorted((EXPERIMENTS / "studies").glob("*/base.yaml")):
        base = yaml.safe_load(base_file.read_text())
        if not str((base["model"].get("lr_scheduler") or {}).get("class_path", "")).endswith(".WarmupMultiStep"):
            continue
        configs = {base_file.parent.name: base}
        for arm_file in sorted((base_file.parent / "arms").glob("*.yaml")):
            arm = yaml.safe_load(arm_file.read_text()) or {}
            if "lr_scheduler" in (arm.get("model") or {}):
                configs[f"{base_file.parent.name}-{arm_file.stem}"] = _merged(base, arm)
        tiers = yaml.safe_load((base_file.parent / "study.yaml").read_text())["tiers"]
        for name, config in configs.items():
            for tier, settings in tiers.items():
                cases.append(pytest.param(config, settings["trainer"]["max_steps"], id=f"{name}-{tier}"))
    return cases


def fractions_of_the_run(config: dict, total: int) -> list[float]:
    """The rate at each step of a ``total``-step run with the schedule's milestones and warm-up taken
    as fractions of that run and no floor: the schedule every study tier was measured with."""
    args = config["model"]["lr_scheduler"]["init_args"]
    lr = config["model"]["optimizer"]["init_args"]["lr"]
    drops = sorted(round(fraction * total) for fraction in args["milestones"])
    warmup, start = round(args.get("warmup", 0) * total), args.get("warmup_factor", 0.1)
    out = []
    for step in range(total):
        ramp = 1.0
        if step < warmup:
            ramp = start if args.get("warmup_mode", "constant") == "constant" else start + (1 - start) * step / warmup
        out.append(lr * (args["gamma"] ** bisect.bisect_right(drops, step) * ramp))
    return out


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("config, total", study_schedules())
def test_study_tiers_keep_their_fractions(config, total, capsys) -> None:
    """A study's short and smoke tiers warm up and drop the rate at the fractions of their run the full
    protocol does (``min_warmup_steps: 0``, no floor), step for step as the studies were measured."""
    optimizer, scheduler, steps, _ = build(config, max_steps=total)
    assert steps == total
    assert rates(optimizer, scheduler, total) == fractions_of_the_run(config, total)
    assert "ablate:" not in capsys.readouterr().err
