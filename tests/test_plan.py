"""Invariants 3 and 4: plans meet their target within one alignment step; kept widths are aligned."""

from __future__ import annotations

import pytest
import torch

import vltrim
from vltrim.arch import get_adapter
from vltrim.structure.select import MAX_RATIO, Budget, removal_chunks, select
from vltrim.zoo import tiny_model

CLASSES = ["CLIPModel", "VisionTextDualEncoderModel", "BertModel", "DeiTForImageClassification"]


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("metric", ["params", "macs"])
@pytest.mark.parametrize("target", [0.25, 0.5, 0.6])
@pytest.mark.parametrize("method", ["l1", "random"])
def test_target_met_within_one_step_and_aligned(name, metric, target, method):
    model = tiny_model(name)
    plan = vltrim.plan(model, method, target=target, metric=metric, align=8)
    groups = {g.name: g for g in vltrim.inspect(model) if g.kind.value in ("head_dims", "neurons")}
    got = plan.achieved[f"{metric}_removed"]
    total = plan.achieved[f"prunable_{metric}"]
    biggest_step = max(g.align_step(8) * g.cost_per_unit(metric) for g in groups.values()) / total
    assert target <= got < target + biggest_step
    for n, keep in plan.keep.items():
        assert len(keep) % 8 == 0 or len(keep) == groups[n].size, n
    small = vltrim.apply_plan(model, plan)
    assert vltrim.count_params(small) == plan.achieved["model_params_after"]
    assert vltrim.count_macs(small, get_adapter(small).reference_inputs(small)) == plan.achieved["model_macs_after"]


def test_heads_alignment_counts_channels():
    """With head_dim 16 and align 8 any head count keeps the width aligned; with align 32, pairs of heads."""
    model = tiny_model("ViTModel")
    g = next(g for g in vltrim.inspect(model) if g.kind.value == "heads")
    assert g.align_step(8) == 1 and g.align_step(32) == 2
    plan = vltrim.plan(model, "l1", target=0.4, units="heads,neurons", align=32)
    assert all(len(k) % 2 == 0 for n, k in plan.keep.items() if n.endswith("heads"))


def test_align_one_allows_any_width():
    model = tiny_model("BertModel")
    plan = vltrim.plan(model, "l1", target=0.3, align=1)
    total = plan.achieved["prunable_params"]
    unit = max(g.params_per_unit for g in vltrim.inspect(model) if g.kind.value in ("head_dims", "neurons"))
    assert plan.achieved["params_removed"] - 0.3 < unit / total


def test_removal_chunks():
    assert removal_chunks(64, 8) == [8] * 7
    assert removal_chunks(20, 8) == [4, 8]
    assert removal_chunks(8, 8) == [] and removal_chunks(5, 8) == []


def test_selection_prefers_low_scores_globally():
    model = tiny_model("CLIPModel")
    groups = [g for g in vltrim.inspect(model) if g.kind.value == "neurons"]
    scores = {g.name: torch.full((g.size,), 1000.0) for g in groups}
    scores[groups[0].name] = torch.arange(groups[0].size, dtype=torch.float)  # low scores in one group only
    keep = select(groups, scores, Budget(0.1, "params", 8))
    assert list(keep) == [groups[0].name]
    assert keep[groups[0].name] == list(range(groups[0].size - len(keep[groups[0].name]), groups[0].size))


def test_unreachable_and_invalid_targets():
    model = tiny_model("BertModel")
    with pytest.raises(ValueError, match="not reachable"):
        vltrim.plan(model, "l1", target=0.99, align=8)
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="target"):
            vltrim.plan(model, "l1", target=bad)
    with pytest.raises(ValueError, match="heads or head_dims"):
        vltrim.plan(model, "l1", target=0.3, units="heads,head_dims")
    with pytest.raises(ValueError, match="unknown method"):
        vltrim.plan(model, "nope", target=0.3)


def test_plan_records_target_and_method():
    plan = vltrim.plan(tiny_model("CLIPModel"), "l1", target=0.5, metric="macs", align=8)
    assert plan.method == "l1" and plan.target == {
        "target": 0.5,
        "metric": "macs",
        "align": 8,
        "allocation": "uniform",
        "max_ratio": MAX_RATIO,  # l1's default
        "normalize": "kind",
        "ranking": "score",
    }
    assert plan.achieved["macs_removed"] >= 0.5
    assert {g.split(".")[0] for g in plan.keep} == {"vision", "text"}  # one ranking over both modalities


def test_unknown_settings_are_rejected():
    with pytest.raises(TypeError, match="unknown setting"):
        vltrim.plan(tiny_model("BertModel"), "l1", target=0.3, algin=8)
