"""The training and calibration loss of a compressed model, derived from its task: the task loss plus distillation
from the unpruned model (the task's own, hidden states, attention maps). compress trains and scores with it, and
`vltrim.plan`'s ``calib_data`` + ``task`` derive the same loss for the same method and task."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from vltrim.arch import get_adapter
from vltrim.arch.inputs import model_inputs
from vltrim.tasks import Task
from vltrim.train.distill import attention_kd, attention_maps, hidden_kd, layer_outputs


def kd_defaults(task: Task, kd: Any = None) -> dict[str, float]:
    """The distillation weights a method asks by default (``kd``: its descriptor's KD, with ``hidden``, ``embed`` and
    ``attention``; None: no distillation beyond the task's own): kd_hidden, kd_embed (only where the task has tower
    embeddings to distil) and kd_attention, as `task_loss` takes them."""
    return {
        "kd_hidden": kd.hidden if kd is not None else 0.0,
        "kd_embed": kd.embed if kd is not None and task.embed_kd else 0.0,
        "kd_attention": kd.attention if kd is not None else 0.0,
    }


def search_loss(task: Task, teacher: nn.Module, kd: Any = None) -> Callable[[nn.Module, Any], torch.Tensor]:
    """The loss compress scores and searches with at its default weights (task loss and task distillation at
    weight 1, the method's ``kd`` defaults, see `kd_defaults`), distilling from ``teacher`` (the unpruned model)."""
    return task_loss(task, teacher, **kd_defaults(task, kd))


def task_loss(
    task: Task,
    teacher: nn.Module | None,
    kd_weight: float = 1.0,
    kd_hidden: float = 0.0,
    kd_embed: float = 0.0,
    task_weight: float = 1.0,
    kd_attention: float = 0.0,
) -> Callable[[nn.Module, Any], torch.Tensor]:
    """The training loss of a compressed model: ``task_weight`` x the task loss (0: distillation only, e.g. MoPE's
    pre-training stage on unlabelled pairs) + ``kd_weight`` x the task's distillation from ``teacher`` (logits /
    similarity KL, + ``kd_embed`` x each tower's final-embedding distance where the task has towers) + ``kd_hidden`` x uni-modal
    hidden-state MSE of every block to its teacher block + ``kd_attention`` x attention-map MSE of every block to its
    teacher block (both mapped across dropped layers; attention maps head-averaged where head counts differ)."""
    extra = {"embed_weight": kd_embed} if kd_embed and task.embed_kd else {}

    def kd(student: nn.Module, batch: Any) -> torch.Tensor:
        value = task_weight * task.loss(student, batch) if task_weight else 0.0
        if kd_weight and teacher is not None and task.kd is not None:
            value = value + kd_weight * task.kd(student, teacher, batch, **extra)
        return value

    def with_layers(student: nn.Module, batch: Any) -> torch.Tensor:
        net = getattr(student, "module", student)  # under DDP the hooks sit on the wrapped model
        with ExitStack() as stack:
            hidden = [stack.enter_context(layer_outputs(m)) for m in (net, teacher)] if kd_hidden else None
            maps = [stack.enter_context(attention_maps(m)) for m in (net, teacher)] if kd_attention else None
            value = kd(student, batch)
            ran_student, ran_teacher = hidden or maps
            inputs = model_inputs(batch)
            if not ran_student:  # task_weight 0 and no task distillation: nothing ran the student yet
                get_adapter(net).forward(student, inputs)
            if not ran_teacher:  # the task's own distillation did not run the teacher
                with torch.no_grad():
                    get_adapter(teacher).forward(teacher, inputs)
        if hidden:
            value = value + kd_hidden * hidden_kd(net, teacher, *hidden)
        if maps:
            value = value + kd_attention * attention_kd(net, teacher, *maps)
        return value

    return with_layers if (kd_hidden or kd_attention) and teacher is not None else kd
