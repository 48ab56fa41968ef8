"""The sparsify plan step and the `magnitude` method: the pattern holds exactly, apply is reproducible, save/load is
bit-exact and refuses weights that break the pattern, chains, zeros survive retraining, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from conftest import flat_outputs, max_diff, random_plan, run
from safetensors.torch import load_file, save_file

import vltrim
from vltrim.arch import get_adapter
from vltrim.io import sha256_file
from vltrim.methods.magnitude import global_counts, sparsity_schedule
from vltrim.structure.plan import Plan, PlanError
from vltrim.structure.sparsify import freeze_zeros, pattern_problem, prune_mask, to_semi_structured
from vltrim.zoo import tiny_model

MODELS = ["CLIPModel", "BertModel", "ViTForImageClassification"]


def _lins(model) -> dict[str, torch.nn.Linear]:
    return get_adapter(model).linears(model)


def _state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _zeros(w: torch.Tensor) -> int:
    return int((w == 0).sum())


def _groups_ok(w: torch.Tensor) -> bool:
    """Every group of 4 consecutive weights along the input dimension holds >= 2 exact zeros."""
    return bool(((w == 0).reshape(w.shape[0], -1, 4).sum(-1) >= 2).all())


def _key_of(model, linear_name: str) -> str:
    """The state-dict key of a block Linear's weight."""
    w = _lins(model)[linear_name].weight
    return next(k for k, p in model.named_parameters() if p is w)


# ---- invariant: the pattern holds exactly -------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_global_unstructured_exact_counts(name):
    model = tiny_model(name)
    plan = vltrim.plan(model, method="magnitude", target=0.6)
    small = vltrim.apply_plan(model, plan)
    lins = _lins(small)
    total = sum(m.weight.numel() for m in lins.values())
    assert set(plan.sparsify) == set(lins)  # every block Linear of every tower
    for n, e in plan.sparsify.items():
        assert e["pattern"] == "unstructured" and _zeros(lins[n].weight) == round(
            e["sparsity"] * lins[n].weight.numel()
        )
    zeros = sum(_zeros(m.weight) for m in lins.values())
    assert zeros == round(0.6 * total) == plan.achieved["zero_weights"]
    assert plan.achieved["sparsity"] == zeros / total
    assert plan.achieved["model_params_after"] == plan.achieved["model_params_before"] == vltrim.count_params(small)
    assert plan.achieved["model_macs_after"] == plan.achieved["model_macs_before"]
    assert plan.achieved["nonzero_params"] == sum(int(p.count_nonzero()) for p in small.parameters())
    # the pruned weights are the globally smallest: every zeroed |w| <= every kept |w| (in the original)
    orig = _lins(model)
    pruned = torch.cat([orig[n].weight.abs()[lins[n].weight == 0] for n in lins])
    kept = torch.cat([orig[n].weight.abs()[lins[n].weight != 0] for n in lins])
    assert pruned.max() <= kept.min()


@pytest.mark.parametrize("name", MODELS)
def test_two_four_every_group(name):
    model = tiny_model(name)
    plan = vltrim.plan(model, method="magnitude", pattern="2:4", target=0.9)  # target ignored: 50% by construction
    small = vltrim.apply_plan(model, plan)
    assert plan.target["sparsity"] == 0.5 and plan.achieved["sparsity"] == 0.5
    for n, m in _lins(small).items():
        assert plan.sparsify[n] == {"pattern": "2:4", "sparsity": 0.5}
        assert _groups_ok(m.weight) and _zeros(m.weight) == m.weight.numel() // 2
    x = get_adapter(model).reference_inputs(model, 2)
    assert max_diff(run(small, x), run(model, x)) > 1e-4  # pruning really changed the weights


def test_layer_scope_same_share_per_linear():
    model = tiny_model("BertModel")
    plan = vltrim.plan(model, method="magnitude", target=0.3, scope="layer")
    small = vltrim.apply_plan(model, plan)
    for _n, m in _lins(small).items():
        assert _zeros(m.weight) == round(0.3 * m.weight.numel())


def test_global_counts_ties_and_mask_by_hand():
    w = {"a": torch.tensor([[0.1, 0.3, 0.2, 0.2]]), "b": torch.tensor([[0.2, 0.05, 0.4, 0.2]])}
    assert global_counts(w, 0.5) == {"a": 3, "b": 1}  # 0.05, 0.1, then the ties at 0.2 go to 'a' first
    m = prune_mask(torch.tensor([[1.0, -0.5, 0.1, 2.0, 0.3, 0.3, -4.0, 0.0]]), "2:4", 0.5)
    assert m.tolist() == [[False, True, True, False, True, False, False, True]]  # 0 and the first 0.3 (stable)


