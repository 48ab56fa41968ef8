"""Chains: compress(method=[...]) runs one stage per method on the previous stage's model, distilling from the original;
the result records every plan and reloads bit-exactly; every stage is checked before any work; the CLI's --then."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from conftest import max_diff, run
from typer.testing import CliRunner

import vltrim
from vltrim.cli import app, split_then
from vltrim.data import SyntheticCaptions
from vltrim.structure.sparsify import check_sparsity, sparsified
from vltrim.train.distill import kept_teacher_layers
from vltrim.zoo import tiny_model

chain_mod = importlib.import_module("vltrim.run.chain")
compress_mod = importlib.import_module("vltrim.tasks.loss")  # where compress's loss (task_loss) lives
FAST = dict(batch_size=16, latency_batch=0, progress=False)
DHL = [
    ("distill", {"layers": 1}),
    ("heads", {"target": 0.3, "num_batches": 2}),
    ("lowrank", {"target": 0.2, "retrain_steps": 3}),
]


def _data(n: int = 32) -> SyntheticCaptions:
    return SyntheticCaptions("train", n)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _reloads_bit_exactly(model: torch.nn.Module, path) -> torch.nn.Module:
    vltrim.save(model, path)
    again = vltrim.load(path)
    assert _same_state(model, again)
    inputs = vltrim.get_adapter(model).reference_inputs(model, 2)
    assert max_diff(run(model, inputs), run(again, inputs)) == 0.0
    return again


def test_chain_distill_heads_lowrank_records_every_stage_and_reloads_bit_exactly(tmp_path):
    model = tiny_model("CLIPModel")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = vltrim.compress(
        model, DHL, train_data=_data(), eval_data=SyntheticCaptions("val", 16), retrain_steps=2, **FAST
    )
    assert (
        [p.method for p in res.plans]
        == ["distill", "heads", "lowrank"]
        == [p.method for p in vltrim.plans_of(res.model)]
    )
    assert (
        res.plan is res.plans[-1]
        and res.plans[1].kinds
        and set(res.plans[1].kinds.values()) == {"heads"}
        and res.plans[2].factorize
    )
    rep = res.report
    assert rep["method"] == ["distill", "heads", "lowrank"] and rep["target"] == [0.5, 0.3, 0.2]
    assert [s["stage"] for s in rep["stages"]] == [1, 2, 3] and [s["method"] for s in rep["stages"]] == rep["method"]
    assert [s["retrain_steps"] for s in rep["stages"]] == [2, 2, 3]  # the stage's own option wins over the shared one
    params = [s["params"] for s in rep["stages"]]
    assert params == sorted(params, reverse=True) and params[-1] == rep["params"] == vltrim.count_params(res.model)
    assert (
        all("mean_R@1" in s["after"] for s in rep["stages"])
        and rep["after"] == rep["stages"][-1]["after"]
        and "before" in rep
    )
    assert rep["plan"] == [p.achieved for p in res.plans]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    again = _reloads_bit_exactly(res.model, tmp_path / "m")
    assert [p.method for p in vltrim.plans_of(again)] == ["distill", "heads", "lowrank"]


def test_chain_with_magnitude_last_keeps_its_zeros_and_reloads_bit_exactly(tmp_path):
    res = vltrim.compress(
        tiny_model("CLIPModel"),
        [("distill", {"layers": 1}), ("heads", {"target": 0.3, "num_batches": 2}), ("magnitude", {"target": 0.6})],
        train_data=_data(),
        retrain_steps=2,
        **FAST,
    )
    assert [p.method for p in res.plans] == ["distill", "heads", "magnitude"]
    assert sparsified(res.model) and check_sparsity(res.model) == []
    zeros = sum(int((lin.weight == 0).sum()) for lin in sparsified(res.model))
    assert zeros >= res.plans[-1].achieved["zero_weights"]
    _reloads_bit_exactly(res.model, tmp_path / "m")


def test_every_stage_is_checked_before_the_first_runs(monkeypatch):
    monkeypatch.setattr(chain_mod, "_run", lambda *a, **k: pytest.fail("a stage ran before every stage was checked"))
    model = tiny_model("CLIPModel")
    cases = [
        (
            [("distill", {"layers": 1}), "heads", ("lowrank", {"target": 1.5})],
            ValueError,
            r"stage 3 \(lowrank\): target",
        ),
        ([("distill", {"layers": 1}), "heads", ("lowrank", {"bogus": 1})], ValueError, r"stage 3 \(lowrank\).*bogus"),
        (
            ["distill", "heads", ("lowrank", {"mode": "energy", "energy": 2.0})],
            ValueError,
            r"stage 3 \(lowrank\).*energy",
        ),
        (["distill", ("heads", {"rounds": 0})], ValueError, r"stage 2 \(heads\).*rounds"),
        (["distill", "nosuch"], ValueError, r"stage 2 \(nosuch\): unknown method"),
        (
            ["distill", ("heads", {"work_dir": "x"})],
            ValueError,
            r"stage 2 \(heads\): work_dir is an option of the whole chain",
        ),
        (["magnitude", "heads"], ValueError, r"stage 2 \(heads\) makes a keep plan after stage 1 \(magnitude\)"),
        (
            ["lowrank", "magnitude", "distill"],
            ValueError,
            r"stage 3 \(distill\) makes a keep plan after stage 2 \(magnitude\) made a sparsify",
        ),
        (["distill", 7], TypeError, r"method\[1\]: a chain stage is a method name or \(name, \{options\}\)"),
        ([], ValueError, "empty chain"),
    ]
    for chain, kind, msg in cases:
        with pytest.raises(kind, match=msg):
            vltrim.compress(model, chain, train_data=_data(), retrain_steps=1, **FAST)
    with pytest.raises(ValueError, match="method_settings: a chain takes it per stage"):
        vltrim.compress(model, ["distill", "heads"], method_settings={"layers": 1}, train_data=_data(), **FAST)
    with pytest.raises(ValueError, match="plan: a chain"):
        vltrim.compress(model, ["distill", "heads"], plan=vltrim.plan(model, "l1", 0.3), train_data=_data(), **FAST)


def test_the_original_is_the_teacher_of_every_stage(monkeypatch):
    seen = []
    real = compress_mod.hidden_kd

    def spy(student, teacher, s, t):
        seen.append(
            (
                teacher,
                {k: kept_teacher_layers(student, teacher, k, len(t[k])) for k in s},
                [p.method for p in vltrim.plans_of(student)],
            )
        )
        return real(student, teacher, s, t)

    monkeypatch.setattr(compress_mod, "hidden_kd", spy)
    model = tiny_model("CLIPModel")
    vltrim.compress(
        model,
        [("distill", {"layers": 1}), ("heads", {"target": 0.3, "num_batches": 1, "kd_hidden": 1.0})],
        train_data=_data(),
        retrain_steps=1,
        **FAST,
    )
    stage2 = [s for s in seen if s[2] == ["distill", "heads"]]
    assert stage2 and all(teacher is model for teacher, _, _ in seen)
    assert stage2[0][1] == {"vision": [1], "text": [1]}  # mapped through the first stage's dropped layer


def test_chain_work_dir_has_stage_folders_and_resumes_after_the_last_finished_stage(tmp_path, monkeypatch):
    model, work = tiny_model("CLIPModel"), tmp_path / "w"
    kw = dict(train_data=_data(), retrain_steps=2, work_dir=work, checkpoint_every=1, **FAST)
    first = vltrim.compress(model, DHL, **kw)
    assert (work / "run.json").is_file() and json.loads((work / "run.json").read_text())["settings"]["chain"] == [
        "distill",
        "heads",
        "lowrank",
    ]
    for i, name in enumerate(["distill", "heads", "lowrank"], 1):
        d = work / f"stage-{i}-{name}"
        assert (d / "run.json").is_file() and (d / "retrain" / "log.jsonl").is_file()
        assert (d / "result.json").is_file() == (
            i < 3
        )  # a finished stage's model waits for a resume; the last is the output
    ran = []
    real = chain_mod._run
    monkeypatch.setattr(chain_mod, "_run", lambda net, s, teacher: ran.append(s.method) or real(net, s, teacher))
    again = vltrim.compress(model, DHL, resume=True, **kw)
    assert ran == ["lowrank"] and _same_state(first.model, again.model)
    assert [s["method"] for s in again.report["stages"]] == ["distill", "heads", "lowrank"]
    changed = [DHL[0], ("heads", {"target": 0.4, "num_batches": 2}), DHL[2]]
    with pytest.raises(vltrim.ResumeMismatchError, match="stage 2 target: checkpoints made with 0.3, now 0.4"):
        vltrim.compress(model, changed, resume=True, **kw)


def test_split_then():
    assert split_then(["m", "--method", "distill", "--then", "heads", "--target", "0.3", "--then=lowrank"]) == [
        ["m", "--method", "distill"],
        ["heads", "--target", "0.3"],
        ["lowrank"],
    ]
    assert split_then(["m", "--out", "x"]) == [["m", "--out", "x"]]


def test_cli_then_builds_a_chain_with_per_stage_options(tmp_path):
    out = tmp_path / "m"
    r = CliRunner().invoke(
        app,
        [
            "compress",
            "tiny:CLIPModel",
            "--out",
            str(out),
            "--method",
            "distill",
            "--set",
            "layers=1",
            "--data",
            "builtin",
            "--batch-size",
            "16",
            "--retrain-steps",
            "1",
            "--latency-batch",
            "0",
            "--then",
            "heads",
            "--target",
            "0.3",
            "--set",
            "num_batches=2",
            "--kd-attention",
            "0.5",
            "--then",
            "lowrank",
            "--target",
            "0.2",
            "--retrain-steps",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    small = vltrim.load(out)
    assert [p.method for p in vltrim.plans_of(small)] == ["distill", "heads", "lowrank"]
    rep = json.loads((out / "report.json").read_text())
    assert [(s["method"], s["target"], s["retrain_steps"]) for s in rep["stages"]] == [
        ("distill", 0.5, 1),
        ("heads", 0.3, 1),
        ("lowrank", 0.2, 2),
    ]
    assert vltrim.plans_of(small)[0].settings["layers"] == {
        "vision": 1,
        "text": 1,
    }  # --set before the first --then: stage 1's


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--then", "heads", "--data", "builtin"], "--then heads (stage 2): --data applies to the whole chain"),
        (["--then", "--target", "0.3"], "--then needs a method name first"),
        (["--then", "heads", "--bogus", "1"], "--then heads (stage 2): No such option: --bogus"),
        (["--then", "heads", "--target", "abc"], "--then heads (stage 2): Invalid value for '--target'"),
        (["--then", "heads", "--method", "l1"], "a stage's method is the name after --then"),
        (["--then", "magnitude", "--then", "heads"], "stage 3 (heads) makes a keep plan after stage 2 (magnitude)"),
        (["--then", "heads", "--target", "2"], "stage 2 (heads): target"),
        (["--plan", "p.json", "--then", "heads"], "--plan applies one saved plan"),
    ],
)
def test_cli_then_errors_name_the_stage(tmp_path, args, msg):
    r = CliRunner().invoke(
        app,
        ["compress", "tiny:CLIPModel", "--out", str(tmp_path / "m"), "--method", "distill", "--data", "builtin", *args],
    )
    assert r.exit_code == 2, r.output
    assert msg in " ".join(r.output.split())
