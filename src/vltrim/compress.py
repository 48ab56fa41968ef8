"""`vltrim.compress`: search a plan, extract the subnet, retrain it with distillation, report before/after."""
from __future__ import annotations

import inspect
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


def _search_inputs(method: Any, data: Dataset | None, loss: Callable, batch_size: int, seed: int) -> dict[str, Any]:
    """What a one-shot method takes besides the budget: calibration data and loss (``needs_data``), and the seed."""
    params = inspect.signature(method.search).parameters
    out: dict[str, Any] = {"seed": seed} if "seed" in params else {}
    if getattr(method, "needs_data", False):
        if data is None:
            raise ValueError(f"{method.name} scores units on calibration data: pass train_data")
        out.update(data=data, loss_fn=loss, batch_size=batch_size)
    return out


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
    allocation: str | None = None,
    max_ratio: float | None = None,
    retrain_schedule: str = "cosine",
    eval_every: int = 0,
    latency_batch: int = 8,
    progress: bool = True,
    seed: int = 0,
    grad_accum: int = 1,
    mixed_precision: str = "no",
    work_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    plan: Plan | None = None,
    method_settings: dict[str, Any] | None = None,
    evaluate_before: bool = True,
) -> CompressResult:
    """Compress ``model`` with ``method`` to remove ``target`` of its prunable ``metric``; ``model`` is not changed.

    Training-based searches (upop) train a copy on ``train_data`` while they decide; then the subnet is
    retrained ``retrain_steps`` with the task loss + ``kd_weight`` x distillation from the original.
    With ``work_dir``, search and retrain log to work_dir/{search,retrain}/log.jsonl, checkpoint every
    ``checkpoint_every`` steps, and ``resume=True`` continues a killed run to the same result.
    With ``plan`` (e.g. `Plan.load(path)`), no search runs: that plan is applied to ``model`` and retrained.
    ``allocation`` / ``max_ratio``: where the cut may fall (see `Budget`; None: the method's default). ``eval_every`` > 0 evaluates the
    subnet every that many retrain steps into ``report["curve"]`` (metric vs total training steps).
    ``seed`` seeds the search (random scores, calibration and batch order) and the retraining.
    ``latency_batch`` 0 skips the latency measurement (``report["speed"]`` is None); ``evaluate_before=False``
    skips evaluating the original (when its metric is known already).
    ``method_settings`` go to the method as they are (e.g. upop's ``interval``, ``schedule``, ``saliency_decay``)."""
    t = get_task(task)
    if latency_batch < 0:
        raise ValueError(f"latency_batch must be >= 0 (0 skips timing), got {latency_batch}")
    m = get_method(method) if plan is None else None
    searches = m is not None and getattr(m, "needs_training", False)
    needs_data = searches or retrain_steps > 0 or getattr(m, "needs_data", False)
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
    if eval_data is not None and evaluate_before:
        report["before"] = t.evaluate(model, eval_data)
    where = {k: v for k, v in dict(allocation=allocation, max_ratio=max_ratio).items() if v is not None}
    common = {**dict(metric=metric, align=align, units=units), **where, **(method_settings or {})}
    if plan is not None:
        base = model
    elif searches:
        res = m.run(model, target, train_data=train_data, loss_fn=loss, steps=search_steps, lr=lr, batch_size=batch_size,
                    seed=seed, progress=progress, **common, **loop("search"))
        plan, base = res.plan, res.model
    else:
        plan, base = m.search(model, target, **common, **_search_inputs(m, train_data, loss, batch_size, seed)), model
    small = apply_plan(base, plan)
    if eval_data is not None:
        report["after_search"] = t.evaluate(small, eval_data)
        report["curve"] = [{"retrain_step": 0, "total_steps": report["search_steps"], **report["after_search"]}]

    def point(done: int, net: nn.Module) -> None:
        if eval_every and eval_data is not None and (done % eval_every == 0 or done == retrain_steps):
            report["curve"].append({"retrain_step": done, "total_steps": report["search_steps"] + done, **t.evaluate(net, eval_data)})

    train(small, train_data, loss, retrain_steps, lr=retrain_lr, batch_size=batch_size, seed=seed + 1, desc="retrain",
          progress=progress, schedule=retrain_schedule, after_step=point, **loop("retrain"))
    if eval_data is not None:
        report["after"] = t.evaluate(small, eval_data)
    report["plan"] = plan.achieved
    report["speed"] = compare(model, small, batch_size=latency_batch) if latency_batch > 0 else None
    return CompressResult(small, plan, report)
