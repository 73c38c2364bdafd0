"""Learning-rate schedules that YAML alone cannot assemble from torch's, stepped every iteration.

torch's schedulers cover most recipes directly from a config (``MultiStepLR``/``StepLR`` in epochs
with ``scheduler_interval: epoch``, or in iterations with ``step``; ``LinearLR``; ``OneCycleLR``
with ``total_steps`` filled from the trainer). What they cannot express in YAML is a warm-up
followed by another schedule (``SequentialLR`` wants built schedulers, and restarts the second
one's count at the switch), milestones in a unit other than the one the scheduler is stepped in,
or milestones as fractions of however long training runs. The classes here do that in closed form:

- ``WarmupMultiStep``: optional warm-up, then the rate times ``gamma`` at each milestone. He et
  al. 2015 (arXiv 1512.03385, section 4.2) train ResNet-110 on CIFAR-10 at 0.01 "until the
  training error is below 80% (about 400 iterations)", then 0.1, divided by 10 at 32k and 48k
  iterations, stopping at 64k.
- ``WarmupCosine``: optional warm-up, then half a cosine down to ``min_factor`` times the base
  rate at the last step (Loshchilov & Hutter 2017, arXiv 1608.03983, without restarts; the
  linear warm-up is Goyal et al. 2017, arXiv 1706.02677, section 2.2).

Both share one signature, ``(optimizer, ..., steps_per_epoch=None, total_steps=None)``: the
classifier fills the last two from the trainer, so lengths can be given in ``"step"``,
``"epoch"`` or ``"fraction"`` (of all training steps) and a short tier of a recipe keeps "the same
milestones as fractions". They declare ``interval = "step"``: the classifier steps them after
every optimiser step. The rate of a parameter group is always its base rate times the factor, so
per-group learning-rate multipliers survive the schedule.

A warm-up given as a fraction of training or in epochs shrinks with the run: cut to a few hundred
steps (``--trainer.limit_train_batches``, ``max_steps``), a ramp to a high peak can diverge where the
full run does not. ``floored_warmup`` gives such warm-ups a floor in steps (``WARMUP_FLOOR_STEPS``,
filled in by the classifier as ``min_warmup_steps``, and applied by it to ``OneCycleLR``); a run too
short to hold the floor gets a warm-up of half its steps and a peak lowered in proportion, so the
rate never climbs faster than the floor allows. Runs whose warm-up already reaches the floor, every
full-length recipe here, keep their schedule exactly; warm-ups in steps are taken as written, and
the studies (``experiments/studies/*/base.yaml``) set ``min_warmup_steps: 0``: each tier warms up
over the same fraction of its run as the full-length protocol.
"""

from __future__ import annotations

import bisect
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR

Unit = Literal["step", "epoch", "fraction"]
WarmupMode = Literal["constant", "linear"]

# The shortest warm-up, in optimiser steps, that a warm-up given as a fraction or in epochs is
# stretched to: about twice the shortest one-cycle ramp to 0.1 that the batch-norm-free lecture
# network survived on MNIST (docs/reports/short_run_warmup.md), and below every full-length
# recipe's own warm-up, so those are untouched.
WARMUP_FLOOR_STEPS = 300
# A run too short for the floor warms up over this fraction of its steps.
SHORT_RUN_WARMUP = 0.5


@dataclass(frozen=True)
class WarmupPlan:
    """A warm-up after the floor: its length, the factor on the whole schedule, and what changed."""

    steps: int
    peak_scale: float = 1.0
    note: str | None = None  # one line for the user; None when the schedule is as requested


def floored_warmup(requested: int, total_steps: int | None, floor: int, name: str = "the schedule") -> WarmupPlan:
    """``requested`` warm-up steps, stretched to ``floor`` where the run has room for it.

    Args:
        requested: Warm-up steps the schedule asks for (0 = no warm-up: nothing to stretch).
        total_steps: Optimiser steps of the run (None: unknown, no cap).
        floor: Fewest warm-up steps (0 = no floor).
        name: The schedule, for the note.
    """
    room = total_steps if total_steps else math.inf
    if requested <= 0 or floor <= 0 or (requested >= floor and requested < room):
        return WarmupPlan(requested)
    half = max(1, math.floor(SHORT_RUN_WARMUP * room))
    # A warm-up as long as the run becomes half of it; a short one grows to the floor, or to half the run.
    steps = half if requested >= room else max(requested, min(floor, half))
    scale = min(1.0, steps / floor)
    if scale == 1.0:
        note = f"{name}: warm-up of {requested} steps made {steps} (at least {floor}, at most half the run)"
    else:
        note = (
            f"{name}: a {total_steps}-step run is too short for a {floor}-step warm-up: warming up over "
            f"{steps} steps to {scale:.2g} x the peak rate instead"
        )
    return WarmupPlan(steps, scale, note)


