"""Per-unit costs are exact: removing units changes counted params and flop-counter MACs by exactly their cost.
One cost model (`structure.costs`): params / MACs as `saved(group, n_removed)` give today's per-unit numbers, a
low-rank Linear's directions are priced through the same interface, a measured table steers the one greedy
(`select.cut`), and lowrank's ranks through that greedy are those of its former loop."""

from __future__ import annotations

import heapq
import itertools

import pytest
import torch
from torch import nn

import vltrim
from vltrim.arch import get_adapter
from vltrim.methods.lowrank import Layer, energy_shares, global_ranks
from vltrim.structure.costs import MACS, PARAMS, Cost, MacsCost, ParamsCost, TableCost, cost_of
from vltrim.structure.factorize import saves_params
from vltrim.structure.groups import Directions, Group, UnitKind
from vltrim.structure.select import Budget, cut, ranked, removal_chunks, select
from vltrim.zoo import tiny_model


def test_unit_costs_match_counted(model):
    adapter = get_adapter(model)
    p0 = vltrim.count_params(model)
    m0 = vltrim.count_macs(model, adapter.reference_inputs(model))
    for kind in (UnitKind.HEADS, UnitKind.HEAD_DIMS, UnitKind.NEURONS, UnitKind.LAYERS):
        g = next((g for g in adapter.groups(model) if g.kind == kind), None)
        if g is None:  # a family may keep its depth (a segmenter's neck reads layers by index): no layers group
            continue
        # a layer's cost is the tower's mean layer (ModernBERT's first layer has no attention norm): remove each
        removed = range(g.size) if kind == UnitKind.LAYERS else [g.size - 1]
        saved = []
        for r in removed:
            plan = vltrim.Plan.from_keep(type(model).__name__, [g], {g.name: [u for u in range(g.size) if u != r]})
            small = vltrim.apply_plan(model, plan)
            saved.append(
                (p0 - vltrim.count_params(small), m0 - vltrim.count_macs(small, adapter.reference_inputs(small)))
            )
        assert round(sum(p for p, _ in saved) / len(saved)) == g.params_per_unit, g.name
        assert round(sum(m for _, m in saved) / len(saved)) == g.macs_per_unit, g.name


def test_groups_cover_every_encoder(model):
    groups = vltrim.inspect(model)
    towers = get_adapter(model).towers(model)
    blocks = [t.block(layer) for t in towers for layer in t.layers]
    sites = sum(len(b.sites) for b in blocks)
    for kind, n in (("heads", sites), ("head_dims", sites), ("neurons", len(blocks))):
        assert sum(g.kind.value == kind for g in groups) == n
    site_modalities = {a.modality for b in blocks for a in b.sites} - {None}
    assert {g.modality for g in groups} == {t.modality for t in towers} | site_modalities


# ---- one cost model ----------------------------------------------------------------------------------
def test_params_and_macs_costs_are_the_per_unit_costs():
    """saved(group, n) is exactly n * the group's per-unit cost (ints, every unit kind, every n)."""
    model = tiny_model("CLIPModel")
    groups = vltrim.inspect(model)
    assert {g.kind for g in groups} == set(UnitKind)
    for g in groups:
        for n in range(g.size + 1):
            p, m = PARAMS.saved(g, n), MACS.saved(g, n)
            assert type(p) is int and p == n * g.cost_per_unit("params"), (g.name, n)
            assert type(m) is int and m == n * g.cost_per_unit("macs"), (g.name, n)
    assert isinstance(PARAMS, Cost) and isinstance(TableCost({}), Cost)
    assert cost_of("params") == ParamsCost() and cost_of("macs") == MacsCost()
    assert Budget(0.5).cost is PARAMS and Budget(0.5, "macs").cost is MACS
    with pytest.raises(ValueError, match="unknown cost metric"):
        cost_of("latency")


def test_low_rank_directions_save_only_below_break_even():
    """A Linear (out, in) at rank r saves out*in - r*(out+in) params (times tokens for MACs), 0 until that is > 0."""
    d = Directions("text.layers.0.mlp.fc1", out=64, inp=32, tokens=7)
    assert d.size == 32
    for n in range(d.size + 1):
        r = d.size - n
        want = 64 * 32 - r * 96 if saves_params(64, 32, r) else 0
        assert PARAMS.saved(d, n) == want and MACS.saved(d, n) == want * 7
    gains = [PARAMS.saved(d, n + 1) - PARAMS.saved(d, n) for n in range(d.size)]
    assert gains == [0] * 10 + [32] + [96] * 21  # not additive: nothing until rank 21 (saves 32), then in+out each


def _groups(*names: str, size: int = 16, params: int = 10) -> list[Group]:
    return [Group(n, UnitKind.NEURONS, "text", size, params, 100 * params) for n in names]