# ---- reproducible apply, save/load ----------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_apply_reproducible_and_model_untouched(pattern):
    model = tiny_model("CLIPModel")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = vltrim.plan(model, method="magnitude", pattern=pattern, target=0.7)
    again = Plan.from_dict(json.loads(plan.to_json()))  # from the plan file alone
    a, b = vltrim.apply_plan(model, plan), vltrim.apply_plan(model, again)
    assert _state_equal(a, b)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_save_load_bit_exact(name, pattern, tmp_path):
    model = tiny_model(name)
    small = vltrim.apply_plan(model, vltrim.plan(model, method="magnitude", pattern=pattern, target=0.5))
    vltrim.save(small, tmp_path / "m")
    back = vltrim.load(tmp_path / "m")
    assert _state_equal(small, back)
    assert [p.sparsify for p in vltrim.plans_of(back)] == [p.sparsify for p in vltrim.plans_of(small)]
    x = get_adapter(model).reference_inputs(model, 2)
    assert max_diff(run(small, x), run(back, x)) == 0


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_load_refuses_weights_breaking_the_pattern(pattern, tmp_path):
    model = tiny_model("CLIPModel")
    small = vltrim.apply_plan(model, vltrim.plan(model, method="magnitude", pattern=pattern, target=0.5))
    d = tmp_path / "m"
    vltrim.save(small, d)
    target = "text.layers.1.mlp.fc2"
    key = _key_of(small, target)
    w = load_file(d / "model.safetensors")
    hole = (w[key] == 0).nonzero()[0]
    w[key][tuple(hole)] = 0.5
    save_file(w, d / "model.safetensors")
    sums = json.loads((d / "vltrim.json").read_text())
    sums["files"]["model.safetensors"] = sha256_file(d / "model.safetensors")  # only the pattern check can catch it
    (d / "vltrim.json").write_text(json.dumps(sums))
    with pytest.raises(vltrim.ModelDirError, match=rf"model.safetensors.*{target}"):
        vltrim.load(d)


def test_keep_then_sparsify_chain_round_trips(tmp_path):
    model = tiny_model("CLIPModel")
    narrow = vltrim.apply_plan(model, random_plan(model, {"heads", "neurons", "layers"}, seed=3))
    plan = vltrim.plan(narrow, method="magnitude", target=0.4)
    small = vltrim.apply_plan(narrow, plan)
    vltrim.save(small, tmp_path / "m")
    back = vltrim.load(tmp_path / "m")
    assert _state_equal(small, back) and len(vltrim.plans_of(back)) == 2
    assert all(
        _zeros(m.weight) == round(plan.sparsify[n]["sparsity"] * m.weight.numel()) for n, m in _lins(back).items()
    )


def test_slicing_or_factorising_a_sparsified_linear_is_refused():
    model = tiny_model("BertModel")
    sparse = vltrim.apply_plan(model, vltrim.plan(model, method="magnitude", target=0.5))
    with pytest.raises(PlanError, match="sparsified by an earlier plan.*keep plans before sparsify"):
        vltrim.apply_plan(sparse, random_plan(sparse, {"neurons"}))
    with pytest.raises(PlanError, match="sparsified"):
        vltrim.apply_plan(sparse, vltrim.plan(sparse, method="lowrank", target=0.3))
    with pytest.raises(PlanError, match="no group-mask equivalent"):
        with vltrim.masked(model, vltrim.plans_of(sparse)[0]):
            pass


def test_iterative_rounds_keep_earlier_zeros():
    sched = sparsity_schedule(0.8, 3)
    assert len(sched) == 3 and sched[-1] == pytest.approx(0.8) and sched == sorted(sched) and sched[0] > 0.8 / 3
    assert sparsity_schedule(0.5, 1) == [0.5]
    model = tiny_model("BertModel")
    first = vltrim.apply_plan(model, p1 := vltrim.plan(model, method="magnitude", target=0.8, rounds=3, step=1))
    assert p1.target["sparsity"] == pytest.approx(sched[0]) and p1.settings["rounds"] == 3
    second = vltrim.apply_plan(first, vltrim.plan(first, method="magnitude", target=0.8, rounds=3, step=2))
    for n, m in _lins(second).items():
        assert bool((m.weight[_lins(first)[n].weight == 0] == 0).all())
    total = sum(m.weight.numel() for m in _lins(second).values())
    assert sum(_zeros(m.weight) for m in _lins(second).values()) == round(sched[1] * total)


# ---- retraining keeps zeros ------------------------------------------------------------------------
def test_freeze_zeros_survives_adamw():
    model = tiny_model("ViTForImageClassification")
    small = vltrim.apply_plan(model, vltrim.plan(model, method="magnitude", pattern="2:4")).train()
    zero = {n: m.weight == 0 for n, m in _lins(small).items()}
    start = {n: m.weight.detach().clone() for n, m in _lins(small).items()}
    handle = freeze_zeros(small)
    opt = torch.optim.AdamW(small.parameters(), lr=1e-2, weight_decay=0.1)
    x = get_adapter(small).reference_inputs(small, 4)
    for _ in range(3):
        opt.zero_grad()
        sum(t.pow(2).mean() for t in flat_outputs(small(**x))).backward()
        opt.step()
    for n, m in _lins(small).items():
        assert bool((m.weight[zero[n]] == 0).all()), n
        assert not torch.equal(m.weight, start[n])  # the other weights did train
    handle.remove()
    assert pattern_problem(_lins(small)["vision.layers.0.attn.q"].weight, "2:4", 0.5) is None


