"""UPop search: progressive schedule, binary final masks, searched model == extracted subnet, saliency."""

from __future__ import annotations

import pytest
import torch
from conftest import max_diff, run

import vltrim
from vltrim.arch.masks import plan_masks
from vltrim.data import SyntheticCaptions
from vltrim.methods import get_method
from vltrim.methods.upop import progressive_share, update_steps
from vltrim.structure.select import Budget
from vltrim.zoo import tiny_model


def test_schedule():
    shares = [progressive_share(t, 10, 0.5) for t in range(11)]
    assert shares[0] == 0 and shares[-1] == 0.5
    assert all(a < b for a, b in zip(shares, shares[1:]))
    assert update_steps(10, 4) == [4, 8, 10] and update_steps(9, 3) == [3, 6, 9]


@pytest.fixture(scope="module")
def searched():
    model = tiny_model("CLIPModel")
    data = SyntheticCaptions("train", 128)
    return model, get_method("upop").run(
        model, 0.4, train_data=data, steps=12, interval=4, lr=1e-3, batch_size=32, progress=False
    )


def test_final_masks_are_binary_and_match_the_plan(searched):
    _, res = searched
    expected = plan_masks(res.plan)
    for name, m in res.masks.items():
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(m, expected.get(name, torch.ones_like(m)))
    assert res.plan.achieved["params_removed"] >= 0.4
    assert [e["step"] for e in res.log] == [4, 8, 12]
    fades = [e["fade"] for e in res.log]
    assert fades[0] > fades[1] > fades[2] == 0.0


def test_searched_model_equals_extracted_subnet(searched):
    model, res = searched
    inputs = vltrim.get_adapter(model).reference_inputs(model, 2)
    with vltrim.masked(res.model, res.masks):
        searched_out = run(res.model, inputs)
    subnet = vltrim.apply_plan(res.model, res.plan)
    assert max_diff(searched_out, run(subnet, inputs)) < 1e-5
    # the weights trained during the search: the original model was not changed, the copy was
    assert not torch.equal(
        model.vision_model.encoder.layers[0].mlp.fc1.weight, res.model.vision_model.encoder.layers[0].mlp.fc1.weight
    )


def test_one_ranking_spans_both_towers(searched):
    _, res = searched
    assert {n.split(".")[0] for n in res.plan.keep} == {"vision", "text"}
    assert all(s.abs().sum() > 0 for s in res.scores.values())


def test_saliency_prunes_dead_neurons_first():
    model = tiny_model("CLIPModel")
    fc1, fc2 = model.vision_model.encoder.layers[0].mlp.fc1, model.vision_model.encoder.layers[0].mlp.fc2
    dead = list(range(16))
    with torch.no_grad():
        fc1.weight[dead] = 0
        fc1.bias[dead] = 0
        fc2.weight[:, dead] = 0
    res = get_method("upop").run(
        model,
        0.1,
        train_data=SyntheticCaptions("train", 64),
        steps=4,
        interval=2,
        lr=1e-7,
        batch_size=32,
        units="neurons",
        progress=False,
    )
    kept = set(res.plan.keep["vision.layers.0.mlp.neurons"])
    assert not kept & set(dead)


def test_upop_needs_data_and_a_loss():
    with pytest.raises(TypeError):
        vltrim.plan(tiny_model("CLIPModel"), "upop", target=0.3)
    with pytest.raises(ValueError, match="loss_fn"):
        vltrim.plan(tiny_model("BertModel"), "upop", target=0.3, train_data=SyntheticCaptions("train", 8), steps=1)


def _pruned(groups, keep):
    return {(g.name, i) for g in groups for i in range(g.size) if g.name in keep and i not in keep[g.name]}


@pytest.mark.parametrize("monotone", [True, False])
def test_pruned_set_only_grows_when_monotone(monotone):
    """Re-ranking late in the search would move units from mask 1 straight to ~0 (a weight gap); monotone
    keeps every unit pruned once, so the only late changes are the small share increments."""
    from vltrim.methods.common import prunable_groups
    from vltrim.methods.upop import _Search

    groups = prunable_groups(tiny_model("CLIPModel"), "neurons")
    state = _Search(groups, Budget(0.5, "params", 8, "global", 1.0), steps=4, interval=2, monotone=monotone)
    for g in groups:
        state.scores[g.name] = torch.arange(g.size, dtype=torch.float64)  # low indices look unimportant
    state(1)
    first = _pruned(groups, state.keep)
    for g in groups:
        state.scores[g.name] = -torch.arange(g.size, dtype=torch.float64)  # now the high indices do
    state(3)
    second = _pruned(groups, state.keep)
    assert len(second) > len(first)
    assert (first <= second) == monotone
    assert (state.log[-1]["restored"] == 0) == monotone
    assert state.log[-1]["newly_pruned"] == len(second - first)


def test_search_log_counts_churn(searched):
    _, res = searched
    removed = sum(len(res.masks[n]) - len(k) for n, k in res.plan.keep.items())
    assert sum(e["newly_pruned"] - e["restored"] for e in res.log) == removed  # the default re-ranks: churn adds up
