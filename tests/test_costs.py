"""Per-unit costs are exact: removing units changes counted params and flop-counter MACs by exactly their cost."""

from __future__ import annotations

import vltrim
from vltrim.adapters import get_adapter
from vltrim.structure.groups import UnitKind


def test_unit_costs_match_counted(model):
    adapter = get_adapter(model)
    p0 = vltrim.count_params(model)
    m0 = vltrim.count_macs(model, adapter.reference_inputs(model))
    for kind in (UnitKind.HEADS, UnitKind.HEAD_DIMS, UnitKind.NEURONS, UnitKind.LAYERS):
        g = next(g for g in adapter.groups(model) if g.kind == kind)
        plan = vltrim.Plan.from_keep(type(model).__name__, [g], {g.name: list(range(g.size - 1))})
        small = vltrim.apply_plan(model, plan)
        assert p0 - vltrim.count_params(small) == g.params_per_unit, g.name
        assert m0 - vltrim.count_macs(small, adapter.reference_inputs(small)) == g.macs_per_unit, g.name


def test_groups_cover_every_encoder(model):
    groups = vltrim.inspect(model)
    towers = get_adapter(model).towers(model)
    layers = sum(len(t.layers) for t in towers)
    for kind in ("heads", "head_dims", "neurons"):
        assert sum(g.kind.value == kind for g in groups) == layers
    assert {g.modality for g in groups} == {t.modality for t in towers}
