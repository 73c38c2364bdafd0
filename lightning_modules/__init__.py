"""The generic LightningModule every architecture is trained through.

Its training-recipe parts live beside it and are named by their full path in configs:
``lightning_modules.schedules`` (warm-up, multi-step, cosine), ``lightning_modules.prediction_writer``
(``ablate predict`` to CSV), ``lightning_modules.transfer`` (weights, freezing),
``lightning_modules.param_groups`` and ``lightning_modules.evaluation``; a trained run in a
notebook: ``lightning_modules.inference`` (``load_model``).
"""

from lightning_modules.classifier import ImageClassifier, NonFiniteLossError
from lightning_modules.inference import Prediction, Predictor, load_model

__all__ = ["ImageClassifier", "NonFiniteLossError", "Prediction", "Predictor", "load_model"]
