"""Invariant 2: save -> load round-trips bit-exactly; loading is strict; bad plans leave models untouched."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_plan, run, tamper_weights

import vltrim
from vltrim.zoo import tiny_model


def _state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def test_save_load_bit_exact(model, inputs, tmp_path):
    small = vltrim.apply_plan(model, random_plan(model, {"heads", "neurons", "layers"}))
    vltrim.save(small, tmp_path)
    again = vltrim.load(tmp_path)
    assert type(again) is type(small)
    assert _state_equal(small, again)
    assert all(torch.equal(x, y) for x, y in zip(run(small, inputs), run(again, inputs)))
    assert {"config.json", "plan.json", "model.safetensors", "README.md"} <= {p.name for p in tmp_path.iterdir()}


def test_unpruned_and_twice_pruned_round_trip(inputs, model, tmp_path):
    vltrim.save(model, tmp_path / "plain")
    assert _state_equal(model, vltrim.load(tmp_path / "plain"))
    once = vltrim.apply_plan(model, random_plan(model, {"neurons"}, seed=1))
    twice = vltrim.apply_plan(once, random_plan(once, {"head_dims", "layers"}, seed=2))
    vltrim.save(twice, tmp_path / "twice")
    again = vltrim.load(tmp_path / "twice")
    assert _state_equal(twice, again) and len(vltrim.plans_of(again)) == 2


def test_half_precision_round_trip(tmp_path):
    model = tiny_model("ViTModel").half()
    vltrim.save(vltrim.apply_plan(model, random_plan(model, {"neurons"})), tmp_path)
    again = vltrim.load(tmp_path)
    assert next(again.parameters()).dtype == torch.float16


@pytest.mark.parametrize("tamper", ["drop", "extra", "shape"])
def test_loading_is_strict(tmp_path, tamper):
    model = tiny_model("CLIPModel")
    vltrim.save(vltrim.apply_plan(model, random_plan(model, {"neurons"})), tmp_path)
    tamper_weights(tmp_path / "model.safetensors", tamper)
    with pytest.raises(RuntimeError):
        vltrim.load(tmp_path)


def _bad_plans(model):
    good = random_plan(model, {"neurons"})
    name = next(iter(good.keep))

    def with_keep(idx):
        p = vltrim.Plan.from_dict(good.to_dict())
        p.keep[name] = idx
        return p

    other = tiny_model("ViTModel")
    yield "other model", random_plan(other, {"neurons"})
    yield "out of range", with_keep([0, good.sizes[name]])
    yield "negative", with_keep([-1, 0])
    yield "duplicated", with_keep([0, 0, 1])
    yield "empty", with_keep([])
    wrong_size = vltrim.Plan.from_dict(good.to_dict())
    wrong_size.sizes[name] += 8
    yield "other config", wrong_size
    unknown = vltrim.Plan.from_dict(good.to_dict())
    unknown.keep["vision.layers.99.mlp.neurons"] = [0]
    unknown.sizes["vision.layers.99.mlp.neurons"], unknown.kinds["vision.layers.99.mlp.neurons"] = 96, "neurons"
    yield "unknown group", unknown


def test_bad_plans_raise_and_leave_model_untouched():
    model = tiny_model("CLIPModel")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for label, plan in _bad_plans(model):
        with pytest.raises(vltrim.PlanError):
            vltrim.apply_plan(model, plan, inplace=True)
        with pytest.raises(vltrim.PlanError):
            with vltrim.masked(model, plan):
                pass
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), label
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), label


@pytest.mark.parametrize(
    "text", ["not json", "{}", '{"format": "vltrim.plan", "version": 99}', '{"format": "vltrim.plan", "version": 1}']
)
def test_malformed_plan_files(tmp_path, text):
    f = tmp_path / "plan.json"
    f.write_text(text)
    with pytest.raises(vltrim.PlanError):
        vltrim.Plan.load(f)


def test_plan_json_round_trip(tmp_path):
    model = tiny_model("BertModel")
    plan = vltrim.plan(model, "l1", target=0.3)
    plan.save(tmp_path / "p.json")
    again = vltrim.Plan.load(tmp_path / "p.json")
    assert again.to_dict() == json.loads(json.dumps(plan.to_dict()))
    assert torch.equal(
        vltrim.apply_plan(model, again).encoder.layer[0].output.dense.weight,
        vltrim.apply_plan(model, plan).encoder.layer[0].output.dense.weight,
    )


def test_unsupported_model_is_a_clear_error(tmp_path):
    with pytest.raises(vltrim.UnsupportedModelError, match="CLIPModel"):
        vltrim.inspect(torch.nn.Linear(2, 2))
    with pytest.raises(vltrim.UnsupportedModelError):
        vltrim.save(torch.nn.Linear(2, 2), tmp_path)
    with pytest.raises(FileNotFoundError, match="not a vltrim model directory"):
        vltrim.load(tmp_path)
