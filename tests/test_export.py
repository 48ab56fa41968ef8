"""`vltrim export DIR --format onnx`: dynamic axes, parity with torch, onnxruntime timing, --int8, clear errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

import vltrim
from vltrim import export as ex
from vltrim.cli import app
from vltrim.zoo import tiny_model

runner = CliRunner()
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
needs_onnx = pytest.mark.skipif(
    not HAS_ONNX, reason="onnx and onnxscript are not installed (pip install 'vltrim[export]')"
)
needs_ort = pytest.mark.skipif(
    not (HAS_ONNX and HAS_ORT), reason="onnxruntime is not installed (pip install 'vltrim[export]')"
)


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def _saved(tmp_path, cls: str, method: str, target: float, name: str = "m"):
    m = tiny_model(cls)
    small = vltrim.apply_plan(m, vltrim.plan(m, method, target))
    return small, vltrim.save(small, tmp_path / name)


@needs_ort
@pytest.mark.slow
def test_pruned_clip_exports_with_dynamic_axes_parity_speed_and_int8(tmp_path):
    _, d = _saved(tmp_path, "CLIPModel", "l1", 0.5)
    r = ex.export(d, int8=True, rounds=2)
    assert r["file"] == str(d / "model.onnx") and (d / "model.onnx").is_file() and (d / "model.int8.onnx").is_file()
    assert r["inputs"]["pixel_values"][0] == "image_batch" and r["inputs"]["input_ids"] == ["text_batch", "sequence"]
    assert r["outputs"]["logits_per_image"] == ["image_batch", "text_batch"]
    p = r["parity"]
    assert p["runtime"] == "onnxruntime" and p["max_abs_diff"] < 1e-4
    assert p["shapes"]["pixel_values"][0] == 2 and p["shapes"]["input_ids"][0] == 3 and p["shapes"]["input_ids"][1] < 16
    assert r["latency"]["torch_ms"] > 0 and r["latency"]["onnxruntime_ms"] > 0 and r["latency"]["ratio"] > 0
    q = r["int8"]
    assert 0.95 < q["cosine"] <= 1.0 + 1e-9 and q["bytes"] < q["fp32_bytes"] and q["ratio"] > 0
    vltrim.load(d)  # the exported files sit beside the model; its checked files are untouched


@needs_onnx
@pytest.mark.slow
def test_cli_exports_a_distilled_factorised_bert_and_prints_the_diff(tmp_path):
    m = tiny_model("BertModel")
    res = vltrim.compress(
        m, [("distill", {"layers": 1}), ("lowrank", {"target": 0.3})], retrain_steps=0, latency_batch=0, progress=False
    )
    d = vltrim.save(res, tmp_path / "m")
    out = tmp_path / "onnx" / "bert.onnx"
    r = runner.invoke(app, ["export", str(d), "--format", "onnx", "--out", str(out), "--rounds", "2"])
    assert r.exit_code == 0, r.output
    assert out.is_file() and "max abs diff vs torch" in r.output and "sequence" in _flat(r.output)
    r = runner.invoke(app, ["export", str(d), "--out", str(out), "--rounds", "2", "--json"])
    got = json.loads(r.output)
    assert got["parity"]["max_abs_diff"] < 1e-4 and got["inputs"]["input_ids"] == ["batch", "sequence"]
    assert (got["latency"] is not None) == HAS_ORT


@needs_onnx
@pytest.mark.slow
def test_without_onnxruntime_parity_uses_onnx_reference_and_nothing_is_timed(tmp_path, monkeypatch):
    _, d = _saved(tmp_path, "ViTForImageClassification", "l1", 0.5)
    monkeypatch.setattr(ex, "_has", lambda m: m != "onnxruntime")
    r = runner.invoke(app, ["export", str(d)])
    assert r.exit_code == 0, r.output
    assert "onnx.reference" in _flat(r.output) and "not timed: onnxruntime is not installed" in _flat(r.output)
    got = ex.export(d, out=tmp_path / "v.onnx")
    assert (
        got["parity"]["runtime"] == "onnx.reference" and got["parity"]["max_abs_diff"] < 1e-4 and got["latency"] is None
    )


def test_export_errors_name_the_directory_or_option(tmp_path):
    r = runner.invoke(app, ["export", str(tmp_path / "none")])
    assert r.exit_code == 2 and "does not exist" in _flat(r.output)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    r = runner.invoke(app, ["export", str(tmp_path / "hf")])
    assert r.exit_code == 2 and "has no plan.json: not a vltrim model directory" in _flat(r.output)
    _, d = _saved(tmp_path, "ViTModel", "l1", 0.3)
    r = runner.invoke(app, ["export", str(d), "--format", "tflite"])
    assert r.exit_code == 2 and "--format 'tflite' is not supported" in _flat(r.output)
    r = runner.invoke(app, ["export", str(d), "--batch-size", "1"])
    assert r.exit_code == 2 and "--batch-size" in r.output


def test_missing_packages_name_the_extra(tmp_path, monkeypatch):
    _, d = _saved(tmp_path, "ViTModel", "l1", 0.3)
    monkeypatch.setattr(ex, "_has", lambda m: m != "onnxscript")
    with pytest.raises(ex.ExportError, match=r"needs onnxscript .*vltrim\[export\]"):
        ex.export(d)
    monkeypatch.setattr(ex, "_has", lambda m: m != "onnxruntime")
    r = runner.invoke(app, ["export", str(d), "--int8"])
    assert r.exit_code == 2 and "--int8 needs onnxruntime" in _flat(r.output)


def test_a_new_save_removes_an_old_export(tmp_path):
    small, d = _saved(tmp_path, "ViTModel", "l1", 0.3)
    (d / "model.onnx").write_bytes(b"old")
    vltrim.save(small, d)
    assert not (d / "model.onnx").exists()
