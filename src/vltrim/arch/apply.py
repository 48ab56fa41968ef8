"""Applying a plan: the physically smaller model (apply_plan), the plans a model carries, and the masked
equivalent (masked); every family goes through its registered adapter."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from vltrim.arch.masks import attach, plan_masks
from vltrim.arch.registry import class_name, get_adapter
from vltrim.structure.factorize import FactorizedLinear
from vltrim.structure.groups import UnitKind
from vltrim.structure.plan import Plan, PlanError
from vltrim.structure.sparsify import TAG as SPARSE_TAG
from vltrim.structure.sparsify import sparsify_linear_

BASE_CONFIG_ATTR = "_vltrim_base_config"  # config of the model before any plan (to rebuild on load)
PLANS_ATTR = "_vltrim_plans"  # plans applied so far, in order


def plans_of(model: nn.Module) -> list[Plan]:
    """Plans applied to this model, oldest first (empty for an unpruned model)."""
    return list(getattr(model, PLANS_ATTR, []))


def base_config(model: nn.Module):
    """Config of the model before any plan was applied."""
    return getattr(model, BASE_CONFIG_ATTR, model.config)


def apply_plan(
    model: nn.Module, plan: Plan, inplace: bool = False, *, compute_factors: bool = True, zero_weights: bool = True
) -> nn.Module:
    """A physically smaller model of the same class computing what ``masked(model, plan)`` computes, with the
    plan's Linears factorised (rank-r truncated SVD, see structure/factorize.py).

    The plan is validated first, so a bad plan raises PlanError and leaves ``model`` untouched (with
    ``inplace=True`` and a plan that both slices and factorises, ranks are checked after the slicing).
    Width groups are sliced before layers are removed (group names use the current layer indices), then
    Linears are factorised (names and ranks refer to the sliced model). ``compute_factors=False`` builds
    factorised layers with uninitialised weights (``load`` fills them; no SVD). Last, the plan's sparsified Linears
    get their pattern's zeros (chosen from the weights, see structure/sparsify.py) and are tagged with it;
    ``zero_weights=False`` only tags them (``load``: the zeros come from the file, then the pattern is verified)."""
    adapter = get_adapter(model)
    groups = {g.name: g for g in adapter.groups(model)}
    _check_no_factorised_slices(adapter, model, plan)  # a group left out because it was factorised: said so
    plan.check_group_names(class_name(model), groups)  # a renamed or unknown group, named before anything reads it
    plan.validate(class_name(model), groups.values())
    out = model if inplace else copy.deepcopy(model)
    history, base = plans_of(model), copy.deepcopy(base_config(model))
    names = sorted(plan.keep, key=lambda n: groups[n].kind == UnitKind.LAYERS)
    for name in names:
        if len(plan.keep[name]) < groups[name].size:
            adapter.slice(out, groups[name], plan.keep[name])
    _factorize_(adapter, out, plan, compute_factors)
    _sparsify_(adapter, out, plan, zero_weights)
    setattr(out, BASE_CONFIG_ATTR, base)
    setattr(out, PLANS_ATTR, history + [plan])
    return out


def _linears_of(adapter, model: nn.Module, name: Any) -> list[str]:
    """The Linears group ``name`` slices; none for a name the model does not have (`Plan.check_group_names` says so)."""
    try:
        return adapter.group_linears(model, name)
    except (KeyError, ValueError, AttributeError, IndexError):
        return []


def _check_no_factorised_slices(adapter, model: nn.Module, plan: Plan) -> None:
    """PlanError if the plan slices a group whose Linear an earlier plan factorised or sparsified (a factorised
    layer has no rows or columns to keep; slicing a sparse one breaks its recorded pattern), or factorises a
    sparsified Linear: in a chain, put keep steps first, then factorize, then sparsify."""
    lins = adapter.linears(model)
    done = {n for n, m in lins.items() if isinstance(m, FactorizedLinear)}
    sparse = {n for n, m in lins.items() if getattr(m, SPARSE_TAG, None)}
    for name in sorted(plan.keep) if isinstance(plan.keep, dict) else ():
        for n in _linears_of(adapter, model, name):
            if n in done or n in sparse:
                what, step = ("factorised", "factorize") if n in done else ("sparsified", "sparsify")
                raise PlanError(
                    f"plan slices {name!r}, but {n!r} was {what} by an earlier plan and cannot be "
                    f"sliced; in a chain, apply keep plans before {step} plans"
                )
    hit = sorted(set(plan.factorize) & sparse)
    if hit:
        raise PlanError(
            f"plan factorises {hit[0]!r}, which an earlier plan sparsified (its zeros would be lost); "
            "in a chain, apply factorize plans before sparsify plans"
        )


def _dense_linears(adapter, model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, tuple[int, int]], set[str]]:
    """Every block Linear by name, the (out, in) shapes of the dense ones, and the names already factorised."""
    lins = adapter.linears(model)
    shapes = {n: (m.out_features, m.in_features) for n, m in lins.items() if not isinstance(m, FactorizedLinear)}
    return lins, shapes, set(lins) - set(shapes)


def _factorize_(adapter, model: nn.Module, plan: Plan, compute: bool) -> None:
    """Validate the plan's ranks against ``model`` as it is now, then factorise each Linear (in place)."""
    if not plan.factorize:
        return
    _, shapes, factorised = _dense_linears(adapter, model)
    plan.validate_factors(shapes, factorised)
    for name in sorted(plan.factorize):
        adapter.factorize(model, name, plan.factorize[name], plan.factor_scales.get(name), compute)


def _sparsify_(adapter, model: nn.Module, plan: Plan, zero: bool) -> None:
    """Validate the plan's sparsity entries against ``model`` as it is now, then zero (or only tag) each Linear."""
    if not plan.sparsify:
        return
    lins, shapes, factorised = _dense_linears(adapter, model)
    plan.validate_sparsity(shapes, factorised)
    for name in sorted(plan.sparsify):
        e = plan.sparsify[name]
        sparsify_linear_(lins[name], e["pattern"], e["sparsity"], zero, name)


@contextmanager
def masked(model: nn.Module, plan_or_values) -> Iterator[nn.Module]:
    """``with masked(model, plan):`` the model computes the pruned function; hooks removed on exit."""
    adapter = get_adapter(model)
    if isinstance(plan_or_values, Plan) and plan_or_values.factorize:
        raise PlanError("a plan that factorises Linears has no mask equivalent; use apply_plan")
    if isinstance(plan_or_values, Plan) and plan_or_values.sparsify:
        raise PlanError("a plan that sparsifies Linears has no group-mask equivalent; use apply_plan")
    if isinstance(plan_or_values, Plan):
        plan_or_values.validate(class_name(model), adapter.groups(model))
        values = plan_masks(plan_or_values)
    else:
        values = plan_or_values
    handles = attach(adapter, model, values)
    try:
        yield model
    finally:
        handles.remove()
