"""Reports that stand alone: report.json, the model card, widths.png, `vltrim report` and `vltrim measure` (tiny models)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import pytest
import torch
from typer.testing import CliRunner

import vltrim
from vltrim.cli import app
from vltrim.data import SyntheticCaptions
from vltrim.io import read_report
from vltrim.report import NOT_RETRAINED, layer_widths, plot_widths
from vltrim.structure.plan import Plan
from vltrim.zoo import tiny_model

matplotlib.use("Agg")
runner = CliRunner()


def _flat(text: str) -> str:
    """Terminal output with panel borders and line breaks taken out (rich wraps long lines)."""
    return " ".join(text.replace("│", " ").split())


def _data(n: int) -> SyntheticCaptions:
    return SyntheticCaptions("train", n, image_size=32, max_length=16)


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """A tiny CLIP cut by l1, retrained 2 steps, evaluated, saved as a CompressResult."""
    res = vltrim.compress(
        tiny_model("CLIPModel"),
        "l1",
        0.4,
        train_data=_data(32),
        eval_data=_data(16),
        retrain_steps=2,
        batch_size=16,
        latency_batch=1,
        progress=False,
    )
    out = tmp_path_factory.mktemp("r") / "m"
    vltrim.save(res, out)
    return res, out


def test_report_json_and_card_carry_everything(retrained):
    res, out = retrained
    rep = json.loads((out / "report.json").read_text())
    assert rep["format"] == "vltrim.report" and rep["method"] == "l1" and rep["target"] == 0.4
    assert {"before", "after_search", "after"} <= set(rep) and "mean_R@1" in rep["after"]
    assert rep["source"]["class"] == "CLIPModel" and rep["source"]["params"] > rep["model"][
        "params"
    ] == vltrim.count_params(res.model)
    assert rep["model"]["macs"] < rep["source"]["macs"]
    assert rep["data"]["train"] == {"type": "SyntheticCaptions", "items": 32} and rep["data"]["eval"]["items"] == 16
    assert rep["settings"]["batch_size"] == 16 and rep["retrain_steps"] == 2 and rep["plans"][0]["method"] == "l1"
    assert (
        rep["speed"]["b"]["latency_ms"] > 0 and rep["machine"]["cpu"] and rep["machine"]["torch"] == torch.__version__
    )
    assert not any(w.startswith(NOT_RETRAINED) for w in rep["warnings"])
    card = (out / "README.md").read_text()
    for part in (
        "## Method and settings",
        "## Data and steps",
        "## Quality",
        "after pruning",  # l1 does not train while it searches
        "after retraining",
        "## Cost",
        "latency measured on",
        "MACs",
        "![kept widths per layer](widths.png)",
        "vltrim.load",
    ):
        assert part in card, part
    assert "WARNING" not in card
    assert (out / "widths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sums = json.loads((out / "vltrim.json").read_text())
    assert (
        set(sums["files"]) == {"config.json", "plan.json", "model.safetensors", "modeling_vltrim.py"}
        and "report.json" in sums["reports"]
    )
    again = vltrim.load(out)
    assert all(torch.equal(a, b) for a, b in zip(res.model.state_dict().values(), again.state_dict().values()))


def test_loud_warning_when_pruned_without_retraining(tmp_path):
    res = vltrim.compress(tiny_model("BertModel"), "l1", 0.5, retrain_steps=0, latency_batch=0, progress=False)
    vltrim.save(res, tmp_path / "m")
    rep, checked = read_report(tmp_path / "m")
    assert rep["warnings"][0].startswith(NOT_RETRAINED) and checked is True
    assert any(w.startswith("Not evaluated") for w in rep["warnings"]) and rep["speed"] is None
    card = (tmp_path / "m" / "README.md").read_text()
    assert f"> **WARNING: {NOT_RETRAINED}" in card and "latency not measured" in card
    r = runner.invoke(app, ["report", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "WARNING" in r.output and NOT_RETRAINED in _flat(r.output) and "Method and settings" in r.output


def test_factorised_model_widths_plot_shows_the_ranks(tmp_path):
    """A low-rank model keeps every width: its widths.png shows what its factorised Linears keep instead."""
    res = vltrim.compress(tiny_model("BertModel"), "lowrank", 0.3, retrain_steps=0, latency_batch=0, progress=False)
    vltrim.save(res, tmp_path / "m")
    assert (tmp_path / "m" / "report.json").is_file() and (tmp_path / "m" / "widths.png").exists()
    card = (tmp_path / "m" / "README.md").read_text()
    assert "lowrank" in card and "Linears factorised" in card
    rep = json.loads((tmp_path / "m" / "report.json").read_text())
    assert all(0 < r["low_rank"]["params_kept"] < 1 for r in rep["widths"]["text"])


def test_chain_report_lists_every_stage_and_widths_follow_dropped_layers(tmp_path):
    res = vltrim.compress(
        tiny_model("CLIPModel"),
        [("distill", {"layers": 1}), ("heads", {"target": 0.3, "num_batches": 1})],
        train_data=_data(16),
        retrain_steps=1,
        batch_size=8,
        latency_batch=0,
        progress=False,
    )
    vltrim.save(res, tmp_path / "m")
    rep = json.loads((tmp_path / "m" / "report.json").read_text())
    assert [s["method"] for s in rep["stages"]] == ["distill", "heads"] and [p["method"] for p in rep["plans"]] == [
        "distill",
        "heads",
    ]
    assert all("settings" in s for s in rep["stages"]) and rep["data"]["train"]["items"] == 16
    card = (tmp_path / "m" / "README.md").read_text()
    assert "stage 1 (distill)" in card and "stage 2 (heads)" in card and "layers=" in card
    kept = _actual_widths(res.model)
    for tower, rows in rep["widths"].items():
        assert len(rows) == 2 and sum(bool(r.get("dropped")) for r in rows) == 1
        live = [r for r in rows if not r.get("dropped")]
        assert [(r["heads"][0], r["neurons"][0]) for r in live] == kept[tower]
        assert all(r["heads"][1] == 4 and r["neurons"][1] == 96 for r in live)


def _actual_widths(model) -> dict[str, list[tuple[int, int]]]:
    ad = vltrim.get_adapter(model)
    return {
        t.name: [(t.block(lay).attn.num_heads, t.block(lay).fc1.out_features) for lay in t.layers]
        for t in ad.towers(model)
    }


def test_layer_widths_map_later_plans_to_original_layers():
    """A plan that drops layer 0, then one that names the old layer 1 as layer 0: widths land on original layer 1."""
    m = tiny_model("BertModel")
    groups = vltrim.inspect(m)
    drop = Plan.from_keep("BertModel", groups, {"text.layers": [1]}, method="manual")
    small = vltrim.apply_plan(m, drop)
    cut = Plan.from_keep(
        "BertModel",
        vltrim.inspect(small),
        {"text.layers.0.mlp.neurons": list(range(40)), "text.layers.0.attn.heads": [0, 2]},
        method="manual",
    )
    smaller = vltrim.apply_plan(small, cut)
    rows = layer_widths(smaller, vltrim.plans_of(smaller))["text"]
    assert rows[0] == {"layer": 0, "dropped": True}
    assert rows[1] == {"layer": 1, "heads": [2, 4], "head_dims": [16, 16], "neurons": [40, 96]}


def test_widths_png_of_many_layers_has_readable_ticks(tmp_path):
    widths = {
        "vision": [
            {"layer": i, "heads": [8 if i % 3 else 12, 12], "head_dims": [64, 64], "neurons": [1024 + 64 * i, 3072]}
            if i % 5
            else {"layer": i, "dropped": True}
            for i in range(24)
        ],
        "text": [{"layer": i, "heads": [8, 8], "head_dims": [48, 64], "neurons": [2048, 2048]} for i in range(12)],
    }
    file = plot_widths(widths, tmp_path / "w.png", title="24 + 12 layers")
    assert file.read_bytes()[:4] == b"\x89PNG"


def _overlaps(fig, ax) -> list[tuple[str, str]]:
    """Pairs of visible x tick labels whose drawn boxes overlap."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(r)) for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1 :] if ba.overlaps(bb)]


