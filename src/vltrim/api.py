"""Public entry points: inspect a model, make a plan, apply it."""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .adapters import get_adapter
from .structure.groups import Group, UnitKind
from .structure.plan import Plan

BASE_CONFIG_ATTR = "_vltrim_base_config"  # config of the model before any plan (to rebuild on load)
PLANS_ATTR = "_vltrim_plans"  # plans applied so far, in order


def inspect(model: nn.Module) -> list[Group]:
    """Prunable groups of ``model``: name, kind, modality, size and exact per-unit costs."""
    return get_adapter(model).groups(model)


def plan(model: nn.Module, method: str = "l1", target: float = 0.5, **settings: Any) -> Plan:
    """Run a search method and return its Plan (the model is not changed)."""
    from .checks import number, text, usable_model
    from .methods import get_method

    usable_model(model)
    m = get_method(text("method", method))
    target = number("target", target, high=1.0)
    try:
        return m.search(model, target=target, **settings)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise TypeError(f"method {method!r} got an unknown setting: {e}") from None
        raise


def plans_of(model: nn.Module) -> list[Plan]:
    """Plans applied to this model, oldest first (empty for an unpruned model)."""
    return list(getattr(model, PLANS_ATTR, []))


def base_config(model: nn.Module):
    """Config of the model before any plan was applied."""
    return getattr(model, BASE_CONFIG_ATTR, model.config)


def apply_plan(model: nn.Module, plan: Plan, inplace: bool = False) -> nn.Module:
    """A physically smaller model of the same class computing what ``masked(model, plan)`` computes.

    The plan is validated first, so a bad plan raises PlanError and leaves ``model`` untouched.
    Width groups are sliced before layers are removed (group names use the current layer indices)."""
    adapter = get_adapter(model)
    groups = {g.name: g for g in adapter.groups(model)}
    plan.validate(type(model).__name__, groups.values())
    out = model if inplace else copy.deepcopy(model)
    history, base = plans_of(model), copy.deepcopy(base_config(model))
    names = sorted(plan.keep, key=lambda n: groups[n].kind == UnitKind.LAYERS)
    for name in names:
        if len(plan.keep[name]) < groups[name].size:
            adapter.slice(out, groups[name], plan.keep[name])
    setattr(out, BASE_CONFIG_ATTR, base)
    setattr(out, PLANS_ATTR, history + [plan])
    return out