def test_table_cost_drives_select_to_the_table_optimal_choice():
    """Equal params per unit, so 'per_cost' by params cuts the lowest scores; by a latency table where only C's
    chunk saves much, the greedy cuts C: the cheapest removal (least score) that reaches the table's target."""
    groups = _groups("a", "b", "c")
    scores = {"a": torch.full((16,), 1.0), "b": torch.full((16,), 2.0), "c": torch.full((16,), 3.0)}
    table = TableCost({"a": {8: 1.0, 16: 2.0}, "b": {8: 1.0, 16: 2.0}, "c": {8: 10.0, 16: 20.0}}, name="latency")
    b = Budget(1 / 3, "params", 8, "global", normalize="none", ranking="per_cost")

    by_params = select(groups, ranked(groups, scores, b), b)
    assert sorted(by_params) == ["a", "b"]  # 2 chunks of 8 units * 10 params = 160 = 1/3 of 480
    by_table = select(groups, ranked(groups, scores, b, table), b, table)
    assert by_table == {"c": list(range(8, 16))}

    # brute force: each group loses 0 or 8 units; the least total score that saves 1/3 of the table's total
    need = b.target * sum(table.saved(g, g.size) for g in groups)
    best = min(
        (sum(float(scores[g.name][:8].sum()) for g, x in zip(groups, cut_) if x), cut_)
        for cut_ in itertools.product((0, 1), repeat=3)
        if sum(table.saved(g, 8 * x) for g, x in zip(groups, cut_)) >= need
    )[1]
    assert {g.name for g, x in zip(groups, best) if x} == set(by_table)

    # ranking by score: the table only moves the stop (a's chunk saves 1 of 8 needed, so b's and c's go too)
    bs = Budget(1 / 3, "params", 8, "global", normalize="none", ranking="score")
    assert sorted(select(groups, scores, bs, table)) == ["a", "b", "c"]
    assert sorted(select(groups, scores, bs)) == ["a", "b"]


def test_table_cost_errors_name_the_table():
    groups = _groups("a", "b")
    scores = {g.name: torch.zeros(g.size) for g in groups}
    table = TableCost({"a": [0.0] + [1.0] * 16, "b": [0.0] * 8 + [1.0] * 8 + [5.0]}, name="latency")
    with pytest.raises(ValueError, match="of prunable latency is not reachable"):
        select(groups, scores, Budget(0.9, "params", 8), table)
    with pytest.raises(ValueError, match="no row for group 'c'"):
        table.saved(_groups("c")[0], 1)
    with pytest.raises(ValueError, match="no value for 20 units"):
        table.saved(groups[0], 20)


def test_one_greedy_takes_any_cost():
    """`cut` on a hand-made step cost (saves only at each 8th unit): progress is saved after less saved before."""

    class Steps:
        name = "steps"

        def saved(self, group, n_removed):
            return 10 * (n_removed // 8)

    groups = _groups("a", "b", size=24)  # total 60, need 30: three steps of 8 units
    removed = cut(groups, {"a": [4] * 5, "b": [4] * 5}, lambda name, start, n: start + (name == "b"), Steps(), 0.5)
    assert removed == {"a": 16, "b": 12}  # a 4, b 4, a 8 (10), b 8 (20), a 12, b 12, a 16 (30)
    with pytest.raises(ValueError, match="at most 0.667"):
        cut(groups, {"a": [4] * 5, "b": [4] * 5}, lambda name, start, n: start, Steps(), 0.9)


# ---- lowrank's ranks through the one greedy are those of its former loop -----------------------------
def _former_global_ranks(layers: list[Layer], budget: Budget) -> dict[str, int]:
    """lowrank's own greedy as it was before the one cost model (the reference the shared greedy must match)."""
    metric, total = budget.metric, sum(ly.dense(budget.metric) for ly in layers)
    need, done = budget.target * total, 0
    chunks = {ly.name: removal_chunks(min(ly.out, ly.inp), budget.align) for ly in layers}
    by_name = {ly.name: ly for ly in layers}
    removed = dict.fromkeys(by_name, 0)
    heap: list = []

    def saved(ly: Layer, rank: int) -> int:
        return ly.dense(metric) - rank * ly.cost(metric) if saves_params(ly.out, ly.inp, rank) else 0

    def push(name: str, k: int) -> None:
        if k < len(chunks[name]):
            ly, end = by_name[name], min(by_name[name].out, by_name[name].inp) - removed[name]
            heapq.heappush(heap, (float(ly.energy[end - chunks[name][k] : end].mean()) / ly.cost(metric), name, k))

    for name in by_name:
        push(name, 0)
    while done < need:
        if not heap:
            raise ValueError("unreachable")
        _, name, k = heapq.heappop(heap)
        ly = by_name[name]
        before = saved(ly, min(ly.out, ly.inp) - removed[name])
        removed[name] += chunks[name][k]
        done += saved(ly, min(ly.out, ly.inp) - removed[name]) - before
        push(name, k + 1)
    ranks = {n: min(by_name[n].out, by_name[n].inp) - r for n, r in removed.items() if r}
    return {n: r for n, r in ranks.items() if saved(by_name[n], r) > 0}


@pytest.mark.parametrize("name", ["CLIPModel", "BertModel"])
def test_lowrank_ranks_match_its_former_greedy(name):
    model = tiny_model(name)
    adapter = get_adapter(model)
    tokens = {t.name: t.tokens for t in adapter.towers(model)}
    lins = {n: m for n, m in adapter.linears(model).items() if isinstance(m, nn.Linear)}
    layers = [
        Layer(n, m.out_features, m.in_features, tokens[n.split(".layers.")[0]], energy_shares(m.weight, None))
        for n, m in lins.items()
    ]
    for metric, align, target in itertools.product(("params", "macs"), (1, 4, 8), (0.05, 0.2, 0.5, 0.8)):
        budget = Budget(target, metric, align)
        try:
            want = _former_global_ranks(layers, budget)
        except ValueError:
            with pytest.raises(ValueError, match="not reachable"):
                global_ranks(layers, budget)
            continue
        assert global_ranks(layers, budget) == want, (metric, align, target)
        if (metric, align) == ("params", 8):
            assert vltrim.plan(model, method="lowrank", target=target, align=align).factorize == want
