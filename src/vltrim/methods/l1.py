"""`l1`: structured L1-norm importance (mean |w| of a unit's rows and columns), one global ranking by cost."""
from __future__ import annotations

import torch
from torch import nn

from ..adapters import get_adapter
from ..structure.groups import Group, UnitKind
from ..structure.select import Budget
from . import register
from .common import DEFAULT_UNITS, plan_from_scores, prunable_groups


def unit_l1(model: nn.Module, group: Group) -> torch.Tensor:
    """Mean absolute weight of each unit over every weight it owns (q,k,v rows + out columns, or fc1 row + fc2 column)."""
    _, _, b = get_adapter(model).locate(model, group.name)
    with torch.no_grad():
        if group.kind == UnitKind.NEURONS:
            return (b.fc1.weight.abs().sum(1) + b.fc2.weight.abs().sum(0)) / (b.fc1.in_features + b.fc2.out_features)
        a = b.attn
        h, d = a.num_heads, a.head_dim
        rows = sum(lin.weight.abs().sum(1) for lin in (a.q, a.k, a.v)).view(h, d)
        cols = a.o.weight.abs().sum(0).view(h, d)
        per = rows + cols  # [heads, head_dim]
        n_in = 3 * a.q.in_features + a.o.out_features
        return per.sum(1) / (d * n_in) if group.kind == UnitKind.HEADS else per.sum(0) / (h * n_in)


@register
class L1Method:
    """Data-free baseline: prune the units with the smallest weights."""

    name = "l1"

    def search(self, model: nn.Module, target: float, metric: str = "params", align: int = 8, units=DEFAULT_UNITS):
        groups = prunable_groups(model, units)
        scores = {g.name: unit_l1(model, g) for g in groups}
        budget = Budget(target, metric, align)
        return plan_from_scores(model, groups, scores, budget, self.name, {"units": sorted({g.kind.value for g in groups})})
