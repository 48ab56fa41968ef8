"""Shared by score-based methods: pick the groups to prune, rank units globally, build the Plan."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..adapters import get_adapter
from ..measure import count_macs, count_params
from ..structure.groups import Group, UnitKind
from ..structure.plan import Plan
from ..structure.select import Budget, achieved, normalize_by_kind, select

DEFAULT_UNITS = ("head_dims", "neurons")


def parse_units(units: str | Iterable[str]) -> tuple[UnitKind, ...]:
    """'head_dims,neurons' or ['heads', 'neurons'] -> unit kinds; heads and head_dims are exclusive."""
    names = [u.strip() for u in (units.split(",") if isinstance(units, str) else units) if u.strip()]
    try:
        kinds = tuple(UnitKind(u) for u in names)
    except ValueError:
        raise ValueError(f"unknown unit in {names}; choose from heads, head_dims, neurons") from None
    if UnitKind.LAYERS in kinds:
        raise ValueError("width methods prune heads, head_dims or neurons; whole layers are a depth method's unit")
    if UnitKind.HEADS in kinds and UnitKind.HEAD_DIMS in kinds:
        raise ValueError("choose heads or head_dims for attention, not both")
    if not kinds:
        raise ValueError("no unit kind given")
    return kinds


def prunable_groups(model: nn.Module, units: str | Iterable[str], modalities: Iterable[str] | None = None) -> list[Group]:
    kinds = parse_units(units)
    groups = [g for g in get_adapter(model).groups(model) if g.kind in kinds]
    if modalities is not None:
        groups = [g for g in groups if g.modality in set(modalities)]
    if not groups:
        raise ValueError(f"{type(model).__name__} has no prunable groups of kinds {[k.value for k in kinds]}")
    return groups


def plan_from_scores(
    model: nn.Module, groups: list[Group], scores: dict[str, torch.Tensor], budget: Budget, method: str, settings: dict[str, Any]
) -> Plan:
    """Rank all units of ``groups`` by normalised score, cut to ``budget``; record target and achievement."""
    return plan_from_keep(model, groups, select(groups, normalize_by_kind(groups, scores), budget), budget, method, settings)


def plan_from_keep(
    model: nn.Module, groups: list[Group], keep: dict[str, list[int]], budget: Budget, method: str, settings: dict[str, Any]
) -> Plan:
    """A Plan for ``keep`` that records the target and what it achieves (fractions and whole-model counts)."""
    got = achieved(groups, keep)
    adapter = get_adapter(model)
    params, macs = count_params(model), count_macs(model, adapter.reference_inputs(model, 1))
    got.update(
        model_params_before=params,
        model_params_after=params - round(got["params_removed"] * got["prunable_params"]),
        model_macs_before=macs,
        model_macs_after=macs - round(got["macs_removed"] * got["prunable_macs"]),
    )
    return Plan.from_keep(
        type(model).__name__, groups, keep, method=method, settings=settings, target=budget.to_dict(), achieved=got
    )
