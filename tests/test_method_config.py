"""Method configs validate themselves (the errors compress and vltrim.plan give for a bad setting), serialise with a
to_dict / from_dict round trip, and make what a plan records as its settings."""

from __future__ import annotations

import json

import pytest

import vltrim
from vltrim.data import SyntheticCaptions
from vltrim.methods import _METHODS, Method, get_method
from vltrim.zoo import tiny_model

FAST = dict(retrain_steps=0, latency_batch=0, progress=False)


@pytest.mark.parametrize("name", sorted(_METHODS))
def test_config_round_trips_through_json(name):
    config = get_method(name).Config
    default = config()
    assert config.from_dict(json.loads(json.dumps(default.to_dict()))) == default
    assert list(default.to_dict()) == [*config.defaults()]


def test_from_dict_refuses_an_unknown_setting():
    with pytest.raises(ValueError, match=r"\['intervall'\] are not settings of UPopConfig"):
        get_method("upop").Config.from_dict({"intervall": 3})


@pytest.mark.parametrize(
    "method,bad,words",
    [
        ("upop", {"interval": 0}, "interval"),
        ("upop", {"saliency": "grad"}, "saliency must be one of"),
        ("upop", {"schedule": "linear"}, "schedule must be one of"),
        ("upop", {"monotone": "yes"}, "monotone must be true or false"),
        ("upop", {"ranking": "per_cost", "normalize": "kind"}, "ranking='per_cost'"),
        ("heads", {"rounds": 0}, "rounds"),
        ("heads", {"schedule": "cubic"}, "schedule must be one of"),
        ("mope", {"depth_share": 1.5}, "depth_share"),
        ("mope", {"group_size": 0}, "group_size"),
        ("lowrank", {"mode": "energy"}, "needs energy="),
        ("lowrank", {"mode": "fast"}, "mode must be one of"),
        ("magnitude", {"pattern": "4:8"}, "pattern must be one of"),
        ("magnitude", {"rounds": 2, "step": 3}, "step"),
        ("distill", {"layers": 0}, "layers"),
    ],
)
def test_a_config_with_a_bad_value_is_refused_as_compress_refuses_it(method, bad, words):
    with pytest.raises(ValueError, match=words) as built:
        get_method(method).Config(**bad)
    with pytest.raises(ValueError) as compressed:
        data = SyntheticCaptions("train", 16)
        vltrim.compress(tiny_model("CLIPModel"), method, 0.5, train_data=data, method_settings=bad, **FAST)
    assert str(compressed.value) == str(built.value)


def test_no_check_settings_left_on_methods():
    assert not hasattr(Method, "check_settings")
    assert not any(hasattr(m, "check_settings") for m in _METHODS.values())


def test_a_plan_records_its_configs_plan_settings():
    model = tiny_model("CLIPModel")
    plan = vltrim.plan(model, "magnitude", 0.5, scope="layer")
    config = get_method("magnitude").Config(scope="layer")
    assert plan.settings == config.plan_settings(step=1) == {**config.to_dict(), "step": 1}
    plan = vltrim.plan(model, "random", 0.5, seed=3)
    assert plan.settings == get_method("random").Config().plan_settings(units=["head_dims", "neurons"], seed=3)
