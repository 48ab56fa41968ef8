"""One global ranking: turn per-unit scores into kept indices that meet a cost budget, aligned.

`cut` is the one greedy: it removes aligned chunks of units, lowest score first, until what they save under a
`structure.costs` Cost reaches the target; `select` (pruning units) and lowrank's ranks both run it."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from vltrim.structure.costs import Cost, cost_of
from vltrim.structure.groups import Group, UnitKind

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

    @property
    def cost(self) -> Cost:
        """The exact cost ``metric`` names (`structure.costs.ParamsCost` or `MacsCost`)."""
        return cost_of(self.metric)


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


def ranked(
    groups: list[Group], scores: dict[str, torch.Tensor], budget: Budget, cost: Cost | None = None
) -> dict[str, torch.Tensor]:
    """Scores made comparable across groups as ``budget`` says (normalised, then per unit of cost when ranking
    'per_cost'), ready for `select`. With a ``cost`` other than the budget's exact metric (a measured table, not
    additive), 'per_cost' is left to `select` given the same ``cost``: it divides each chunk's score by its saving."""
    out = normalize_scores(groups, scores, budget.normalize, budget.metric)
    if budget.ranking == "per_cost" and _exact(budget, cost):
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


def reachable(groups: Sequence[Group], metric: str = "params", align: int = 8, max_ratio: float = MAX_RATIO) -> float:
    """The largest share of ``groups``' prunable ``metric`` a cut can remove: every group down to one aligned step,
    or to ``max_ratio`` of its units (what `cut` reaches when it runs out of chunks)."""
    cost = cost_of(metric)
    total = sum(cost.saved(g, g.size) for g in groups)
    done = 0
    for g in groups:
        removed = 0
        for c in removal_chunks(g.size, g.align_step(align)):
            if removed + c > max_ratio * g.size + 1e-9:
                break
            removed += c
        done += cost.saved(g, removed)
    return done / total if total else 0.0


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


def select(
    groups: list[Group], scores: dict[str, torch.Tensor], budget: Budget, cost: Cost | None = None
) -> dict[str, list[int]]:
    """Kept indices per group that meet ``budget``, cut where its ``allocation`` says (see Budget). ``cost`` (default:
    the exact cost of ``budget.metric``) is what the target is a share of, e.g. a measured `TableCost`."""
    if budget.allocation == "modality":
        keep: dict[str, list[int]] = {}
        for m in sorted({g.modality for g in groups}):
            keep.update(_cut([g for g in groups if g.modality == m], scores, budget, cost))
        return keep
    if budget.allocation == "uniform":
        scores = rank_quantiles(groups, scores)
    return _cut(groups, scores, budget, cost)


def _exact(budget: Budget, cost: Cost | None) -> bool:
    """Whether ``cost`` is the budget metric's exact, additive cost (scores per unit of it are `ranked`'s job)."""
    return cost is None or cost == budget.cost


def _cut(
    groups: list[Group], scores: dict[str, torch.Tensor], budget: Budget, cost: Cost | None = None
) -> dict[str, list[int]]:
    """Remove the lowest-scored aligned chunks across ``groups`` until the budget is met (`cut`).

    Units are ranked by score, a chunk by its units' mean score (with a measured ``cost`` and ranking 'per_cost':
    that score times its units over what the chunk saves); each chunk's cost is its exact params or MACs (or what
    ``cost`` says); no group loses more than ``max_ratio`` of its units. Stops at the first chunk that reaches the
    target, so the plan overshoots by less than one alignment step.
    """
    exact = _exact(budget, cost)
    cost = budget.cost if cost is None else cost
    per_saving = budget.ranking == "per_cost" and not exact
    order = {g.name: torch.argsort(scores[g.name].flatten(), stable=True).tolist() for g in groups}
    by_name = {g.name: g for g in groups}

    def score(name: str, start: int, n: int) -> float:
        idx = order[name][start : start + n]
        s = float(scores[name].flatten()[idx].mean())
        if per_saving:
            gain = cost.saved(by_name[name], start + n) - cost.saved(by_name[name], start)
            s = s * n / gain if gain > 0 else float("inf")
        return s

    label = budget.metric if exact else getattr(cost, "name", type(cost).__name__)
    removed = cut(
        groups,
        {g.name: removal_chunks(g.size, g.align_step(budget.align)) for g in groups},
        score,
        cost,
        budget.target,
        budget.max_ratio,
        lambda reached: (
            f"target {budget.target:.3f} of prunable {label} is not reachable with align={budget.align}, "
            f"max_ratio={budget.max_ratio}: at most {reached:.3f} can be removed while keeping every group non-empty"
        ),
    )
    return {name: sorted(order[name][r:]) for name, r in removed.items() if r > 0}


