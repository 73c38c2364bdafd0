"""The generic LightningModule every architecture is trained through.

Its training-recipe parts live beside it and are named by their full path in configs:
``lightning_modules.schedules`` (warm-up, multi-step, cosine), ``lightning_modules.prediction_writer``
(``ablate predict`` to CSV), ``lightning_modules.transfer`` (weights, the ``FineTune`` callback),
``lightning_modules.ema`` (the ``EMA`` callback),
``lightning_modules.param_groups`` and ``lightning_modules.evaluation`` (the ``TestTime`` callback); a trained run in a
notebook: ``lightning_modules.inference`` (``load_model``).
"""

import sys
from types import ModuleType

from lightning_modules.classifier import ImageClassifier
from lightning_modules.ema import EMA
from lightning_modules.errors import NonFiniteLossError
from lightning_modules.evaluation import TestTime
from lightning_modules.exact_resume import ExactResume
from lightning_modules.inference import Prediction, Predictor, load_model
from lightning_modules.preemption import CheckpointOnSignal
from lightning_modules.transfer import FineTune

__all__ = [
    "EMA",
    "FineTune",
    "ImageClassifier",
    "NonFiniteLossError",
    "Prediction",
    "Predictor",
    "TestTime",
    "load_model",
]

# Runs saved before these two callbacks had files of their own name them in their config.yaml as
# `lightning_modules.reliability.<Class>`. That path keeps resolving: otherwise `--config <run>/config.yaml`
# fails, and a resume counts the unknown callback as a changed setting and is refused.
_old_path = ModuleType("lightning_modules.reliability", "Old class paths of ExactResume and CheckpointOnSignal.")
_old_path.ExactResume, _old_path.CheckpointOnSignal = ExactResume, CheckpointOnSignal
sys.modules.setdefault(_old_path.__name__, _old_path)