def to_steps(value: float, unit: Unit, steps_per_epoch: int | None, total_steps: int | None) -> int:
    """``value`` in ``unit`` as a whole number of optimiser steps.

    Args:
        value: A length or position, e.g. 400 (steps), 82 (epochs) or 0.5 (of training).
        unit: ``"step"``, ``"epoch"`` or ``"fraction"`` of ``total_steps``.
        steps_per_epoch: Optimiser steps per epoch (needed for ``"epoch"``).
        total_steps: Optimiser steps of the whole run (needed for ``"fraction"``).
    """
    if value < 0:
        raise ValueError(f"schedule positions must be >= 0, got {value}")
    if unit == "step":
        return round(value)
    if unit == "epoch":
        if not steps_per_epoch:
            raise ValueError("a schedule in epochs needs steps_per_epoch (filled from the trainer during fit)")
        return round(value * steps_per_epoch)
    if unit == "fraction":
        if not total_steps:
            raise ValueError("a schedule in fractions needs total_steps (filled from the trainer during fit)")
        if value > 1:
            raise ValueError(f"fractions of training must be in [0, 1], got {value}")
        return round(value * total_steps)
    raise ValueError(f"unit must be 'step', 'epoch' or 'fraction', got {unit!r}")


def warmup_factor_at(step: int, warmup_steps: int, start_factor: float, mode: WarmupMode) -> float:
    """Multiplier of the base rate at optimiser step ``step`` (0-based) of a warm-up, 1 after it."""
    if step >= warmup_steps:
        return 1.0
    if mode == "constant":
        return start_factor
    return start_factor + (1.0 - start_factor) * step / warmup_steps  # torch's LinearLR, closed form


class _StepSchedule(LRScheduler):
    """Base: the rate of every group is its base rate times ``factor(step)``."""

    interval = "step"  # read by ImageClassifier: step after every optimiser step

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        factor = self.factor(self.last_epoch)  # LRScheduler's counter; here it counts steps
        return [base_lr * factor for base_lr in self.base_lrs]


def _plan(
    warmup: float, unit: Unit, floor: int | None, steps_per_epoch: int | None, total_steps: int | None, name: str
) -> WarmupPlan:
    """The warm-up in steps; a floor only for a warm-up that shrinks with the run (epochs, fractions)."""
    requested = to_steps(warmup, unit, steps_per_epoch, total_steps)
    return floored_warmup(requested, total_steps, 0 if unit == "step" else floor or 0, name)


def _check_warmup_mode(mode: str) -> None:
    if mode not in ("constant", "linear"):
        raise ValueError(f"warmup_mode must be 'constant' or 'linear', got {mode!r}")


