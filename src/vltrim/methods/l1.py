"""`l1`: structured magnitude importance (sum of |w| over every weight a unit owns), ranked by exact cost.

Its default allocation is 'uniform' (every group loses the same share): weight magnitudes are on a
different scale in every layer, and one global ranking of them cut MiniLM-L6's last FFN to 104 of 1,536
neurons; uniform kept more of the pretrained function (benchmarks/results/real_text_r8_allocation.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vltrim.methods.common import DEFAULT_UNITS, plan_from_scores, prunable_groups, unit_sums
from vltrim.methods.registry import BudgetConfig, Descriptor, Method, register
from vltrim.structure.groups import Group
from vltrim.structure.select import MAX_RATIO, Budget


def unit_l1(model: nn.Module, group: Group) -> torch.Tensor:
    """L1 norm of each unit over all its coupled weights and biases (q,k,v rows + out columns, or fc1 row + fc2 column)."""
    return unit_sums(model, group, torch.abs)


@dataclass(frozen=True)
class L1Config(BudgetConfig):
    """Settings of l1: the L1 norm of the weights each unit owns.

    Its plans record (``plan_settings``) only the unit kinds cut; the budget options are in the plan's target."""

    allocation: str = "uniform"
    normalize: str = "kind"
    ranking: str = "score"

    def plan_settings(self, **found: Any) -> dict[str, Any]:
        return {"units": found["units"]}


@register
class L1Method(Method):
    """Data-free baseline: prune the units with the smallest weights."""

    name = "l1"
    Config = L1Config
    descriptor = Descriptor()

    def search(
        self,
        model: nn.Module,
        target: float,
        metric: str = "params",
        align: int = 8,
        units=DEFAULT_UNITS,
        allocation: str = "uniform",
        max_ratio: float = MAX_RATIO,
        normalize: str = "kind",
        ranking: str = "score",
    ):
        config = L1Config.pick(locals())
        groups = prunable_groups(model, units)
        scores = {g.name: unit_l1(model, g) for g in groups}
        budget = Budget(target, metric, align, allocation, max_ratio, normalize, ranking)
        settings = config.plan_settings(units=sorted({g.kind.value for g in groups}))
        return plan_from_scores(model, groups, scores, budget, self.name, settings)
