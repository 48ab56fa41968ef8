"""`random`: uniformly random unit scores; the control every informed method must beat at equal cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vltrim.methods.common import DEFAULT_UNITS, plan_from_scores, prunable_groups
from vltrim.methods.registry import BudgetConfig, Descriptor, Method, register
from vltrim.structure.select import ALLOCATION, MAX_RATIO, Budget


@dataclass(frozen=True)
class RandomConfig(BudgetConfig):
    """Settings of random: random scores through the same ranking (the control).

    Its plans record (``plan_settings``) the unit kinds cut and the seed; the budget options are in the plan's
    target."""

    normalize: str = "kind"
    ranking: str = "score"

    def plan_settings(self, **found: Any) -> dict[str, Any]:
        return {"units": found["units"], "seed": found["seed"]}


@register
class RandomMethod(Method):
    name = "random"
    Config = RandomConfig
    descriptor = Descriptor(runtime=("seed",))

    def search(
        self,
        model: nn.Module,
        target: float,
        metric: str = "params",
        align: int = 8,
        units=DEFAULT_UNITS,
        allocation: str = ALLOCATION,
        max_ratio: float = MAX_RATIO,
        seed: int = 0,
        normalize: str = "kind",
        ranking: str = "score",
    ):
        config = RandomConfig.pick(locals())
        groups = prunable_groups(model, units)
        gen = torch.Generator().manual_seed(seed)
        scores = {g.name: torch.rand(g.size, generator=gen) for g in groups}
        settings = config.plan_settings(units=sorted({g.kind.value for g in groups}), seed=seed)
        budget = Budget(target, metric, align, allocation, max_ratio, normalize, ranking)
        return plan_from_scores(model, groups, scores, budget, self.name, settings)
