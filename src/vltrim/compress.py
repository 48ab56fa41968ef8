"""`vltrim.compress`: search a plan, extract the subnet, retrain it with distillation, report before/after."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from .api import apply_plan
from .measure import compare
from .methods import get_method
from .structure.plan import Plan
from .tasks import Task, get_task
from .train import train


def task_loss(task: Task, teacher: nn.Module | None, kd_weight: float = 1.0) -> Callable[[nn.Module, Any], torch.Tensor]:
    """The training loss of a compressed model: the task loss + ``kd_weight`` x distillation from ``teacher``."""

    def loss(student: nn.Module, batch: Any) -> torch.Tensor:
        value = task.loss(student, batch)
        if kd_weight and teacher is not None and task.kd is not None:
            value = value + kd_weight * task.kd(student, teacher, batch)
        return value

    return loss


@dataclass
class CompressResult:
    model: nn.Module  # the compressed, retrained model
    plan: Plan
    report: dict[str, Any] = field(default_factory=dict)  # metric before/after, params, MACs, latency


def compress(
    model: nn.Module,
    method: str = "upop",
    target: float = 0.5,
    task: str = "retrieval",
    train_data: Dataset | None = None,
    eval_data: Dataset | None = None,
    search_steps: int = 300,
    retrain_steps: int = 300,
    kd_weight: float = 1.0,
    lr: float = 1e-4,
    retrain_lr: float = 2e-4,
    batch_size: int = 64,
    metric: str = "params",
    align: int = 8,
    units: str = "head_dims,neurons",
    latency_batch: int = 8,
    progress: bool = True,
    seed: int = 0,
    grad_accum: int = 1,
    mixed_precision: str = "no",
    work_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    plan: Plan | None = None,
) -> CompressResult:
    """Compress ``model`` with ``method`` to remove ``target`` of its prunable ``metric``; ``model`` is not changed.

    Training-based searches (upop) train a copy on ``train_data`` while they decide; then the subnet is
    retrained ``retrain_steps`` with the task loss + ``kd_weight`` x distillation from the original.
    With ``work_dir``, search and retrain log to work_dir/{search,retrain}/log.jsonl, checkpoint every
    ``checkpoint_every`` steps, and ``resume=True`` continues a killed run to the same result.
    With ``plan`` (e.g. `Plan.load(path)`), no search runs: that plan is applied to ``model`` and retrained."""
    t = get_task(task)
    m = get_method(method) if plan is None else None
    searches = m is not None and getattr(m, "needs_training", False)
    needs_data = searches or retrain_steps > 0
    if needs_data and train_data is None:
        raise ValueError(f"{method} with retrain_steps={retrain_steps} needs train_data")

    loss = task_loss(t, model, kd_weight)

    def loop(stage: str) -> dict[str, Any]:
        d = Path(work_dir) / stage if work_dir is not None else None
        return dict(grad_accum=grad_accum, mixed_precision=mixed_precision, output_dir=d,
                    checkpoint_every=checkpoint_every if d is not None else 0, resume=resume and d is not None)

    model.eval()
    report: dict[str, Any] = {"method": method if plan is None else plan.method, "target": target if plan is None else plan.target.get("target"),
                              "metric": metric, "task": task, "search_steps": search_steps if searches else 0,
                              "retrain_steps": retrain_steps}
    if eval_data is not None:
        report["before"] = t.evaluate(model, eval_data)
    common = dict(metric=metric, align=align, units=units)
    if plan is not None:
        base = model
    elif searches:
        res = m.run(model, target, train_data=train_data, loss_fn=loss, steps=search_steps, lr=lr, batch_size=batch_size,
                    seed=seed, progress=progress, **common, **loop("search"))
        plan, base = res.plan, res.model
    else:
        plan, base = m.search(model, target, **common), model
    small = apply_plan(base, plan)
    if eval_data is not None:
        report["after_search"] = t.evaluate(small, eval_data)
    train(small, train_data, loss, retrain_steps, lr=retrain_lr, batch_size=batch_size, seed=seed + 1, desc="retrain",
          progress=progress, **loop("retrain"))
    if eval_data is not None:
        report["after"] = t.evaluate(small, eval_data)
    report["plan"] = plan.achieved
    report["speed"] = compare(model, small, batch_size=latency_batch)
    return CompressResult(small, plan, report)
