"""vltrim.study: one row per cell + the original, resumable cell by cell, options checked before any work, the
Pareto front, and the `vltrim study` command."""

from __future__ import annotations

import csv
import importlib
import json

import pytest
import transformers as tf
from typer.testing import CliRunner

import vltrim
from vltrim.cli import app
from vltrim.data import SyntheticCaptions
from vltrim.run.study import StudyError, pareto_front
from vltrim.zoo import TINY_TEXT, TINY_VISION, tiny_model

study_module = importlib.import_module("vltrim.run.study")  # `vltrim.run.study` is the function
TRAIN, EVAL = SyntheticCaptions("train", 32), SyntheticCaptions("val", 24)
FAST = dict(
    retrain_steps=1,
    batch_size=16,
    latency_batches=(1, 4),
    latency_rounds=2,
    latency_warmup=0,
    min_round_s=0.0,
    progress=False,
)


def _study(out, methods=("l1", "distill"), ratios=(0.25, 0.5), model=None, **kw):
    opts = {**FAST, **kw}
    return vltrim.study(
        model if model is not None else tiny_model("CLIPModel"),
        task="retrieval",
        train_data=TRAIN,
        eval_data=EVAL,
        methods=list(methods),
        ratios=list(ratios),
        out=out,
        **opts,
    )


class Killed(BaseException):
    """Stands for the process being killed mid-study (not an Exception: nothing may catch it)."""


def _counting(monkeypatch, kill_at: int | None = None) -> list[str]:
    """Count compress calls of the study (the method of each); raise Killed at call number ``kill_at``."""
    calls: list[str] = []
    real = study_module.compress

    def counted(*a, **kw):
        calls.append(f"{kw['method']}-{kw['target']}")
        if kill_at is not None and len(calls) == kill_at:
            raise Killed
        return real(*a, **kw)

    monkeypatch.setattr(study_module, "compress", counted)
    return calls


@pytest.mark.slow
def test_results_have_one_row_per_cell_and_the_original(tmp_path):
    out = tmp_path / "s"
    res = _study(out, methods=("l1", "2:4", "distill"), ratios=(0.5, 0.75))
    # l1 at 0.75 cannot be reached on this tiny model (align 8): reported, not run; 2:4 is one cell at 50%
    names = [r["cell"] for r in res.rows]
    assert names == ["original", "l1-0.5", "l1-0.75", "2of4-0.5", "distill-0.5", "distill-0.75"]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["cell"] for r in rows] == names
    for key in (
        "metric",
        "metric_vs_teacher",
        "params",
        "macs",
        "latency_b1_ms",
        "speedup_b1",
        "latency_b4_ms",
        "speedup_b4",
        "retrain_steps",
        "wall_s",
        "pareto",
    ):
        assert key in rows[0]
    by = {r["cell"]: r for r in res.rows}
    assert by["original"]["speedup_b1"] == 1.0 and by["original"]["metric_vs_teacher"] == 1.0
    assert by["l1-0.75"]["metric"] is None and "not reachable" in by["l1-0.75"]["achieved"]
    assert by["l1-0.5"]["params"] < by["original"]["params"] and by["l1-0.5"]["retrain_steps"] == 1
    assert (
        by["2of4-0.5"]["params"] == by["original"]["params"]
        and by["2of4-0.5"]["nonzero_params"] < by["original"]["nonzero_params"]
    )
    assert by["distill-0.5"]["macs"] < by["original"]["macs"]
    assert all(by[c]["latency_b4_ms"] > 0 for c in names if c != "l1-0.75")
    md = (out / "results.md").read_text()
    assert "0.5 (fixed)" in md and "not run" in md and "one interleaved run" in md and "Measured on" in md
    assert md.count("\n| ") == 1 + len(names)  # header + one line per row
    for stem in ("metric_vs_params", "metric_vs_macs", "metric_vs_latency_b1", "metric_vs_latency_b4"):
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    mach = json.loads((out / "results.json").read_text())["machine"]
    assert {"platform", "cpu", "torch", "torch_threads"} <= set(mach)
    again = vltrim.load(out / "models" / "distill-0.5")  # every cell's model is kept and reloads
    assert len(again.vision_model.encoder.layers) == 1
    # every front is non-empty and holds only rows that ran
    for label in ("latency b1", "latency b4", "params", "MACs"):
        on = [r for r in res.rows if label in r["pareto"].split(", ")]
        assert on and all(r["metric"] is not None for r in on)