def cut(
    groups: Sequence[Any],
    chunks: Mapping[str, Sequence[int]],
    score: Callable[[str, int, int], float],
    cost: Cost,
    target: float,
    max_ratio: float = MAX_RATIO,
    unreachable: Callable[[float], str] | None = None,
) -> dict[str, int]:
    """The one greedy: how many units of each group (anything with ``name`` and ``size``: a `Group`, the
    `Directions` of a Linear) to remove so that ``cost`` saves at least ``target`` of its total
    (sum of ``cost.saved(g, g.size)``).

    Each group loses its units in the order ``score`` assumes, in the successive ``chunks`` of its name;
    ``score(name, removed_so_far, chunk)`` rates its next chunk, and the lowest-rated chunk of all groups goes next.
    Progress is counted as ``cost.saved`` after less before, so a cost need not be additive (a Linear saves nothing
    until its rank is below break-even; a latency table saves in steps). No group loses more than ``max_ratio`` of
    its units. Stops at the first chunk that reaches the target; raises ValueError (``unreachable(share reached)``)
    when every chunk is gone first. Returns units removed per group, in the order of ``groups``."""
    total = sum(cost.saved(g, g.size) for g in groups)
    need = target * total
    by_name = {g.name: g for g in groups}
    removed = {g.name: 0 for g in groups}
    heap: list = []

    def push(name: str, k: int) -> None:
        if k < len(chunks[name]) and removed[name] + chunks[name][k] <= max_ratio * by_name[name].size + 1e-9:
            heapq.heappush(heap, (score(name, removed[name], chunks[name][k]), name, k))

    for g in groups:
        push(g.name, 0)
    done = 0
    while done < need:
        if not heap:
            reached = done / total if total else 0.0
            raise ValueError(
                unreachable(reached) if unreachable else f"target {target:.3f} is not reachable: at most {reached:.3f}"
            )
        _, name, k = heapq.heappop(heap)
        g, before = by_name[name], removed[name]
        removed[name] += chunks[name][k]
        done += cost.saved(g, removed[name]) - cost.saved(g, before)
        push(name, k + 1)
    return removed


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
        cost = cost_of(metric)
        total = sum(cost.saved(g, g.size) for g in counted)
        gone = 0
        for g in counted:
            left = (
                0 if width and g.name.startswith(gone_blocks) and gone_blocks else len(keep.get(g.name, range(g.size)))
            )
            gone += cost.saved(g, g.size - left)
        out[f"prunable_{metric}"] = total
        out[f"{metric}_removed"] = gone / total if total else 0.0
    return out


#: how `modality_split` names a unit kind's share: heads and head dims are both the attention's width
SPLIT_KINDS = {UnitKind.HEADS: "attention", UnitKind.HEAD_DIMS: "attention", UnitKind.NEURONS: "ffn"}


def modality_split(before: list[Group], after: list[Group]) -> dict[str, dict[str, dict[str, float]]]:
    """Share of each modality's prunable params and MACs removed, in all ("removed") and per unit kind ("attention",
    "ffn"), from the width groups of a model ``before`` and ``after`` compression (removed layers count through the
    groups they take away). Attention is costed by its heads groups, by its head-dim groups where a model has none."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric in ("params", "macs"):
        cost = cost_of(metric)
        was, now = _split_costs(before, cost), _split_costs(after, cost)
        out[metric] = {}
        for modality in sorted({m for m, _ in was}):
            kinds = sorted(k for m, k in was if m == modality)
            total, left = sum(was[modality, k] for k in kinds), sum(now.get((modality, k), 0.0) for k in kinds)
            out[metric][modality] = {
                "removed": _share(left, total),
                **{k: _share(now.get((modality, k), 0.0), was[modality, k]) for k in kinds},
            }
    return out


def prunable_cost(groups: list[Group], metric: str = "params") -> float:
    """A model's prunable ``metric`` (params or MACs of its attention and FFN width, heads counted once): what a
    compressed model has left of it compares chains of plans (e.g. distill, then prune) with single plans."""
    return sum(_split_costs(groups, cost_of(metric)).values())


def _share(left: float, total: float) -> float:
    return round(1.0 - left / total, 6) if total else 0.0


def _split_costs(groups: list[Group], cost: Cost) -> dict[tuple[str, str], float]:
    """Cost of every (modality, "attention" | "ffn") over ``groups``, each weight counted once."""
    heads = {g.modality for g in groups if g.kind == UnitKind.HEADS}
    sums: dict[tuple[str, str], float] = {}
    for g in groups:
        if g.kind not in SPLIT_KINDS or (g.kind == UnitKind.HEAD_DIMS and g.modality in heads):
            continue
        key = (g.modality, SPLIT_KINDS[g.kind])
        sums[key] = sums.get(key, 0.0) + cost.saved(g, g.size)
    return sums
