"""Training: the loop used for fine-tuning and retraining."""
from .loop import batches, train

__all__ = ["batches", "train"]
