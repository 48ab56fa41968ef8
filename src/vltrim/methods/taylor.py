"""`taylor`: first-order Taylor importance, one-shot: |w * dL/dw| summed over every weight a unit owns,
accumulated over calibration batches of the task loss, then one ranking by exact cost.

The absolute value is taken per batch: when the loss is a distillation from the unpruned model itself,
the mean gradient at the start is ~0 and only per-batch terms (dropout on, as in training) carry signal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vltrim.data.calibration import calibration_data
from vltrim.methods.common import (
    DEFAULT_UNITS,
    TAYLOR_NORMALIZE,
    TAYLOR_RANKING,
    checked_batches,
    plan_from_scores,
    prunable_groups,
    seeded,
    unit_sums,
    weight_taylor,
)
from vltrim.methods.registry import BudgetConfig, Descriptor, Method, register
from vltrim.structure.groups import Group
from vltrim.structure.select import ALLOCATION, MAX_RATIO, Budget, check_ranking
from vltrim.tasks import Task


def taylor_scores(
    model: nn.Module,
    groups: list[Group],
    data: Dataset,
    loss_fn: Callable,
    num_batches: int = 8,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Sum over ``num_batches`` batches of |w * dL_batch/dw| per unit. The model's weights, gradients and
    train/eval mode are left as they were."""
    if num_batches < 1:
        raise ValueError(f"taylor needs num_batches >= 1, got {num_batches}")
    was_training, saved = model.training, {n: p.grad for n, p in model.named_parameters()}
    dev = next(model.parameters()).device
    scores = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    model.train()
    it = checked_batches(data, batch_size, seed, model)
    try:
        with seeded(seed, dev):  # dropout masks from the seed
            for _ in range(num_batches):
                model.zero_grad(set_to_none=True)
                loss_fn(model, {k: v.to(dev) for k, v in next(it).items()}).backward()
                for g in groups:
                    scores[g.name] += unit_sums(model, g, weight_taylor)
    finally:
        for n, p in model.named_parameters():
            p.grad = saved[n]
        model.train(was_training)
    return scores


@dataclass(frozen=True)
class TaylorConfig(BudgetConfig):
    """Settings of taylor: first-order Taylor importance on calibration batches.

    Its plans record (``plan_settings``) the unit kinds cut, num_batches and the search's batch size and seed; the
    budget options (normalize and ranking too) are in the plan's target."""

    num_batches: int = 8
    normalize: str = TAYLOR_NORMALIZE
    ranking: str = TAYLOR_RANKING

    def validate(self) -> None:
        check_ranking(self.normalize, self.ranking)

    def plan_settings(self, **found: Any) -> dict[str, Any]:
        return {
            "units": found["units"],
            "num_batches": self.num_batches,
            "batch_size": found["batch_size"],
            "seed": found["seed"],
        }


@register
class TaylorMethod(Method):
    """Data-driven one-shot baseline: prune the units whose removal the first-order Taylor term says costs least."""

    name = "taylor"
    Config = TaylorConfig
    descriptor = Descriptor(data="required", calib_option="data", runtime=("data", "loss_fn", "batch_size", "seed"))

    def task_settings(self, task: Task, loss: Callable) -> dict[str, Any]:
        """What vltrim.plan's ``task`` gives the search: the task's loss, scored on the calibration data."""
        return {"loss_fn": loss}

    def search(
        self,
        model: nn.Module,
        target: float,
        data: Dataset | None = None,
        loss_fn: Callable | None = None,
        metric: str = "params",
        align: int = 8,
        units=DEFAULT_UNITS,
        allocation: str = ALLOCATION,
        max_ratio: float = MAX_RATIO,
        num_batches: int = 8,
        batch_size: int = 16,
        seed: int = 0,
        normalize: str = TAYLOR_NORMALIZE,
        ranking: str = TAYLOR_RANKING,
    ):
        config = TaylorConfig.pick(locals())
        if data is None or loss_fn is None:
            raise ValueError(
                "taylor needs calibration data and a loss: calib_data=... (the loss from task=...), or data=... and "
                "loss_fn=(model, batch) -> loss (vltrim.compress passes its train_data and task loss)"
            )
        data = calibration_data(data, model)
        groups = prunable_groups(model, units)
        scores = taylor_scores(model, groups, data, loss_fn, num_batches, batch_size, seed)
        settings = config.plan_settings(units=sorted({g.kind.value for g in groups}), batch_size=batch_size, seed=seed)
        budget = Budget(target, metric, align, allocation, max_ratio, normalize, ranking)
        return plan_from_scores(model, groups, scores, budget, self.name, settings)
