"""Shared by score-based methods: pick the groups to prune, rank units globally, build the Plan."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vltrim.arch import class_name, get_adapter
from vltrim.arch.apply import apply_plan
from vltrim.data.calibration import check_batch_values, class_count, text_vocab_rows
from vltrim.measure import count_macs, count_params
from vltrim.structure.groups import Group, UnitKind
from vltrim.structure.plan import Plan
from vltrim.structure.select import Budget, achieved, ranked, select
from vltrim.train.loop import batch_indices, batches

DEFAULT_UNITS = ("head_dims", "neurons")
# how taylor and upop compare units across groups (see Budget): Taylor scores per parameter removed, one scale per
# tower (chosen against Torch-Pruning's global Taylor on three real-weights models: docs/ranking.md)
TAYLOR_NORMALIZE, TAYLOR_RANKING = "modality", "per_cost"


def parse_units(units: str | Iterable[str]) -> tuple[UnitKind, ...]:
    """'head_dims,neurons' or ['heads', 'neurons'] -> unit kinds; heads and head_dims are exclusive."""
    names = [u.strip() for u in (units.split(",") if isinstance(units, str) else units) if u.strip()]
    try:
        kinds = tuple(UnitKind(u) for u in names)
    except ValueError:
        raise ValueError(f"units: unknown unit in {names}; choose from heads, head_dims, neurons") from None
    if UnitKind.LAYERS in kinds:
        raise ValueError("width methods prune heads, head_dims or neurons; whole layers are a depth method's unit")
    if UnitKind.HEADS in kinds and UnitKind.HEAD_DIMS in kinds:
        raise ValueError("choose heads or head_dims for attention, not both")
    if not kinds:
        raise ValueError("no unit kind given")
    return kinds


def prunable_groups(
    model: nn.Module, units: str | Iterable[str], modalities: Iterable[str] | None = None
) -> list[Group]:
    kinds = parse_units(units)
    groups = [g for g in get_adapter(model).groups(model) if g.kind in kinds]
    if modalities is not None:
        groups = [g for g in groups if g.modality in set(modalities)]
    if not groups:
        raise ValueError(f"{type(model).__name__} has no prunable groups of kinds {[k.value for k in kinds]}")
    return groups


def coupled_parameters(model: nn.Module, group: Group) -> list[tuple[torch.Tensor, int]]:
    """Every parameter a unit of ``group`` owns, with the dimension its units lie along: q, k, v (or qkv) rows and
    biases and out-projection columns (heads, head_dims), or fc1 (and gate) rows and bias and fc2 columns (neurons)."""
    return [(t, d) for t, d, _ in coupled_rows(model, group)]


def coupled_rows(model: nn.Module, group: Group) -> list[tuple[torch.Tensor, int, list[tuple[str, int]]]]:
    """`coupled_parameters` with, for each, its consecutive sections along the unit dimension as (space, length):
    'q' rows follow the query heads, 'kv' rows the key/value heads (the same space without GQA), 'ffn' the neurons."""
    adapter = get_adapter(model)
    if group.kind == UnitKind.NEURONS:
        _, _, b = adapter.locate(model, group.name)
        ins = [(lin.weight, 0, n) for lin, n in b.ffn_inputs().values()]
        ins += [(lin.bias, 0, n) for lin, n in b.ffn_inputs().values()]
        return [(t, d, [("ffn", b.neurons)] * n) for t, d, n in [*ins, (b.fc2.weight, 1, 1)] if t is not None]
    if group.kind not in (UnitKind.HEADS, UnitKind.HEAD_DIMS):
        raise ValueError(f"{group.name}: per-weight importance covers heads, head_dims and neurons, not {group.kind}")
    a = adapter.site(model, group.name)
    q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    kv_space = "q" if a.q_per_kv == 1 else "kv"
    if a.qkv is not None:
        ins = [(a.qkv, [("q", q), (kv_space, kv), (kv_space, kv)])]
    else:
        ins = [(a.q, [("q", q)]), (a.k, [(kv_space, kv)]), (a.v, [(kv_space, kv)])]
    parts = [(lin.weight, 0, sec) for lin, sec in ins] + [(lin.bias, 0, sec) for lin, sec in ins]
    return [(t, d, sec) for t, d, sec in parts + [(a.o.weight, 1, [("q", q)])] if t is not None]


def unit_sums(model: nn.Module, group: Group, value: Callable[[torch.Tensor], torch.Tensor | None]) -> torch.Tensor:
    """Sum of ``value(param)`` over every weight each unit of ``group`` owns (a group-level importance,
    as Torch-Pruning's group reduction computes it); parameters whose value is None are left out."""
    per_space: dict[str, torch.Tensor] = {}
    for t, dim, sections in coupled_rows(model, group):
        v = value(t)
        if v is None:
            continue
        v = v.detach().double()
        rows = v.movedim(dim, 0).reshape(v.shape[dim], -1).sum(1)
        for (space, _), part in zip(sections, rows.split([n for _, n in sections])):
            per_space[space] = part if space not in per_space else per_space[space] + part
    if group.kind == UnitKind.NEURONS:
        return per_space["ffn"]
    a, total = get_adapter(model).site(model, group.name), None
    for rows in per_space.values():
        u = rows.view(group.size, -1).sum(1) if group.kind == UnitKind.HEADS else rows.view(-1, a.head_dim).sum(0)
        total = u if total is None else total + u
    return total if group.kind == UnitKind.HEADS else total.view(-1, a.dim_units).sum(0)  # channels -> units


def checked_batches(
    data: Any, batch_size: int, seed: int, model: nn.Module, option: str = "calib_data"
) -> Iterator[dict[str, Any]]:
    """`vltrim.train.loop.batches` of calibration ``data``, each batch checked as it is drawn (token ids inside
    ``model``'s vocabulary, labels inside its classes, finite values: `vltrim.data.calibration`), the error naming
    the item's index in ``data``."""
    rows, classes = text_vocab_rows(model), class_count(model)
    for i, b in enumerate(batches(data, batch_size, seed)):
        check_batch_values(b, option, batch_indices(len(data), batch_size, seed, i), rows, classes)
        yield b


@contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Random draws inside (dropout of a calibration pass in train mode) come from ``seed`` and the global RNG state
    is restored after: a method's scores depend on its seed, not on what ran before it in the process."""
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def weight_taylor(p: torch.Tensor) -> torch.Tensor:
    """|w * dL/dw| of one parameter (zeros where it has no gradient): the per-weight first-order Taylor term."""
    return (p * p.grad).abs() if p.grad is not None else torch.zeros_like(p)


def plan_from_scores(
    model: nn.Module,
    groups: list[Group],
    scores: dict[str, torch.Tensor],
    budget: Budget,
    method: str,
    settings: dict[str, Any],
) -> Plan:
    """Rank all units of ``groups`` by their scores made comparable as ``budget`` says, cut to ``budget``; record
    target and achievement."""
    return plan_from_keep(
        model, groups, select(groups, ranked(groups, scores, budget), budget), budget, method, settings
    )


def plan_from_keep(
    model: nn.Module,
    groups: list[Group],
    keep: dict[str, list[int]],
    budget: Budget | dict[str, Any],
    method: str,
    settings: dict[str, Any],
) -> Plan:
    """A Plan for ``keep`` that records the target (a Budget, or a dict when the plan was asked for otherwise, e.g.
    a student's layer counts) and what it achieves (fractions and whole-model counts)."""
    got = achieved(groups, keep)
    adapter = get_adapter(model)
    ref = adapter.reference_inputs(model, 1)
    params, macs = count_params(model), count_macs(model, ref)
    got.update(
        model_params_before=params,
        model_params_after=params - round(got["params_removed"] * got["prunable_params"]),
        model_macs_before=macs,
        model_macs_after=macs - round(got["macs_removed"] * got["prunable_macs"]),
    )
    target = budget if isinstance(budget, dict) else budget.to_dict()
    plan = Plan.from_keep(
        class_name(model), groups, keep, method=method, settings=settings, target=target, achieved=got
    )
    if any(
        g.kind == UnitKind.LAYERS and g.name in keep for g in groups
    ):  # a dropped block also takes its norms and biases
        small = apply_plan(model, plan)
        plan.achieved.update(
            model_params_after=count_params(small),
            model_macs_after=count_macs(small, adapter.reference_inputs(small, 1)),
        )
    return plan


def mean_over_ranks(g: torch.Tensor) -> torch.Tensor:
    """``g`` averaged over processes (a search's own gradients, which DDP does not average), so every rank ranks the
    same saliency and reaches the same plan."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        g = g.clone()
        torch.distributed.all_reduce(g)
        g /= torch.distributed.get_world_size()
    return g