@pytest.mark.slow
def test_a_killed_study_reruns_only_unfinished_cells(tmp_path, monkeypatch):
    out = tmp_path / "s"
    calls = _counting(monkeypatch, kill_at=3)
    with pytest.raises(Killed):
        _study(out)
    assert calls == ["l1-0.25", "l1-0.5", "distill-0.25"]
    assert sorted(p.stem for p in (out / "cells").glob("*.json")) == ["l1-0.25", "l1-0.5", "original"]
    assert not list((out / "cells").glob(".*"))  # no temporary file left
    first = json.loads((out / "cells" / "l1-0.5.json").read_text())

    calls = _counting(monkeypatch)
    res = _study(out)
    assert calls == ["distill-0.25", "distill-0.5"]  # the finished l1 cells were not recomputed
    by = {r["cell"]: r for r in res.rows}
    assert by["l1-0.5"]["metric"] == first["metrics"]["mean_R@1"] and by["l1-0.5"]["cached"]
    assert len(res.rows) == 5

    (out / "cells" / "l1-0.25.json").unlink()  # one lost cell: only it is recomputed
    calls = _counting(monkeypatch)
    _study(out)
    assert calls == ["l1-0.25"]


def test_another_settings_study_in_out_is_refused_unless_override(tmp_path, monkeypatch):
    out = tmp_path / "s"
    _study(out, methods=("distill",), ratios=(0.5,), latency_batches=())
    with pytest.raises(StudyError, match="retrain_steps: made with 1, now 2"):
        _study(out, methods=("distill",), ratios=(0.5,), latency_batches=(), retrain_steps=2)
    with pytest.raises(StudyError, match="model"):
        _study(out, methods=("distill",), ratios=(0.5,), latency_batches=(), model=tiny_model("CLIPModel", seed=1))
    calls = _counting(monkeypatch)
    res = _study(out, methods=("distill",), ratios=(0.5,), latency_batches=(), retrain_steps=2, override=True)
    assert calls == ["distill-0.5"] and res.rows[1]["retrain_steps"] == 2
    calls = _counting(monkeypatch)
    _study(out, methods=("distill",), ratios=(0.5,), latency_batches=(), retrain_steps=2)  # now it is this study
    assert calls == []


@pytest.mark.parametrize(
    "opts,words",
    [
        ({"ratios": [0]}, ["ratios", "(0, 1)"]),
        ({"ratios": [1.5]}, ["ratios", "(0, 1)"]),
        ({"ratios": []}, ["ratios", "empty"]),
        ({"ratios": [0.5, 0.5]}, ["ratios", "more than once"]),
        ({"methods": ["nope"]}, ["methods", "unknown method 'nope'", "2:4", "upop", "magnitude"]),
        ({"methods": []}, ["methods", "empty"]),
        ({"latency_batches": [0]}, ["latency_batches"]),
        ({"eval_data": None}, ["eval_data"]),
        ({"compress_options": {"target": 0.3}}, ["compress_options", "target"]),
        ({"method_settings": {"lowrank": {"mode": "energy"}}}, ["method_settings", "lowrank"]),
        ({"method_settings": {"l1": {"bogus": 1}}}, ["l1 at ratio 0.5", "bogus"]),
        ({"retrain_steps": -1}, ["retrain_steps"]),
    ],
)
def test_bad_options_fail_before_any_work_naming_the_option(tmp_path, opts, words):
    args = dict(
        model=tiny_model("CLIPModel"),
        task="retrieval",
        train_data=TRAIN,
        eval_data=EVAL,
        methods=["l1"],
        ratios=[0.5],
        out=tmp_path / "s",
        **FAST,
    )
    args.update(opts)
    with pytest.raises((ValueError, TypeError)) as e:
        vltrim.study(**args)
    for w in words:
        assert w in str(e.value)
    assert not (tmp_path / "s").exists()


