"""End to end on the shipped reference teacher: `vltrim demo` with a few fine-tune steps."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import vltrim
from vltrim.cli import app
from vltrim.reference import ASSET


def test_reference_teacher_ships_with_the_package():
    assert (ASSET / "model.safetensors").exists(), "run benchmarks/train_reference.py to create it"
    teacher = vltrim.load(ASSET)
    assert type(teacher).__name__ == "CLIPModel" and not vltrim.plans_of(teacher)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    r = CliRunner().invoke(
        app, ["demo", "--out", str(tmp_path), "--search-steps", "4", "--retrain-steps", "2", "--train-size", "256"]
    )
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["method"] == "upop" and res["search_steps"] == 4 and res["fine_tune_steps"] == 2
    assert res["reload_bit_exact"] is True
    assert res["teacher"]["prunable_params"] / res["compressed"]["prunable_params"] >= 1.8
    assert res["macs_ratio"] > 1.5 and res["teacher"]["mean_R@1"] > 0.5
    assert "teacher" in r.output and "compressed" in r.output
    assert vltrim.count_params(vltrim.load(tmp_path)) == res["compressed"]["params"]
