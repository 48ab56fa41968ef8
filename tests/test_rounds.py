"""Prune-retrain rounds through compress (method_settings={"rounds": R}): magnitude and heads prune in R steps with the
retraining budget split between them, zeros stay zero, one report row per round, and the result reloads bit-exactly."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import max_diff, run
from torch import nn

import vltrim
from vltrim.arch import get_adapter
from vltrim.data import SyntheticCaptions
from vltrim.methods.magnitude import sparsity_schedule
from vltrim.structure.sparsify import check_sparsity
from vltrim.zoo import tiny_model

FAST = dict(batch_size=16, latency_batch=0, progress=False)


def _lins(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in get_adapter(model).linears(model).items() if isinstance(m, nn.Linear)}


def _heads(model: nn.Module) -> int:
    return sum(t.block(layer).attn.num_heads for t in get_adapter(model).towers(model) for layer in t.layers)


def _compress(method: str, target: float, rounds: int, tmp_path, **kw):
    return vltrim.compress(
        tiny_model("CLIPModel"),
        method,
        target,
        train_data=SyntheticCaptions("train", 32),
        eval_data=SyntheticCaptions("val", 16),
        retrain_steps=7,
        work_dir=tmp_path / "w",
        method_settings={"rounds": rounds, **kw},
        **FAST,
    )


def _reloads_bit_exactly(model: nn.Module, path) -> None:
    vltrim.save(model, path)
    again = vltrim.load(path)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    inputs = get_adapter(model).reference_inputs(model, 2)
    assert max_diff(run(model, inputs), run(again, inputs)) == 0.0


def test_magnitude_rounds_prune_retrain_prune_more(tmp_path):
    res = _compress("magnitude", 0.8, 3, tmp_path)
    assert [p.method for p in res.plans] == ["magnitude"] * 3 == [p.method for p in vltrim.plans_of(res.model)]
    rows = res.report["rounds"]
    assert [r["round"] for r in rows] == [1, 2, 3] and [r["retrain_steps"] for r in rows] == [2, 2, 3]  # 7 split evenly
    assert (
        all("mean_R@1" in r["after"] for r in rows) and res.report["after"] == rows[-1]["after"]
    )  # one metric per round
    sched = sparsity_schedule(0.8, 3)
    assert [r["target"]["sparsity"] for r in rows] == pytest.approx(sched)
    lins = _lins(res.model)
    total = sum(m.weight.numel() for m in lins.values())
    assert sum(int((m.weight == 0).sum()) for m in lins.values()) == round(
        0.8 * total
    )  # exactly the target, after retraining
    assert check_sparsity(res.model) == []
    first = _lins(vltrim.load(tmp_path / "w" / "round-1" / "result"))  # round 1's retrained model, kept for a resume
    assert sum(int((m.weight == 0).sum()) for m in first.values()) == round(sched[0] * total)
    for n, m in lins.items():  # the zeros of round 1 are still zero after two more rounds of retraining
        assert bool((m.weight[first[n].weight == 0] == 0).all()), n
    assert not any(torch.equal(m.weight, first[n].weight) for n, m in lins.items())  # the kept weights did retrain
    _reloads_bit_exactly(res.model, tmp_path / "m")


def test_heads_rounds_prune_more_heads_of_the_retrained_model(tmp_path):
    model = tiny_model("CLIPModel")
    res = _compress("heads", 0.5, 3, tmp_path, num_batches=2)
    rows = res.report["rounds"]
    assert len(rows) == 3 and len(res.plans) == 3 and all("mean_R@1" in r["after"] for r in rows)
    assert [p.settings["prune_round"] for p in res.plans] == [[1, 3], [2, 3], [3, 3]]
    params = [r["params"] for r in rows]
    assert params == sorted(params, reverse=True) and len(set(params)) == 3  # every round pruned more
    assert _heads(res.model) == _heads(model) // 2  # 16 equal heads, 50%: exactly 8 left
    _reloads_bit_exactly(res.model, tmp_path / "m")


def test_rounds_resume_from_the_last_finished_round(tmp_path, monkeypatch):
    first = _compress("heads", 0.5, 2, tmp_path, num_batches=2)
    mod, searched = importlib.import_module("vltrim.run.runner"), []
    real = mod._plan
    monkeypatch.setattr(mod, "_plan", lambda *a: searched.append(a[4]) or real(*a))
    again = vltrim.compress(
        tiny_model("CLIPModel"),
        "heads",
        0.5,
        train_data=SyntheticCaptions("train", 32),
        eval_data=SyntheticCaptions("val", 16),
        retrain_steps=7,
        work_dir=tmp_path / "w",
        resume=True,
        method_settings={"rounds": 2, "num_batches": 2},
        **FAST,
    )
    a, b = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and again.report["rounds"][0] == first.report["rounds"][0]
    assert searched == [2]  # round 1 came back from work_dir/round-1/result


def test_one_round_keeps_the_flat_report():
    res = vltrim.compress(
        tiny_model("CLIPModel"), "magnitude", 0.5, train_data=SyntheticCaptions("train", 32), retrain_steps=1, **FAST
    )
    assert "rounds" not in res.report and res.plans == [res.plan] and "sparsity" in res.report["plan"]


def test_magnitude_step_with_rounds_is_refused_before_any_work():
    with pytest.raises(ValueError, match="step: compress runs all the rounds"):
        vltrim.compress(
            tiny_model("CLIPModel"), "magnitude", 0.8, method_settings={"rounds": 3, "step": 1}, retrain_steps=0, **FAST
        )
    with pytest.raises(ValueError, match="rounds"):
        vltrim.compress(
            tiny_model("CLIPModel"), "magnitude", 0.8, method_settings={"rounds": 0}, retrain_steps=0, **FAST
        )