@pytest.mark.parametrize("low, high", [(1_234_567, 5_432_100), (40_000_000, 151_277_313), (12_000, 90_000)])
def test_benchmark_line_plot_tick_labels_do_not_overlap(tmp_path, monkeypatch, low, high):
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    monkeypatch.setattr(plt, "close", lambda fig=None: None)  # keep the figure to measure it
    from machine import line_plot

    xs = [low + (high - low) * k / 7 for k in range(8)]
    line_plot(
        {
            "upop": [(x, 0.5 + k / 20) for k, x in enumerate(xs)],
            "l1": [(x * 0.97, 0.4 + k / 20) for k, x in enumerate(xs)],
        },
        (0.8, "teacher"),
        "parameters",
        "mean R@1",
        tmp_path / "p.png",
        "t",
    )
    fig = plt.gcf()
    assert (tmp_path / "p.png").is_file() and _overlaps(fig, fig.axes[0]) == []
    plt.close("all")


def test_plain_save_still_works_and_drops_an_old_report(retrained, tmp_path):
    res, _ = retrained
    d = tmp_path / "m"
    vltrim.save(res, d)
    assert (d / "report.json").is_file() and (d / "widths.png").is_file()
    vltrim.save(res.model, d)
    assert not (d / "report.json").exists() and not (d / "widths.png").exists()
    assert "saved without a compression report" in (d / "README.md").read_text()
    rep, checked = read_report(d)
    assert checked is None and rep["plans"][0]["method"] == "l1" and rep["warnings"][0].startswith("No report.json")
    r = runner.invoke(app, ["report", str(d)])
    assert r.exit_code == 0 and "No report.json" in r.output and "l1" in r.output
    assert vltrim.count_params(vltrim.load(d)) == vltrim.count_params(res.model)


