"""The classic toolbox through compress and the CLI: magnitude keeps its zeros through retraining and reloads,
lowrank calibrates on the training data and reloads bit-exactly, options a method would ignore are refused."""

from __future__ import annotations

import pytest
from conftest import max_diff, run
from typer.testing import CliRunner

import vltrim
from vltrim.cli import app
from vltrim.data import SyntheticCaptions
from vltrim.structure.sparsify import check_sparsity, sparsified
from vltrim.zoo import tiny_model


def _compress(method: str, target: float = 0.5, **kw):
    return vltrim.compress(
        tiny_model("CLIPModel"),
        method,
        target,
        train_data=SyntheticCaptions("train", 32),
        retrain_steps=3,
        batch_size=16,
        latency_batch=0,
        progress=False,
        **kw,
    )


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_magnitude_keeps_its_zeros_through_retraining_and_reloads(tmp_path, pattern):
    res = _compress("magnitude", method_settings={"pattern": pattern})
    assert sparsified(res.model) and check_sparsity(res.model) == []
    zeros = sum(int((lin.weight == 0).sum()) for lin in sparsified(res.model))
    assert zeros >= res.plan.achieved["zero_weights"]
    vltrim.save(res.model, tmp_path / "m")
    again = vltrim.load(tmp_path / "m")
    inputs = vltrim.get_adapter(res.model).reference_inputs(res.model, 2)
    assert max_diff(run(res.model, inputs), run(again, inputs)) == 0.0


def test_lowrank_calibrates_on_training_data_and_reloads(tmp_path):
    res = _compress("lowrank", 0.3)
    assert res.plan.factorize and res.plan.settings["weighted"] is True
    vltrim.save(res.model, tmp_path / "m")
    inputs = vltrim.get_adapter(res.model).reference_inputs(res.model, 2)
    assert max_diff(run(res.model, inputs), run(vltrim.load(tmp_path / "m"), inputs)) == 0.0


@pytest.mark.parametrize(
    "method,opts,word",
    [
        ("magnitude", {"metric": "macs"}, "metric"),
        ("lowrank", {"allocation": "uniform"}, "allocation"),
        ("magnitude", {"max_ratio": 0.5}, "max_ratio"),
    ],
)
def test_an_option_the_method_would_ignore_is_refused(method, opts, word):
    with pytest.raises(ValueError) as e:
        _compress(method, **opts)
    assert word in str(e.value) and method in str(e.value)


def test_cli_passes_method_settings(tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "compress",
            "tiny:CLIPModel",
            "--out",
            str(tmp_path / "m"),
            "--method",
            "magnitude",
            "--set",
            "pattern=2:4",
            "--latency-batch",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    plan = vltrim.Plan.load(tmp_path / "m" / "plan.json")
    assert {s["pattern"] for s in plan.sparsify.values()} == {"2:4"}
    r = CliRunner().invoke(
        app,
        [
            "compress",
            "tiny:CLIPModel",
            "--out",
            str(tmp_path / "d"),
            "--method",
            "distill",
            "--set",
            'layers={"vision": 1}',
            "--latency-batch",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    assert len(vltrim.load(tmp_path / "d").vision_model.encoder.layers) == 1
    r = CliRunner().invoke(app, ["compress", "tiny:CLIPModel", "--out", str(tmp_path / "x"), "--set", "novalue"])
    assert r.exit_code != 0 and "--set" in r.output
