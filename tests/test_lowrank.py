"""The factorize plan step and the `lowrank` method: factorised == truncated dense, save/load bit-exact and strict,
chains, global target met exactly, clear errors, and the data-aware SVD beating plain SVD on its calibration data."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import max_diff, random_plan, run
from safetensors.torch import load_file, save_file
from torch import nn

import vltrim
from vltrim.arch import get_adapter
from vltrim.methods import get_method
from vltrim.structure.factorize import FactorizedLinear
from vltrim.structure.plan import Plan, PlanError
from vltrim.zoo import tiny_model

MODELS = ["CLIPModel", "BertModel", "ViTForImageClassification"]


def _inputs(model, batch: int = 2, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return get_adapter(model).reference_inputs(model, batch_size=batch)


def _truncated_dense(model: nn.Module, plan: Plan) -> nn.Module:
    """The dense model whose planned Linears carry U_r S_r V_r^T (of W diag(s), then unscaled), computed here."""
    dense = copy.deepcopy(model)
    lins = get_adapter(dense).linears(dense)
    for name, r in plan.factorize.items():
        w = lins[name].weight.detach().double()
        s = (
            torch.tensor(plan.factor_scales[name], dtype=torch.float64)
            if name in plan.factor_scales
            else torch.ones(w.shape[1], dtype=torch.float64)
        )
        u, sv, vh = torch.linalg.svd(w * s, full_matrices=False)
        with torch.no_grad():
            lins[name].weight.copy_(((u[:, :r] * sv[:r]) @ vh[:r] / s).float())
    return dense


def _state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _manual(model: nn.Module, ranks: dict[str, int]) -> Plan:
    return Plan(type(model).__name__, {}, {}, {}, method="test", factorize=ranks)


# ---- invariant: factorised == dense with truncated weights ----------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_factorised_equals_truncated_dense(name):
    model = tiny_model(name)
    plan = vltrim.plan(model, method="lowrank", target=0.3)
    small = vltrim.apply_plan(model, plan)
    assert plan.factorize and all(
        isinstance(get_adapter(small).linears(small)[n], FactorizedLinear) for n in plan.factorize
    )
    x = _inputs(model)
    assert max_diff(run(small, x), run(_truncated_dense(model, plan), x)) < 1e-5
    assert max_diff(run(small, x), run(model, x)) > 1e-3  # the truncation really changed the function


def test_weighted_factorised_equals_truncated_dense():
    model = tiny_model("CLIPModel")
    plan = vltrim.plan(model, method="lowrank", target=0.3, data=[_inputs(model, 4, seed=1)])
    assert plan.factor_scales.keys() == plan.factorize.keys() and plan.settings["weighted"] is True
    x = _inputs(model)
    assert max_diff(run(vltrim.apply_plan(model, plan), x), run(_truncated_dense(model, plan), x)) < 1e-5


def test_exact_low_rank_weights_are_reproduced():
    """Block Linears of rank 8: mode 'energy' with energy 1.0 picks rank 8 and the factors give the original back."""
    model = tiny_model("BertModel")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lin in get_adapter(model).linears(model).values():
            o, i = lin.weight.shape
            lin.weight.copy_(torch.randn(o, 8, generator=g) @ torch.randn(8, i, generator=g) / 8)
    plan = vltrim.plan(model, method="lowrank", mode="energy", energy=1.0)
    assert set(plan.factorize.values()) == {8} and len(plan.factorize) == len(get_adapter(model).linears(model))
    x = _inputs(model)
    assert max_diff(run(vltrim.apply_plan(model, plan), x), run(model, x)) < 1e-4


# ---- save / load ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_save_load_bit_exact(name, tmp_path):
    model = tiny_model(name)
    small = vltrim.apply_plan(model, vltrim.plan(model, method="lowrank", target=0.4, data=[_inputs(model, 2, seed=3)]))
    vltrim.save(small, tmp_path)
    again = vltrim.load(tmp_path)
    assert _state_equal(small, again) and vltrim.plans_of(again)[0].factorize == vltrim.plans_of(small)[0].factorize
    x = _inputs(model)
    assert all(torch.equal(a, b) for a, b in zip(run(small, x), run(again, x)))
    assert "Linears factorised" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("tamper", ["drop", "extra", "shape"])
def test_loading_factorised_is_strict(tmp_path, tamper):
    model = tiny_model("CLIPModel")
    vltrim.save(vltrim.apply_plan(model, vltrim.plan(model, method="lowrank", target=0.3)), tmp_path)
    file = tmp_path / "model.safetensors"
    w = load_file(file)
    key = next(k for k in w if k.endswith("mlp.fc1.first.weight"))
    if tamper == "drop":
        del w[key]
    elif tamper == "extra":
        w["surprise.weight"] = torch.zeros(2)
    else:
        w[key] = torch.zeros(w[key].shape[0] + 8, w[key].shape[1])
    save_file(w, file)
    with pytest.raises(vltrim.ModelDirError, match="model.safetensors"):  # the checksum names the edited file
        vltrim.load(tmp_path)
    with pytest.raises(vltrim.ModelDirError, match="surprise" if tamper == "extra" else "fc1"):  # strict without it
        vltrim.load(tmp_path, verify=False)


def test_chain_keep_then_factorize_reloads_bit_exact(tmp_path):
    model = tiny_model("CLIPModel")
    pruned = vltrim.apply_plan(model, random_plan(model, {"neurons", "heads"}, seed=4))
    plan = vltrim.plan(pruned, method="lowrank", target=0.25, align=4)
    both = vltrim.apply_plan(pruned, plan)
    vltrim.save(both, tmp_path)
    again = vltrim.load(tmp_path)
    assert len(vltrim.plans_of(again)) == 2 and _state_equal(both, again)
    x = _inputs(model)
    assert all(torch.equal(a, b) for a, b in zip(run(both, x), run(again, x)))
    assert vltrim.count_params(again) == plan.achieved["model_params_after"]


def test_one_plan_slices_then_factorises():
    """Within one plan keep comes first: the rank and shape refer to the sliced fc1 (64 -> 40 neurons)."""
    model = tiny_model("ViTModel")
    groups = get_adapter(model).groups(model)
    plan = Plan.from_keep("ViTModel", groups, {"vision.layers.0.mlp.neurons": list(range(40))}, method="test")
    plan.factorize, plan.factor_shapes = {"vision.layers.0.mlp.fc1": 16}, {"vision.layers.0.mlp.fc1": [40, 64]}
    small = vltrim.apply_plan(model, Plan.from_dict(json.loads(plan.to_json())))
    fc1 = get_adapter(small).linears(small)["vision.layers.0.mlp.fc1"]
    assert isinstance(fc1, FactorizedLinear) and (fc1.out_features, fc1.rank) == (40, 16)


def test_slicing_a_factorised_linear_later_is_refused():
    model = tiny_model("BertModel")
    small = vltrim.apply_plan(model, _manual(model, {"text.layers.0.mlp.fc2": 16}))
    assert "text.layers.0.mlp.neurons" not in {g.name for g in vltrim.inspect(small)}
    keep = Plan(
        "BertModel",
        {"text.layers.0.mlp.neurons": list(range(64))},
        {"text.layers.0.mlp.neurons": 96},
        {"text.layers.0.mlp.neurons": "neurons"},
    )
    with pytest.raises(PlanError, match=r"text\.layers\.0\.mlp\.fc2.*factorised"):
        vltrim.apply_plan(small, keep)
    with pytest.raises(PlanError, match="already factorised"):
        vltrim.apply_plan(small, _manual(model, {"text.layers.0.mlp.fc2": 16}))
    again = vltrim.apply_plan(small, random_plan(small, {"neurons", "heads"}, seed=1))  # other groups still slice
    assert len(vltrim.plans_of(again)) == 2


# ---- the global mode meets its target -------------------------------------------------------------
@pytest.mark.parametrize(
    "name,target,align", [("CLIPModel", 0.3, 8), ("BertModel", 0.5, 8), ("ViTForImageClassification", 0.2, 4)]
)
def test_global_mode_meets_target_within_one_step(name, target, align):
    model = tiny_model(name)
    plan = vltrim.plan(model, method="lowrank", target=target, align=align)
    a, lins = plan.achieved, get_adapter(model).linears(model)
    step = max(align * (m.in_features + m.out_features) for m in lins.values()) / a["prunable_params"]
    assert target <= a["params_removed"] < target + step
    assert all(r % align == 0 and r >= align for r in plan.factorize.values())
    small = vltrim.apply_plan(model, plan)
    assert vltrim.count_params(small) == a["model_params_after"]
    assert vltrim.count_macs(small, get_adapter(small).reference_inputs(small, 1)) == a["model_macs_after"]
    assert a["model_params_before"] - a["model_params_after"] == round(a["params_removed"] * a["prunable_params"])


def test_global_mode_follows_the_spectrum():
    """A layer with a fast-decaying spectrum is cut deeper than one with a flat spectrum."""
    model = tiny_model("BertModel")
    lins = get_adapter(model).linears(model)
    with torch.no_grad():
        u, _, vh = torch.linalg.svd(lins["text.layers.0.mlp.fc1"].weight, full_matrices=False)
        lins["text.layers.0.mlp.fc1"].weight.copy_((u * 0.7 ** torch.arange(64.0)) @ vh)
    ranks = vltrim.plan(model, method="lowrank", target=0.2).factorize
    assert ranks["text.layers.0.mlp.fc1"] == 8 and ranks.get("text.layers.0.mlp.fc2", 64) > 8


def test_energy_mode_keeps_energy():
    model = tiny_model("ViTModel")
    plan = vltrim.plan(model, method="lowrank", mode="energy", energy=0.5, align=4)
    lins = get_adapter(model).linears(model)
    for name, r in plan.factorize.items():
        sv2 = torch.linalg.svdvals(lins[name].weight.double()).pow(2)
        held = sv2.cumsum(0) / sv2.sum()
        assert held[r - 1] >= 0.5 and (r == 4 or held[r - 5] < 0.5)
    assert plan.target == {"energy": 0.5, "metric": "params", "align": 4}


# ---- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ranks,match",
    [
        ({"text.layers.0.attn.q": 64}, r"'text\.layers\.0\.attn\.q' \(64x64\) at rank 64"),
        ({"text.layers.0.attn.q": 0}, r"'text\.layers\.0\.attn\.q' \(64x64\) at rank 0"),
        ({"text.layers.0.mlp.fc1": 40}, r"'text\.layers\.0\.mlp\.fc1' \(96x64\) at rank 40.*saves no parameters"),
        ({"text.layers.9.mlp.fc1": 8}, r"'text\.layers\.9\.mlp\.fc1', which this BertModel does not have"),
        ({"text.layers.0.mlp.fc9": 8}, r"'text\.layers\.0\.mlp\.fc9', which this BertModel does not have"),
    ],
)
def test_bad_ranks_name_the_layer(ranks, match):
    model = tiny_model("BertModel")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PlanError, match=match):
        vltrim.apply_plan(model, _manual(model, ranks))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_recorded_shape_must_match():
    model = tiny_model("BertModel")
    plan = _manual(model, {"text.layers.0.mlp.fc1": 8})
    plan.factor_shapes = {"text.layers.0.mlp.fc1": [128, 64]}
    with pytest.raises(PlanError, match=r"fc1' as 128x64, the model has 96x64"):
        vltrim.apply_plan(model, plan)


@pytest.mark.parametrize(
    "settings,match",
    [
        (dict(target=0.0), "target"),
        (dict(target=1.0), "target"),
        (dict(target=1.5), "target"),
        (dict(mode="energy", energy=0.0), "energy"),
        (dict(mode="energy", energy=1.01), "energy"),
        (dict(mode="energy"), "energy"),
        (dict(energy=0.5), "energy"),
        (dict(mode="svd"), "mode"),
        (dict(align=0), "align"),
        (dict(weighted=True), "weighted=True needs calibration data"),
        (dict(target=0.99, align=32), "not reachable"),
    ],
)
def test_bad_options_are_clear(settings, match):
    model = tiny_model("ViTModel")
    target = settings.pop("target", 0.3)
    with pytest.raises(ValueError, match=match):
        get_method("lowrank").search(model, target=target, **settings)


def test_plan_json_round_trip_and_old_files(tmp_path):
    model = tiny_model("CLIPModel")
    plan = vltrim.plan(model, method="lowrank", target=0.3, data=_inputs(model, 2))
    plan.save(tmp_path / "p.json")
    back = Plan.load(tmp_path / "p.json")
    assert (back.factorize, back.factor_shapes, back.factor_scales) == (
        plan.factorize,
        plan.factor_shapes,
        plan.factor_scales,
    )
    old = json.loads(random_plan(model, {"neurons"}).to_json())
    assert "factorize" not in old and Plan.from_dict(old).factorize == {}
    bad = dict(json.loads(plan.to_json()), factorize={"vision.layers.0.mlp.fc1": {"rank": -1}})
    with pytest.raises(PlanError, match=r"factorize\['vision\.layers\.0\.mlp\.fc1'\]\.rank"):
        Plan.from_dict(bad)
    bad["factorize"] = {"vision.layers.0.mlp.fc1": {"rank": 8, "scales": [1.0, -2.0]}}
    with pytest.raises(PlanError, match="positive"):
        Plan.from_dict(bad)


def test_masks_refuse_factorize_plans():
    model = tiny_model("BertModel")
    with pytest.raises(PlanError, match="apply_plan"):
        with vltrim.masked(model, _manual(model, {"text.layers.0.mlp.fc1": 8})):
            pass


# ---- data-aware SVD -------------------------------------------------------------------------------
def _linear_inputs(model: nn.Module, x: dict) -> dict[str, torch.Tensor]:
    """Inputs of every block Linear of ``model`` on ``x`` (tokens x features)."""
    seen, hooks = {}, []
    for n, m in get_adapter(model).linears(model).items():
        hooks.append(
            m.register_forward_pre_hook(
                lambda _m, a, n=n: seen.__setitem__(n, a[0].detach().reshape(-1, a[0].shape[-1]))
            )
        )
    run(model, x)
    for h in hooks:
        h.remove()
    return seen


def test_data_aware_svd_has_lower_output_error_on_calibration_data():
    """Same ranks: W diag(s) truncation gives a smaller ||(W - W_r) X|| than plain SVD on the calibration inputs X,
    layer by layer, and a smaller error of the whole model's outputs."""
    model = tiny_model("BertModel")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # uneven feature scales, as in trained Transformers
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.mul_(torch.exp(0.5 * torch.randn(m.weight.shape, generator=g)))
    calib = _inputs(model, 8, seed=5)
    weighted = vltrim.plan(model, method="lowrank", target=0.3, data=[calib])
    plain = _manual(model, weighted.factorize)
    xs = _linear_inputs(model, calib)
    lins = get_adapter(model).linears(model)
    errors = {}
    for label, plan in (("plain", plain), ("weighted", weighted)):
        small = vltrim.apply_plan(model, plan)
        slins = get_adapter(small).linears(small)
        errors[label] = sum(
            float(
                ((slins[n].dense_weight() - lins[n].weight).detach() @ xs[n].T).norm()
                / (lins[n].weight.detach() @ xs[n].T).norm()
            )
            for n in plan.factorize
        )
        errors[label + "_model"] = max_diff(run(small, calib), run(model, calib))
    assert errors["weighted"] < 0.8 * errors["plain"], errors
    assert errors["weighted_model"] < errors["plain_model"], errors
