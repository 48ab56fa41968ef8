"""Training: the loop used for fine-tuning and retraining."""

from vltrim.train.loop import batch_indices, batches, train

__all__ = ["batch_indices", "batches", "train"]