class WarmupMultiStep(_StepSchedule):
    """Optional warm-up, then the base rate times ``gamma`` per milestone passed (``MultiStepLR``).

    Args:
        optimizer: The optimiser whose rates are scheduled.
        milestones: Where the rate drops, in ``unit``s (e.g. ``[32000, 48000]`` steps, ``[91, 136]``
            epochs, or ``[0.5, 0.75]`` of training), counted from the start of training.
        gamma: Factor applied at each milestone.
        unit: Unit of ``milestones``: ``"step"``, ``"epoch"`` or ``"fraction"``.
        warmup: Length of the warm-up in ``warmup_unit``s (0 = none; He et al.'s 400 of 64k iterations
            is 0.00625 as a fraction).
        warmup_unit: Unit of ``warmup``.
        warmup_factor: Rate at the start of warm-up as a fraction of the base rate (0.1 turns
            He et al.'s base 0.1 into their 0.01).
        warmup_mode: ``"constant"`` (He et al. 2015: hold the low rate, then jump) or
            ``"linear"`` (Goyal et al. 2017: ramp up to the base rate).
        min_warmup_steps: Floor on a warm-up given in epochs or as a fraction (``floored_warmup``);
            the classifier fills in ``WARMUP_FLOOR_STEPS`` when None; 0 = none.
        steps_per_epoch: Optimiser steps per epoch; filled from the trainer when None.
        total_steps: Optimiser steps of the run; filled from the trainer when None.
        last_epoch: torch's resume index (-1 = start).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Sequence[float] = (0.5, 0.75),
        gamma: float = 0.1,
        unit: Unit = "fraction",
        warmup: float = 0,
        warmup_unit: Unit = "step",
        warmup_factor: float = 0.1,
        warmup_mode: WarmupMode = "constant",
        min_warmup_steps: int | None = None,
        steps_per_epoch: int | None = None,
        total_steps: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        _check_warmup_mode(warmup_mode)
        self.milestone_steps = sorted(to_steps(m, unit, steps_per_epoch, total_steps) for m in milestones)
        plan = _plan(warmup, warmup_unit, min_warmup_steps, steps_per_epoch, total_steps, type(self).__name__)
        self.warmup_steps, self.peak_scale, self.note = plan.steps, plan.peak_scale, plan.note
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_mode = warmup_mode
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        drops = bisect.bisect_right(self.milestone_steps, step)
        warmup = warmup_factor_at(step, self.warmup_steps, self.warmup_factor, self.warmup_mode)
        return self.peak_scale * self.gamma**drops * warmup


class WarmupCosine(_StepSchedule):
    """Optional warm-up, then cosine annealing from the base rate to ``min_factor`` of it.

    Args:
        optimizer: The optimiser whose rates are scheduled.
        warmup: Length of the warm-up in ``warmup_unit``s (0 = none).
        warmup_unit: ``"step"``, ``"epoch"`` or ``"fraction"``.
        warmup_factor: Rate at the start of warm-up as a fraction of the base rate.
        warmup_mode: ``"linear"`` (Goyal et al. 2017) or ``"constant"``.
        min_factor: Rate at the last step as a fraction of the base rate (``eta_min / lr``).
        min_warmup_steps: Floor on a warm-up given in epochs or as a fraction (``floored_warmup``);
            the classifier fills in ``WARMUP_FLOOR_STEPS`` when None; 0 = none.
        steps_per_epoch: Optimiser steps per epoch; filled from the trainer when None.
        total_steps: Optimiser steps of the run (the cosine ends there); filled from the trainer
            when None.
        last_epoch: torch's resume index (-1 = start).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup: float = 0,
        warmup_unit: Unit = "step",
        warmup_factor: float = 0.01,
        warmup_mode: WarmupMode = "linear",
        min_factor: float = 0.0,
        min_warmup_steps: int | None = None,
        steps_per_epoch: int | None = None,
        total_steps: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        _check_warmup_mode(warmup_mode)
        if not total_steps:
            raise ValueError("WarmupCosine needs total_steps (filled from the trainer during fit)")
        self.total_steps = total_steps
        plan = _plan(warmup, warmup_unit, min_warmup_steps, steps_per_epoch, total_steps, type(self).__name__)
        self.warmup_steps, self.peak_scale, self.note = plan.steps, plan.peak_scale, plan.note
        if self.warmup_steps >= total_steps:
            raise ValueError(f"the warm-up ({self.warmup_steps} steps) must be shorter than training ({total_steps})")
        self.warmup_factor = warmup_factor
        self.warmup_mode = warmup_mode
        self.min_factor = min_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_scale * warmup_factor_at(step, self.warmup_steps, self.warmup_factor, self.warmup_mode)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - 1 - self.warmup_steps))
        cosine = self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.peak_scale * cosine


# ----- building a configured schedule against a trainer ----------------------------------------


def _scheduler_class(factory: Any) -> type | None:
    """The scheduler class behind a factory: jsonargparse's partial, functools.partial or a class."""
    for candidate in (*getattr(factory, "args", ()), getattr(factory, "func", None), factory):
        if isinstance(candidate, type):
            return candidate
    return None


