"""One global ranking: turn per-unit scores into kept indices that meet a cost budget, aligned."""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass

import torch

from .groups import Group, UnitKind

ALLOCATIONS = ("global", "uniform", "modality")
ALLOCATION = (
    "global"  # default of taylor, upop and random; l1 defaults to "uniform" (both chosen on benchmarks/real_text.py)
)
MAX_RATIO = 1.0  # default cap on the share of units one group may lose
NORMALIZATIONS = (
    "kind",
    "modality",
    "group",
    "none",
)  # how scores are made comparable before one ranking (see normalize_scores)
RANKINGS = ("score", "per_cost")  # aligned chunks cut in order of their mean score, or of score per unit of cost


@dataclass(frozen=True)
class Budget:
    """Remove ``target`` (0..1) of the prunable ``metric`` ('params' or 'macs'); widths stay multiples of ``align``.

    ``allocation`` says where the cut may fall: 'global' (one ranking over every group), 'uniform' (every
    group loses the same share; scores only pick units inside a group) or 'modality' (each modality loses
    ``target``, ranked globally inside it). ``max_ratio`` caps the share of units any one group may lose.

    How scores of different groups compare (`ranked`): ``normalize`` 'kind' standardises them per unit kind and
    modality, 'modality' divides them by their tower's mean score per unit of cost (one scale per tower, the rest
    as measured), 'group' divides them by their group's mean (Torch-Pruning's normaliser), 'none' leaves them as they are;
    ``ranking`` 'score' cuts the chunk with the lowest mean score next, 'per_cost' the one with the lowest score per
    unit of ``metric`` it removes (a greedy knapsack; needs scores that are non-negative estimates on one scale across
    groups, so not with 'kind')."""

    target: float
    metric: str = "params"
    align: int = 8
    allocation: str = ALLOCATION
    max_ratio: float = MAX_RATIO
    normalize: str = "kind"
    ranking: str = "score"

    def __post_init__(self) -> None:
        if not 0.0 < float(self.target) < 1.0:
            raise ValueError(f"target must be a fraction in (0, 1) of prunable cost to remove, got {self.target}")
        if self.metric not in ("params", "macs"):
            raise ValueError(f"metric must be 'params' or 'macs', got {self.metric!r}")
        if int(self.align) < 1:
            raise ValueError(f"align must be >= 1, got {self.align}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if not 0.0 < float(self.max_ratio) <= 1.0:
            raise ValueError(f"max_ratio must be a fraction in (0, 1] of a group's units, got {self.max_ratio}")
        check_ranking(self.normalize, self.ranking)

    def to_dict(self) -> dict:
        return asdict(self)


def check_ranking(normalize: str, ranking: str) -> None:
    """``normalize`` and ``ranking`` (see Budget), checked on their own so methods can refuse them before any work."""
    for name, value, allowed in (("normalize", normalize, NORMALIZATIONS), ("ranking", ranking, RANKINGS)):
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if ranking == "per_cost" and normalize == "kind":
        raise ValueError(
            "ranking='per_cost' divides scores by their cost: it needs normalize='modality', 'none' or 'group' "
            "(standardised scores can be negative)"
        )


def ranked(groups: list[Group], scores: dict[str, torch.Tensor], budget: Budget) -> dict[str, torch.Tensor]:
    """Scores made comparable across groups as ``budget`` says (normalised, then per unit of cost when ranking
    'per_cost'), ready for `select`."""
    out = normalize_scores(groups, scores, budget.normalize, budget.metric)
    if budget.ranking == "per_cost":
        out = {g.name: out[g.name] / g.cost_per_unit(budget.metric) for g in groups}
    return out


def normalize_scores(
    groups: list[Group], scores: dict[str, torch.Tensor], how: str = "kind", metric: str = "params"
) -> dict[str, torch.Tensor]:
    """'kind': standardise scores per (unit kind, modality), so heads, head_dims and neurons share one ranking and
    a tower whose weights (or gradients) are on a larger scale does not take the whole cut. 'modality': divide a
    tower's scores by its mean score per unit of ``metric`` cost (one tower: the scores as they are, up to a factor).
    'group': divide each group's scores by their mean. 'none': as they are (float64)."""
    if how == "none":
        return {g.name: scores[g.name].detach().double().flatten() for g in groups}
    if how == "modality":
        out = {}
        for m in {g.modality for g in groups}:
            own = [g for g in groups if g.modality == m]
            per = torch.cat([scores[g.name].detach().double().flatten() / g.cost_per_unit(metric) for g in own])
            per = per[torch.isfinite(per)]
            scale = per.mean() if per.numel() and per.mean() > 0 else torch.tensor(1.0, dtype=torch.float64)
            out.update({g.name: scores[g.name].detach().double().flatten() / scale for g in own})
        return out
    if how == "group":
        out = {}
        for g in groups:
            s = scores[g.name].detach().double().flatten()
            finite = s[torch.isfinite(s)]
            mean = finite.mean() if finite.numel() else torch.tensor(0.0, dtype=torch.float64)
            out[g.name] = s / mean if mean > 0 else s
        return out
    out: dict[str, torch.Tensor] = {}
    for key in {(g.kind, g.modality) for g in groups}:
        names = [g.name for g in groups if (g.kind, g.modality) == key]
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


def rank_quantiles(groups: list[Group], scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each unit's rank inside its group as a fraction (0 = lowest): one ranking of these cuts every group
    at the same share, so scores decide only which units of a group go ('uniform' allocation)."""
    out = {}
    for g in groups:
        s = scores[g.name].detach().flatten()
        q = torch.empty(g.size, dtype=torch.float64)
        q[torch.argsort(s, stable=True)] = torch.arange(g.size, dtype=torch.float64) / g.size
        out[g.name] = torch.where(torch.isneginf(s.double()), s.double(), q)  # -inf (already pruned) stays first
    return out


def select(groups: list[Group], scores: dict[str, torch.Tensor], budget: Budget) -> dict[str, list[int]]:
    """Kept indices per group that meet ``budget``, cut where its ``allocation`` says (see Budget)."""
    if budget.allocation == "modality":
        keep: dict[str, list[int]] = {}
        for m in sorted({g.modality for g in groups}):
            keep.update(_cut([g for g in groups if g.modality == m], scores, budget))
        return keep
    if budget.allocation == "uniform":
        scores = rank_quantiles(groups, scores)
    return _cut(groups, scores, budget)


def _cut(groups: list[Group], scores: dict[str, torch.Tensor], budget: Budget) -> dict[str, list[int]]:
    """Remove the lowest-scored aligned chunks across ``groups`` until the budget is met.

    Units are ranked by score; each chunk's cost is its exact params or MACs; no group loses more than
    ``max_ratio`` of its units. Stops at the first chunk that reaches the target, so the plan overshoots
    by less than one alignment step.
    """
    total = sum(g.size * g.cost_per_unit(budget.metric) for g in groups)
    need = budget.target * total
    order = {g.name: torch.argsort(scores[g.name].flatten(), stable=True).tolist() for g in groups}
    chunks = {g.name: removal_chunks(g.size, g.align_step(budget.align)) for g in groups}
    removed = {g.name: 0 for g in groups}
    by_name = {g.name: g for g in groups}

    def push(heap: list, name: str, k: int) -> None:
        if k < len(chunks[name]) and removed[name] + chunks[name][k] <= budget.max_ratio * by_name[name].size + 1e-9:
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
                f"target {budget.target:.3f} of prunable {budget.metric} is not reachable with align={budget.align}, "
                f"max_ratio={budget.max_ratio}: at most {reachable:.3f} can be removed while keeping every group non-empty"
            )
        _, name, k, n = heapq.heappop(heap)
        removed[name] += n
        done += n * by_name[name].cost_per_unit(budget.metric)
        push(heap, name, k + 1)
    return {name: sorted(order[name][r:]) for name, r in removed.items() if r > 0}


def achieved(groups: list[Group], keep: dict[str, list[int]]) -> dict[str, float | int]:
    """Fractions of the prunable params and MACs (of ``groups``) that a keep-map removes. A removed layer
    removes every unit of its width groups; layers count as prunable cost only in a depth-only plan."""
    width = [g for g in groups if g.kind != UnitKind.LAYERS]
    gone_blocks = tuple(
        f"{g.name}.{i}."
        for g in groups
        if g.kind == UnitKind.LAYERS and g.name in keep
        for i in sorted(set(range(g.size)) - set(keep[g.name]))
    )
    counted = width or groups
    out: dict[str, float | int] = {}
    for metric in ("params", "macs"):
        total = sum(g.size * g.cost_per_unit(metric) for g in counted)
        gone = 0
        for g in counted:
            left = (
                0 if width and g.name.startswith(gone_blocks) and gone_blocks else len(keep.get(g.name, range(g.size)))
            )
            gone += (g.size - left) * g.cost_per_unit(metric)
        out[f"prunable_{metric}"] = total
        out[f"{metric}_removed"] = gone / total if total else 0.0
    return out
