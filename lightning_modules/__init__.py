"""The generic LightningModule every architecture is trained through."""

from lightning_modules.classifier import ImageClassifier, NonFiniteLossError

__all__ = ["ImageClassifier", "NonFiniteLossError"]