def test_freeze_zeros_works_on_a_loaded_model(tmp_path):
    model = tiny_model("BertModel")
    vltrim.save(vltrim.apply_plan(model, vltrim.plan(model, method="magnitude", target=0.5)), tmp_path / "m")
    back = vltrim.load(tmp_path / "m")
    with freeze_zeros(back) as h:
        assert len(h.masks) == len(_lins(back))
    with pytest.raises(ValueError, match="no sparsified Linear"):
        freeze_zeros(model)


# ---- plan files ----------------------------------------------------------------------------------
def test_plan_json_sparsify_key_only_when_present():
    model = tiny_model("BertModel")
    keep_only = vltrim.plan(model, method="l1", target=0.3)
    assert "sparsify" not in keep_only.to_dict() and "sparsify" not in keep_only.to_json()
    plan = vltrim.plan(model, method="magnitude", target=0.5)
    back = Plan.from_dict(json.loads(plan.to_json()))
    assert back.sparsify == plan.sparsify and back.to_json() == plan.to_json()
    assert "sparsified" in plan.summary()


@pytest.mark.parametrize(
    "entry, msg",
    [
        ({"pattern": "1:4", "sparsity": 0.5}, "pattern"),
        ({"pattern": "unstructured", "sparsity": 0}, "sparsity"),
        ({"pattern": "unstructured", "sparsity": 1.5}, "sparsity"),
        ({"pattern": "2:4", "sparsity": 0.3}, "0.5 for the 2:4"),
        ({"pattern": "unstructured"}, "exactly pattern and sparsity"),
        ("half", "object"),
    ],
)
def test_malformed_sparsify_entries(entry, msg):
    d = json.loads(vltrim.plan(tiny_model("BertModel"), method="magnitude", target=0.5).to_json())
    d["sparsify"]["text.layers.0.attn.q"] = entry
    with pytest.raises(PlanError, match=rf"sparsify\['text.layers.0.attn.q'\].*{msg}"):
        Plan.from_dict(d)


def test_plan_naming_unknown_linear_is_refused():
    model = tiny_model("BertModel")
    plan = Plan(
        "BertModel", {}, {}, {}, sparsify={"text.layers.9.mlp.fc1": {"pattern": "unstructured", "sparsity": 0.5}}
    )
    with pytest.raises(PlanError, match="text.layers.9.mlp.fc1"):
        vltrim.apply_plan(model, plan)


# ---- bad options -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, option",
    [
        ({"target": 0.0}, "target"),
        ({"target": 1.0}, "target"),
        ({"target": 1.5}, "target"),
        ({"target": -0.2}, "target"),
        ({"pattern": "4:8"}, "pattern"),
        ({"scope": "tower"}, "scope"),
        ({"rounds": 0}, "rounds"),
        ({"rounds": 2, "step": 3}, "step"),
    ],
)
def test_bad_options_name_the_option(kw, option):
    with pytest.raises(ValueError, match=option):
        vltrim.plan(tiny_model("BertModel"), method="magnitude", **kw)


def test_two_four_needs_in_features_divisible_by_4():
    cfg = tf.BertConfig(
        hidden_size=64,
        intermediate_size=98,
        num_hidden_layers=1,
        num_attention_heads=4,
        vocab_size=64,
        max_position_embeddings=32,
    )
    model = tf.BertModel(cfg).eval()
    with pytest.raises(ValueError, match=r"2:4.*'text.layers.0.mlp.fc2'.*in_features=98"):
        vltrim.plan(model, method="magnitude", pattern="2:4")
    manual = Plan("BertModel", {}, {}, {}, sparsify={"text.layers.0.mlp.fc2": {"pattern": "2:4", "sparsity": 0.5}})
    with pytest.raises(PlanError, match=r"'text.layers.0.mlp.fc2' \(64x98\) with the 2:4 pattern"):
        vltrim.apply_plan(model, manual)
    with pytest.raises(ValueError, match="in_features=6"):
        prune_mask(torch.randn(4, 6), "2:4", 0.5)
    assert vltrim.plan(model, method="magnitude", target=0.5).sparsify  # unstructured works at any width


# ---- GPU kernels ------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_to_semi_structured_says_why_not_on_cpu():
    model = tiny_model("BertModel")
    small = vltrim.apply_plan(model, vltrim.plan(model, method="magnitude", pattern="2:4")).half()
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        to_semi_structured(small)
    unstructured = vltrim.apply_plan(model, vltrim.plan(model, method="magnitude", target=0.5))
    with pytest.raises(ValueError, match="no Linear sparsified with the 2:4 pattern"):
        to_semi_structured(unstructured)
