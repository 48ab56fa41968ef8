"""One global ranking: turn per-unit scores into kept indices that meet a cost budget, aligned."""
from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass

import torch

from .groups import Group


@dataclass(frozen=True)
class Budget:
    """Remove ``target`` (0..1) of the prunable ``metric`` ('params' or 'macs'); widths stay multiples of ``align``."""

    target: float
    metric: str = "params"
    align: int = 8

    def __post_init__(self) -> None:
        if not 0.0 < float(self.target) < 1.0:
            raise ValueError(f"target must be a fraction in (0, 1) of prunable cost to remove, got {self.target}")
        if self.metric not in ("params", "macs"):
            raise ValueError(f"metric must be 'params' or 'macs', got {self.metric!r}")
        if int(self.align) < 1:
            raise ValueError(f"align must be >= 1, got {self.align}")

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_by_kind(groups: list[Group], scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Standardise scores per unit kind over the whole model (all modalities), so heads, head_dims
    and neurons can share one ranking while each modality competes on equal terms."""
    out: dict[str, torch.Tensor] = {}
    for kind in {g.kind for g in groups}:
        names = [g.name for g in groups if g.kind == kind]
        allv = torch.cat([scores[n].detach().double().flatten() for n in names])
        mean, std = allv.mean(), allv.std() if allv.numel() > 1 else torch.tensor(1.0)
        std = std if std > 0 else torch.tensor(1.0, dtype=torch.float64)
        for n in names:
            out[n] = (scores[n].detach().double().flatten() - mean) / std
    return out


def removal_chunks(size: int, step: int) -> list[int]:
    """Sizes of successive removals that keep the width a multiple of ``step`` and never empty it.

    64 units, step 8 -> [8]*7 (keeps 56, 48, ..., 8). 20 units, step 8 -> [4, 8] (keeps 16, 8)."""
    if size <= step:
        return []
    first = size % step or step
    return [first] + [step] * ((size - first) // step - 1)


def select(groups: list[Group], scores: dict[str, torch.Tensor], budget: Budget) -> dict[str, list[int]]:
    """Remove the lowest-scored aligned chunks across all groups until the budget is met.

    Units are ranked by (normalised) score; each chunk's cost is its exact params or MACs. Stops at the
    first chunk that reaches the target, so the plan overshoots by less than one alignment step.
    """
    total = sum(g.size * g.cost_per_unit(budget.metric) for g in groups)
    need = budget.target * total
    order = {g.name: torch.argsort(scores[g.name].flatten(), stable=True).tolist() for g in groups}
    chunks = {g.name: removal_chunks(g.size, g.align_step(budget.align)) for g in groups}
    removed = {g.name: 0 for g in groups}
    by_name = {g.name: g for g in groups}

    def push(heap: list, name: str, k: int) -> None:
        if k < len(chunks[name]):
            start = removed[name]
            idx = order[name][start : start + chunks[name][k]]
            s = float(scores[name].flatten()[idx].mean())
            heapq.heappush(heap, (s, name, k, len(idx)))

    heap: list = []
    for g in groups:
        push(heap, g.name, 0)
    done = 0.0
    while done < need:
        if not heap:
            reachable = done / total if total else 0.0
            raise ValueError(
                f"target {budget.target:.3f} of prunable {budget.metric} is not reachable with align={budget.align}: "
                f"at most {reachable:.3f} can be removed while keeping every group non-empty"
            )
        _, name, k, n = heapq.heappop(heap)
        removed[name] += n
        done += n * by_name[name].cost_per_unit(budget.metric)
        push(heap, name, k + 1)
    return {name: sorted(order[name][r:]) for name, r in removed.items() if r > 0}


def achieved(groups: list[Group], keep: dict[str, list[int]]) -> dict[str, float | int]:
    """Fractions of the prunable params and MACs (of ``groups``) that a keep-map removes."""
    out: dict[str, float | int] = {}
    for metric in ("params", "macs"):
        total = sum(g.size * g.cost_per_unit(metric) for g in groups)
        gone = sum((g.size - len(keep[g.name])) * g.cost_per_unit(metric) for g in groups if g.name in keep)
        out[f"prunable_{metric}"] = total
        out[f"{metric}_removed"] = gone / total if total else 0.0
    return out
