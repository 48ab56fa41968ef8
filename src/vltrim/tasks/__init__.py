"""Tasks: a loss to train with, a distillation loss against the teacher, and a metric to judge by."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .classification import classification_kd, classification_loss, evaluate_classification
from .retrieval import contrastive_loss, evaluate_retrieval, recall_at_k, similarity_kd_loss, zero_shot_accuracy
from .sentence import SentenceDistillData, embedding_loss, evaluate_embeddings


@dataclass(frozen=True)
class Task:
    name: str
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    kd: Callable[[nn.Module, nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None  # None: the loss already distils
    evaluate: Callable[..., dict[str, float]]
    metric: str  # the headline key of evaluate()'s result


TASKS: dict[str, Task] = {
    "retrieval": Task("retrieval", contrastive_loss, similarity_kd_loss, evaluate_retrieval, "mean_R@1"),
    "classification": Task("classification", classification_loss, classification_kd, evaluate_classification, "top1"),
    "sentence-embedding": Task("sentence-embedding", embedding_loss, None, evaluate_embeddings, "cosine_to_teacher"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = ["TASKS", "SentenceDistillData", "Task", "classification_kd", "classification_loss", "contrastive_loss",
           "embedding_loss", "evaluate_classification", "evaluate_embeddings", "evaluate_retrieval", "get_task", "recall_at_k", "similarity_kd_loss", "zero_shot_accuracy"]