def build_scheduler(
    factory: Callable[..., LRScheduler], optimizer: Optimizer, trainer: Any, interval: str | None = None
) -> tuple[LRScheduler, str]:
    """The configured schedule with the lengths it left unset filled from ``trainer``, and its interval.

    ``total_steps`` / ``steps_per_epoch`` come from the trainer (epochs, or optimiser steps),
    ``min_warmup_steps`` is ``WARMUP_FLOOR_STEPS``, OneCycleLR's ``max_lr`` keeps each parameter group's
    learning-rate multiplier and its warm-up gets the same floor. ``interval`` None takes the schedule's
    own ``interval`` (``"step"`` for the schedules here), else ``"epoch"``.
    """
    cls = _scheduler_class(factory)
    name = cls.__name__ if cls is not None else "the schedule"
    declared = getattr(cls, "interval", None)
    if interval and declared and declared != interval:
        raise ValueError(f"{name} is stepped every {declared}; drop scheduler_interval or set it to {declared!r}")
    interval = interval or declared or "epoch"
    keywords = getattr(factory, "keywords", {})
    accepted = inspect.signature(cls).parameters if cls is not None else {}
    fill: dict[str, Any] = {}
    if "total_steps" in accepted and keywords.get("total_steps") is None and not keywords.get("epochs"):
        fill["total_steps"] = _training_length(trainer, interval, name)
    if (
        "steps_per_epoch" in accepted
        and keywords.get("steps_per_epoch") is None
        and (declared or keywords.get("epochs"))
    ):
        fill["steps_per_epoch"] = _steps_per_epoch(trainer, interval)
    if "min_warmup_steps" in accepted and keywords.get("min_warmup_steps") is None:
        fill["min_warmup_steps"] = WARMUP_FLOOR_STEPS
    multipliers = [group.get("lr_multiplier", 1.0) for group in optimizer.param_groups]
    if isinstance(keywords.get("max_lr"), (int, float)) and any(m != 1.0 for m in multipliers):
        # OneCycleLR sets every group's rate from max_lr: keep the groups' multipliers.
        fill["max_lr"] = [keywords["max_lr"] * m for m in multipliers]
    note = None
    if cls is not None and issubclass(cls, OneCycleLR) and interval == "step" and "total_steps" in fill:
        note = _floor_one_cycle(fill, keywords, accepted, name)
    scheduler = factory(optimizer, **fill)
    note = note or getattr(scheduler, "note", None)
    if note and getattr(trainer, "is_global_zero", True):
        print(f"ablate: {note}", file=sys.stderr, flush=True)
    return scheduler, interval


def _floor_one_cycle(fill: dict[str, Any], keywords: dict[str, Any], accepted: Any, name: str) -> str | None:
    """OneCycleLR's warm-up (``pct_start`` of the run) given the floor of ``floored_warmup``:
    ``pct_start`` and ``max_lr`` in ``fill`` changed only where the run is too short for it."""
    total = fill["total_steps"]
    pct_start = keywords.get("pct_start", accepted["pct_start"].default)
    plan = floored_warmup(int(pct_start * total), total, WARMUP_FLOOR_STEPS, name)
    if plan.note is None:
        return None
    fill["pct_start"] = plan.steps / total
    max_lr = fill.get("max_lr", keywords.get("max_lr"))
    if plan.peak_scale != 1.0 and max_lr is not None:
        fill["max_lr"] = (
            [lr * plan.peak_scale for lr in max_lr] if isinstance(max_lr, (list, tuple)) else max_lr * plan.peak_scale
        )
    return plan.note


def _training_length(trainer: Any, interval: str, name: str) -> int:
    """Scheduler steps of the whole run: epochs, or optimiser steps, from the trainer."""
    if trainer is None:
        raise ValueError(f"{name} needs total_steps, or a trainer with max_epochs/max_steps set")
    total = trainer.max_epochs if interval == "epoch" else trainer.estimated_stepping_batches
    if total is None or not math.isfinite(total) or total <= 0:
        raise ValueError(f"{name} needs total_steps, or a trainer with max_epochs/max_steps set")
    return int(total)


def _steps_per_epoch(trainer: Any, interval: str) -> int | None:
    """Scheduler steps per epoch: 1 per epoch, or the optimiser steps of one epoch; None for a
    training set of unknown length (a schedule in epochs then says it needs steps_per_epoch)."""
    if interval == "epoch":
        return 1
    if trainer is None:
        return None
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches <= 0:
        return None
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches))
