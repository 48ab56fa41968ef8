"""Tasks: a loss to train with, a distillation loss against the teacher, and a metric to judge by."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .retrieval import contrastive_loss, evaluate_retrieval, recall_at_k, similarity_kd_loss, zero_shot_accuracy


@dataclass(frozen=True)
class Task:
    name: str
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    kd: Callable[[nn.Module, nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    evaluate: Callable[..., dict[str, float]]
    metric: str  # the headline key of evaluate()'s result


TASKS: dict[str, Task] = {
    "retrieval": Task("retrieval", contrastive_loss, similarity_kd_loss, evaluate_retrieval, "mean_R@1"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "contrastive_loss", "evaluate_retrieval", "get_task", "recall_at_k", "similarity_kd_loss", "zero_shot_accuracy"]
