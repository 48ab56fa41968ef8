"""The method contract: every registered method is a `Method` with a typed Config and a Descriptor that agree with
its search (the runner reads only those), keeps no state between searches, and a new method is one class plus its
registration: the runner, chains, study and `vltrim.plan` then take it with no other change."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import pytest
import torch

import vltrim
from vltrim.data import SyntheticCaptions
from vltrim.methods import _METHODS, BUDGET_OPTIONS, Descriptor, Method, MethodConfig, get_method, register
from vltrim.methods.common import DEFAULT_UNITS, plan_from_scores, prunable_groups
from vltrim.methods.registry import RUNTIME_INPUTS
from vltrim.structure.select import ALLOCATION, MAX_RATIO, Budget, select
from vltrim.zoo import tiny_model


def _entry(m: Method):
    """The function the runner calls: ``run`` for a method that trains while it searches, else ``search_result``
    when the method defines its own, else ``search``."""
    if m.descriptor.trains:
        return m.run
    own = type(m).search_result is not Method.search_result
    return m.search_result if own else m.search


@pytest.mark.parametrize("name", sorted(_METHODS))
def test_config_and_descriptor_match_the_search(name):
    m = get_method(name)
    assert isinstance(m, Method) and dataclasses.is_dataclass(m.Config) and issubclass(m.Config, MethodConfig)
    assert isinstance(m.descriptor, Descriptor)
    params = {
        k: p
        for k, p in inspect.signature(_entry(m)).parameters.items()
        if k not in ("model", "target") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    declared = set(m.Config.names()) | set(m.descriptor.runtime)
    assert set(params) == declared, name
    for k, default in m.Config.defaults().items():
        assert params[k].default == default, (name, k)
    assert set(m.Config.budget()) <= set(BUDGET_OPTIONS) and set(m.descriptor.runtime) <= set(RUNTIME_INPUTS)
    assert (m.descriptor.calib_option is not None) == (m.descriptor.data == "required"), name


def test_registered_methods_keep_no_state_between_searches():
    model = tiny_model("CLIPModel")
    data = SyntheticCaptions("val", 24)
    for name in sorted(_METHODS):
        m = get_method(name)
        before = dict(vars(m))
        if m.descriptor.data != "none" or m.descriptor.trains:
            continue  # searched in their own tests; what matters is that the registry holds instances without fields
        m.search(model, 0.3)
        assert vars(m) == before == {}, name
    mope = get_method("mope")
    found = mope.search_result(model, 0.3, data=data, task="retrieval", group_size=16)
    assert found.artifacts["scores_table"] and vars(mope) == {}


# ---- a new method is one class and its registration line ---------------------------------------------------
@dataclass(frozen=True)
class _ReverseConfig(MethodConfig):
    metric: str = "params"
    align: int = 8
    units: str | tuple[str, ...] = DEFAULT_UNITS
    allocation: str = ALLOCATION
    max_ratio: float = MAX_RATIO


class _ReverseIndex(Method):
    """Scores each unit by its index (keeps the first units): a method that needs nothing but its Config."""

    name = "test-reverse-index"
    Config = _ReverseConfig
    descriptor = Descriptor(runtime=("seed",))

    def search(self, model, target, metric="params", align=8, units=DEFAULT_UNITS, allocation=ALLOCATION,
               max_ratio=MAX_RATIO, seed=0):  # fmt: skip
        groups = prunable_groups(model, units)
        scores = {g.name: -torch.arange(g.size, dtype=torch.float64) for g in groups}
        budget = Budget(target, metric, align, allocation, max_ratio)
        return plan_from_scores(model, groups, scores, budget, self.name, {"seed": seed})


@pytest.fixture
def reverse_method():
    register(_ReverseIndex)
    yield get_method(_ReverseIndex.name)
    del _METHODS[_ReverseIndex.name]


def test_a_new_method_runs_through_plan_compress_and_chains(reverse_method):
    test_config_and_descriptor_match_the_search(_ReverseIndex.name)
    model = tiny_model("CLIPModel")
    plan = vltrim.plan(model, method=_ReverseIndex.name, target=0.5)
    assert plan.method == _ReverseIndex.name and all(k == list(range(len(k))) for k in plan.keep.values())
    data = SyntheticCaptions("train", 32)
    res = vltrim.compress(model, method=_ReverseIndex.name, target=0.5, train_data=data, retrain_steps=0)
    assert res.plan.keep == plan.keep
    chained = vltrim.compress(
        model, method=[_ReverseIndex.name, ("l1", {"target": 0.3})], train_data=data, retrain_steps=0
    )
    assert [p.method for p in chained.plans] == [_ReverseIndex.name, "l1"]
    with pytest.raises(ValueError, match="not settings of test-reverse-index"):
        vltrim.compress(model, method=_ReverseIndex.name, train_data=data, retrain_steps=0, method_settings={"x": 1})


def test_register_takes_only_methods():
    with pytest.raises(TypeError, match="Method subclass"):
        register(type("NotAMethod", (), {"name": "x"}))


@pytest.mark.parametrize("name", ["l1", "taylor", "random", "heads", "mope"])
def test_reach_is_the_target_the_greedy_can_just_meet(name):
    """A method says what it can reach on a model: a target just under it plans, one just over it is refused."""
    model = tiny_model("CLIPModel")
    m = get_method(name)
    top = m.reach(model, align=8)
    assert 0 < top < 1
    groups = prunable_groups(model, m.Config().units)
    budget = Budget(min(0.999, top + 0.01), align=8)
    with pytest.raises(ValueError, match="not reachable"):
        select(groups, {g.name: torch.rand(g.size) for g in groups}, budget)
    keep = select(groups, {g.name: torch.rand(g.size) for g in groups}, Budget(top - 1e-6, align=8))
    assert keep


def test_reach_is_none_where_the_target_means_something_else():
    model = tiny_model("CLIPModel")
    assert get_method("distill").reach(model) is None and get_method("lowrank").reach(model) is None