def test_2_4_on_a_model_whose_linear_widths_are_not_multiples_of_4_is_refused(tmp_path):
    odd = dict(hidden_size=62, num_attention_heads=2, intermediate_size=90)
    model = tf.CLIPModel(
        tf.CLIPConfig(vision_config={**TINY_VISION, **odd}, text_config={**TINY_TEXT, **odd}, projection_dim=32)
    ).eval()
    with pytest.raises(ValueError, match=r"methods: '2:4' cannot run on this CLIPModel: .*in_features=62"):
        _study(tmp_path / "s", methods=("l1", "2:4"), model=model)
    assert not (tmp_path / "s").exists()


def test_an_out_that_is_a_file_or_someone_elses_directory_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StudyError, match="is a file"):
        _study(tmp_path / "f")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(StudyError, match="not a vltrim study"):
        _study(tmp_path / "d")


def test_compress_options_reach_every_cell_and_budget_options_only_methods_that_take_them(tmp_path):
    # align=1 makes l1 at 75% reachable on the tiny model; magnitude takes no align and must not be refused for it
    res = _study(
        tmp_path / "s",
        methods=("magnitude", "l1"),
        ratios=(0.75,),
        latency_batches=(),
        compress_options={"align": 1, "kd_weight": 0.5},
    )
    by = {r["cell"]: r for r in res.rows}
    assert by["l1-0.75"]["metric"] is not None and by["l1-0.75"]["achieved"].startswith("75.")
    assert "75.0% of block-Linear weights zero" in by["magnitude-0.75"]["achieved"]
    assert json.loads((tmp_path / "s" / "study.json").read_text())["settings"]["compress_options"] == {
        "align": 1,
        "kd_weight": 0.5,
    }


def test_pareto_front_on_a_hand_made_table():
    #            a    b    c    d    e    f    g
    costs = [1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0]
    metric = [0.5, 0.7, 0.6, 0.7, 0.9, 0.9, 0.8]
    # c: b costs the same and scores higher; d: b scores the same and costs less; g: e is cheaper and better;
    # e and f are equal (neither beats the other): both stay
    assert pareto_front(costs, metric) == [True, True, False, False, True, True, False]
    assert pareto_front([], []) == []
    assert pareto_front([3.0], [0.1]) == [True]
    with pytest.raises(ValueError):
        pareto_front([1.0], [])


def test_cli_study_smoke_and_option_errors(tmp_path):
    out = tmp_path / "cli"
    r = CliRunner().invoke(
        app,
        [
            "study",
            "tiny:CLIPModel",
            "--data",
            "builtin",
            "--methods",
            "l1,2:4",
            "--ratios",
            "0.5",
            "--retrain-steps",
            "1",
            "--out",
            str(out),
            "--latency-batches",
            "1,4",
            "--latency-rounds",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    with open(out / "results.csv") as f:
        assert [row["cell"] for row in csv.DictReader(f)] == ["original", "l1-0.5", "2of4-0.5"]
    assert (out / "metric_vs_latency_b4.png").exists() and (out / "models" / "l1-0.5" / "plan.json").exists()
    for args, word in [
        (["--ratios", "0,1.5"], "--ratios"),
        (["--ratios", "a"], "--ratios"),
        (["--methods", "foo"], "--methods"),
        (["--methods", ","], "--methods"),
        (["--latency-batches", "0"], "--latency-batches"),
        (["--data", "missing.jsonl"], "--eval-data"),
    ]:
        base = {"--data": "builtin", "--out": str(tmp_path / "bad")}
        base.update(dict(zip(args[::2], args[1::2])))
        r = CliRunner().invoke(app, ["study", "tiny:CLIPModel", *[x for kv in base.items() for x in kv]])
        assert r.exit_code == 2 and word in r.output, (args, r.output)
    assert not (tmp_path / "bad").exists()
