"""One cost model: what removing ``n_removed`` units of a group saves, ``cost.saved(group, n_removed)``.

`select.cut` is one greedy over this function, so a cost need not be additive. `ParamsCost` and `MacsCost` are exact
from shapes: for a `Group` of prunable units, ``n_removed`` times its exact per-unit params or MACs; for the
`Directions` of a Linear (low-rank factorisation), what rank size - n_removed saves against the dense matrix (nothing
until the rank stores fewer weights than the dense matrix). `TableCost` is a measured table (e.g. latency per
device), one saved value per group and number of units removed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from vltrim.structure.factorize import saves_params
from vltrim.structure.groups import Directions

METRICS = ("params", "macs")  # the exact costs a Budget's metric names


@runtime_checkable
class Cost(Protocol):
    """What removing ``n_removed`` units (0..group.size) of ``group`` saves; 0 at n_removed = 0.

    ``saved(group, group.size)`` is the group's whole prunable cost (the total a budget's target is a share of).
    A ``name`` attribute, if any, names the cost in messages."""

    def saved(self, group: Any, n_removed: int) -> float: ...


def _directions_saved(group: Directions, n_removed: int, tokens: int) -> int:
    """Cost a Linear saves at rank size - n_removed: its dense cost less rank * (in+out), 0 if that rank does not save."""
    rank = group.size - n_removed
    if not saves_params(group.out, group.inp, rank):
        return 0
    return group.inp * group.out * tokens - rank * ((group.inp + group.out) * tokens)


@dataclass(frozen=True)
class ParamsCost:
    """Exact parameters saved: ``n_removed`` units times the group's ``params_per_unit``; for `Directions`, the
    dense weights less those of the rank left."""

    name: str = field(default="params", init=False)

    def saved(self, group: Any, n_removed: int) -> int:
        if isinstance(group, Directions):
            return _directions_saved(group, n_removed, 1)
        return n_removed * group.params_per_unit


@dataclass(frozen=True)
class MacsCost:
    """Exact MACs saved (batch 1, the adapter's reference input): ``n_removed`` units times the group's
    ``macs_per_unit``; for `Directions`, the params saved times the tower's reference tokens."""

    name: str = field(default="macs", init=False)

    def saved(self, group: Any, n_removed: int) -> int:
        if isinstance(group, Directions):
            return _directions_saved(group, n_removed, group.tokens)
        return n_removed * group.macs_per_unit


PARAMS, MACS = ParamsCost(), MacsCost()


def cost_of(metric: str) -> ParamsCost | MacsCost:
    """The exact cost a Budget's ``metric`` ('params' or 'macs') names."""
    if metric == "params":
        return PARAMS
    if metric == "macs":
        return MACS
    raise ValueError(f"unknown cost metric {metric!r}; use 'params' or 'macs'")


class TableCost:
    """A measured cost: ``table[group.name][n]`` is what removing ``n`` units of that group saves (a sequence indexed
    by n, or a mapping n -> value), e.g. latency from a table per device, dtype and input shape. Removing none saves 0;
    every other count the selection reaches must be in the table, including ``group.size`` (the group's whole
    prunable cost, which a budget's target is a share of)."""

    def __init__(self, table: Mapping[str, Sequence[float] | Mapping[int, float]], name: str = "latency") -> None:
        self.table = {str(k): v for k, v in table.items()}
        self.name = name

    def saved(self, group: Any, n_removed: int) -> float:
        if n_removed == 0:
            return 0.0
        row = self.table.get(group.name)
        if row is None:
            raise ValueError(f"{self.name} table has no row for group {group.name!r}")
        try:
            return float(row[n_removed])
        except (IndexError, KeyError):
            raise ValueError(
                f"{self.name} table has no value for {n_removed} units removed from group {group.name!r}"
            ) from None

    def __repr__(self) -> str:
        return f"TableCost({self.name!r}, {len(self.table)} groups)"
