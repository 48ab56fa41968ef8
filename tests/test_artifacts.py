"""io saves and loads models only; a run's report and artefacts are written by vltrim.run.artifacts through
io.save's ``extra`` files (atomically, report.json's SHA-256 in vltrim.json), with the same directory as before."""

from __future__ import annotations

import json

import pytest

import vltrim
from vltrim import io
from vltrim.data import SyntheticCaptions
from vltrim.run import artifacts
from vltrim.zoo import tiny_model

FAST = dict(retrain_steps=0, latency_batch=0, progress=False, evaluate_before=False)


def test_vltrim_save_is_the_runs_save():
    assert vltrim.save is artifacts.save


def test_io_save_takes_extra_files_into_its_checksums(tmp_path):
    model = tiny_model("CLIPModel")
    out = io.save(model, tmp_path / "m", extra=lambda folder: (folder / "report.json").write_text("{}"))
    sums = json.loads((out / "vltrim.json").read_text())
    assert sums["reports"] == {"report.json": io.sha256_file(out / "report.json")}
    assert io.report_checksum_ok(out) is True
    assert not any(p.name.startswith(".m.tmp") for p in tmp_path.iterdir())  # written in a tmp dir, then moved
    io.save(model, out)  # a save without a report removes the one an earlier save left
    assert not (out / "report.json").exists() and "reports" not in json.loads((out / "vltrim.json").read_text())
    vltrim.load(out)


def test_a_failing_extra_leaves_no_directory(tmp_path):
    def boom(folder):
        raise RuntimeError("artefact failed")

    with pytest.raises(RuntimeError, match="artefact failed"):
        io.save(tiny_model("CLIPModel"), tmp_path / "m", extra=boom)
    assert list(tmp_path.iterdir()) == []


def test_a_compress_result_is_saved_with_its_report_by_vltrim_save_only(tmp_path):
    data, settings = SyntheticCaptions("train", 16), {"group_size": 16}
    res = vltrim.compress(tiny_model("CLIPModel"), "mope", 0.5, train_data=data, method_settings=settings, **FAST)
    with pytest.raises(TypeError, match="vltrim.save"):
        io.save(res, tmp_path / "x")
    out = vltrim.save(res, tmp_path / "m", card_extra="extra words")
    names = {p.name for p in out.iterdir()}
    assert {"report.json", "widths.png", "mope.csv", "mope.png", "README.md", "vltrim.json"} <= names
    assert io.report_checksum_ok(out) is True
    card = (out / "README.md").read_text()
    assert "extra words" in card and "report.json" in card
    assert io.read_report(out)[0]["method"] == "mope"