def test_edited_report_is_flagged_but_the_model_still_loads(retrained, tmp_path):
    res, _ = retrained
    d = tmp_path / "m"
    vltrim.save(res, d)
    rep = json.loads((d / "report.json").read_text())
    rep["after"]["mean_R@1"] = 0.99
    (d / "report.json").write_text(json.dumps(rep))
    assert read_report(d)[1] is False
    vltrim.load(d)  # the model's files are unchanged
    r = runner.invoke(app, ["report", str(d)])
    assert r.exit_code == 0 and "edited after saving" in _flat(r.output)
    r = runner.invoke(app, ["report", str(d), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["after"]["mean_R@1"] == 0.99


def test_cli_compress_records_the_source_and_data_and_report_prints_it(tmp_path):
    out = tmp_path / "c"
    r = runner.invoke(
        app,
        [
            "compress",
            "tiny:CLIPModel",
            "--out",
            str(out),
            "--target",
            "0.4",
            "--data",
            "builtin",
            "--eval-data",
            "builtin",
            "--retrain-steps",
            "1",
            "--batch-size",
            "16",
            "--latency-batch",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["source"]["name"] == "tiny:CLIPModel" and rep["data_given"] == {"train": "builtin", "eval": "builtin"}
    assert (out / "widths.png").is_file() and "builtin (SyntheticCaptions" in (out / "README.md").read_text()
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    for part in ("tiny:CLIPModel", "Quality", "mean_R@1", "Cost", "Kept widths", "widths.png"):
        assert part in r.output, part


def test_cli_report_errors_name_the_directory(tmp_path):
    r = runner.invoke(app, ["report", str(tmp_path / "none")])
    assert r.exit_code == 2 and "does not exist" in _flat(r.output)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    r = runner.invoke(app, ["report", str(tmp_path / "hf")])
    assert r.exit_code == 2 and "has no plan.json: not a vltrim model directory" in _flat(r.output)


def test_cli_measure_prints_a_table_or_json():
    r = runner.invoke(app, ["measure", "tiny:ViTModel", "--rounds", "2"])
    assert r.exit_code == 0, r.output
    assert "params" in r.output and "latency ms (median)" in r.output and "machine:" in r.output
    r = runner.invoke(app, ["measure", "tiny:ViTModel", "--rounds", "2", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert got["params"] > 0 and got["macs"] > 0 and got["latency_ms"] > 0 and got["machine"]["cores"] >= 1
