"""Tasks: a loss to train with and a metric to judge by."""
from .retrieval import contrastive_loss, evaluate_retrieval, recall_at_k, similarity_kd_loss, zero_shot_accuracy

__all__ = ["contrastive_loss", "evaluate_retrieval", "recall_at_k", "similarity_kd_loss", "zero_shot_accuracy"]
