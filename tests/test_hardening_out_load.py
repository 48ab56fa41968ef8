"""Issue 20 (hardening 2), output directories and loads: `--out` never loses or litters a user's files (the root, the
source model, a folder above it, a directory of other files; --force replaces a previous vltrim output only; a
stage's --out is refused), all checked before any work with nothing written; a missing vltrim.json is refused unless
verify=False; a deleted or truncated modeling_vltrim.py is named; a renamed plan group is named."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
import torch
import transformers
from conftest import run
from typer.testing import CliRunner

import vltrim
import vltrim.cli as cli
from vltrim import io
from vltrim.io import MissingModelFileError, ModelDirError
from vltrim.structure.plan import PlanError
from vltrim.zoo import tiny_model

runner = CliRunner()
FAST = ["--latency-batch", "0", "--target", "0.3"]


def _compress(*args) -> object:
    return runner.invoke(cli.app, ["compress", *map(str, args)])


def _flat(text: str) -> str:
    """The console's output with its line wrapping undone."""
    return " ".join(text.split())


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> SHA-256): a directory left as it was compares equal."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def no_work(monkeypatch):
    """Loading the model or compressing it fails loudly: a refusal must come before both."""

    def started(*a, **k):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(cli, "load_any", started)
    monkeypatch.setattr(cli, "run_compress", started)


@pytest.fixture
def saved(tmp_path) -> Path:
    """A tiny CLIPModel saved by vltrim (one plan applied)."""
    model = tiny_model("CLIPModel")
    return vltrim.save(vltrim.apply_plan(model, vltrim.plan(model, "l1", target=0.3)), tmp_path / "models" / "small")


# ---- --out ------------------------------------------------------------------------------------------------------
def test_out_root_is_refused_before_any_work(no_work, tmp_path):
    r = _compress("tiny:CLIPModel", "--out", "/", *FAST)
    assert r.exit_code == 2 and "root of the file system" in _flat(r.output), r.output
    r = _compress("tiny:CLIPModel", "--out", "/", "--force", *FAST)
    assert r.exit_code == 2 and "root of the file system" in _flat(r.output), r.output


def test_python_save_to_the_root_is_refused_before_anything_is_written(monkeypatch):
    def written(*a, **k):
        raise AssertionError("a file was written")

    monkeypatch.setattr(io, "save_model", written)
    with pytest.raises(ModelDirError, match="root of the file system"):
        vltrim.save(tiny_model("BertModel"), Path("/"))
    with pytest.raises(ModelDirError, match="root of the file system"):
        io.check_save_destination(Path("/") / "tmp" / "..")  # the root, spelled another way


def test_out_the_source_model_or_a_folder_above_it_is_refused(no_work, saved):
    models = saved.parent
    (models / "other.txt").write_text("a user's file")
    before = _snapshot(models)
    r = _compress(saved, "--out", saved, *FAST)
    assert r.exit_code == 2 and "directory of the source model" in _flat(r.output), r.output
    r = _compress(saved, "--out", saved, "--force", *FAST)  # --force never replaces the source
    assert r.exit_code == 2 and "directory of the source model" in _flat(r.output), r.output
    r = _compress(saved, "--out", models, *FAST)
    assert r.exit_code == 2 and "folder above the source model" in _flat(r.output), r.output
    assert _snapshot(models) == before


def test_python_save_into_its_source_or_a_folder_above_is_refused(saved):
    model = vltrim.load(saved)
    before = _snapshot(saved.parent)
    for dest in (saved, saved.parent):
        with pytest.raises(ModelDirError, match="source model"):
            vltrim.save(model, dest, source=saved)
    assert _snapshot(saved.parent) == before


def test_out_a_directory_of_other_files_is_refused_with_nothing_written(no_work, tmp_path):
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    (foreign / "plan.json").write_text('{"not": "a vltrim plan"}')  # a plan.json of someone else's is no vltrim save
    before = _snapshot(foreign)
    r = _compress("tiny:CLIPModel", "--out", foreign, *FAST)
    assert r.exit_code == 2 and "files vltrim did not write" in _flat(r.output) and "notes.txt" in _flat(r.output), (
        r.output
    )
    r = _compress("tiny:CLIPModel", "--out", foreign, "--force", *FAST)
    assert r.exit_code == 2 and "--force replaces only a previous vltrim output" in _flat(r.output)
    assert _snapshot(foreign) == before and sorted(p.name for p in tmp_path.iterdir()) == ["project"]


def test_python_save_into_a_directory_of_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ModelDirError, match="notes.txt"):
        vltrim.save(tiny_model("BertModel"), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_force_replaces_a_previous_vltrim_output_only(tmp_path):
    out = tmp_path / "o"
    r = _compress("tiny:CLIPModel", "--out", out, "--method", "random", *FAST)
    assert r.exit_code == 0, r.output
    first = vltrim.count_params(vltrim.load(out))
    r = _compress("tiny:CLIPModel", "--out", out, "--method", "random", "--latency-batch", "0", "--target", "0.6")
    assert r.exit_code == 2 and "previous model saved by vltrim" in _flat(r.output) and "--force" in _flat(r.output), (
        r.output
    )
    assert vltrim.count_params(vltrim.load(out)) == first  # untouched
    r = _compress(
        "tiny:CLIPModel", "--out", out, "--method", "random", "--latency-batch", "0", "--target", "0.6", "--force"
    )
    assert r.exit_code == 0, r.output
    assert vltrim.count_params(vltrim.load(out)) < first


def test_out_may_be_the_runs_work_dir_and_a_work_dir_inside_out_is_refused(tmp_path):
    w = tmp_path / "w"
    args = ["tiny:CLIPModel", "--method", "random", *FAST, "--work-dir", w, "--out"]
    r = _compress(*args, w)
    assert r.exit_code == 0, r.output
    assert (w / "run.json").is_file() and vltrim.load(w) is not None
    r = _compress(*args, w)
    assert r.exit_code == 2 and "--resume" in _flat(r.output) and "--force" in _flat(r.output), r.output
    r = _compress(*args, w, "--resume")  # the same run, continued
    assert r.exit_code == 0, r.output
    r = _compress("tiny:CLIPModel", *FAST, "--work-dir", tmp_path / "o" / "w", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "inside --out" in _flat(r.output) and not (tmp_path / "o").exists(), r.output


def test_a_stages_out_and_force_are_refused(no_work, tmp_path):
    for option in (["--out", str(tmp_path / "x")], ["--force"]):
        r = _compress("tiny:CLIPModel", "--out", tmp_path / "o", "--then", "l1", "--target", "0.2", *option)
        assert r.exit_code == 2 and f"{option[0]} applies to the whole chain" in _flat(r.output), r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "o").exists()


def test_export_out_must_be_an_onnx_file(saved, tmp_path):
    target = tmp_path / "config.json"
    target.write_text("a user's file")
    r = runner.invoke(cli.app, ["export", str(saved), "--out", str(target)])
    assert r.exit_code == 2 and "does not end in .onnx" in _flat(r.output) and target.read_text() == "a user's file"
    r = runner.invoke(cli.app, ["export", str(saved), "--out", str(saved / "model.safetensors")])
    assert r.exit_code == 2 and "does not end in .onnx" in _flat(r.output)
    vltrim.load(saved)  # the weights are untouched


# ---- loads ------------------------------------------------------------------------------------------------------
def test_a_missing_vltrim_json_is_refused_unless_verify_false(saved):
    ref = vltrim.load(saved)
    (saved / "vltrim.json").unlink()
    with pytest.raises(MissingModelFileError, match=r"no vltrim\.json.*verify=False"):
        vltrim.load(saved)
    with pytest.raises(MissingModelFileError, match="verify=False"):
        transformers.AutoModel.from_pretrained(saved, trust_remote_code=True)
    again = vltrim.load(saved, verify=False)
    x = vltrim.get_adapter(ref).reference_inputs(ref, 2)
    assert all(torch.equal(a, b) for a, b in zip(run(ref, x), run(again, x), strict=True))
    assert type(transformers.AutoModel.from_pretrained(saved, trust_remote_code=True, verify=False)).__name__ == (
        "CLIPModel"
    )


def test_a_truncated_modeling_file_is_named(saved):
    text = (saved / "modeling_vltrim.py").read_text()
    (saved / "modeling_vltrim.py").write_text(text[: len(text) // 2])
    with pytest.raises(ModelDirError, match=r"modeling_vltrim\.py .*truncated or edited.*restore_modeling"):
        transformers.AutoModel.from_pretrained(saved, trust_remote_code=True)
    with pytest.raises(ModelDirError, match=r"modeling_vltrim\.py .*truncated or edited"):
        vltrim.load(saved)
    io.restore_modeling(saved)
    assert (saved / "modeling_vltrim.py").read_text() == text
    assert type(transformers.AutoModel.from_pretrained(saved, trust_remote_code=True)).__name__ == "CLIPModel"


def test_a_deleted_modeling_file_is_named(saved):
    (saved / "modeling_vltrim.py").unlink()
    with pytest.raises(MissingModelFileError, match=r"no modeling_vltrim\.py.*from_pretrained.*restore_modeling"):
        vltrim.load(saved)
    vltrim.load(saved, verify=False)  # knowingly
    with pytest.raises(OSError, match=r"modeling_vltrim\.py"):  # transformers' own error: it names the file
        transformers.AutoModel.from_pretrained(saved, trust_remote_code=True)
    io.restore_modeling(saved)
    assert type(transformers.AutoModel.from_pretrained(saved, trust_remote_code=True)).__name__ == "CLIPModel"


def test_restore_modeling_checks_the_other_files_first(saved):
    (saved / "modeling_vltrim.py").unlink()
    (saved / "config.json").write_text((saved / "config.json").read_text().replace("32", "33", 1))
    with pytest.raises(ModelDirError, match="config.json"):
        io.restore_modeling(saved)
    assert not (saved / "modeling_vltrim.py").exists()


@pytest.mark.parametrize("rename", ["foo", "vision.layer.0.attn.head_dims", "visual.layers.0.attn.head_dims"])
def test_a_renamed_plan_group_is_named(rename):
    model = tiny_model("CLIPModel")
    plan = vltrim.plan(model, "l1", target=0.3)
    name = "vision.layers.0.attn.head_dims"
    assert name in plan.keep
    keep = {(rename if n == name else n): v for n, v in plan.keep.items()}
    for renamed in (
        dataclasses.replace(plan, keep=keep),  # renamed in keep only
        dataclasses.replace(
            plan,
            keep=keep,
            sizes={(rename if n == name else n): v for n, v in plan.sizes.items()},
            kinds={(rename if n == name else n): v for n, v in plan.kinds.items()},
        ),  # renamed everywhere
    ):
        with pytest.raises(PlanError, match=f"plan group '{rename}' does not exist in this CLIPModel"):
            vltrim.apply_plan(model, renamed)
        with pytest.raises(PlanError, match=f"'{rename}'"):
            with vltrim.masked(model, renamed):
                pass


def test_save_records_the_modeling_file_and_old_saves_keep_loading(saved):
    rec = io._read_checksums(saved)  # noqa: SLF001
    assert set(rec) == {"config.json", "plan.json", "model.safetensors", "modeling_vltrim.py"}
    files = {n: d for n, d in rec.items() if n != "modeling_vltrim.py"}  # a directory saved before this change
    text = (saved / "vltrim.json").read_text()
    (saved / "vltrim.json").write_text(text.replace(f',\n  "modeling_vltrim.py": "{rec["modeling_vltrim.py"]}"', ""))
    assert io._read_checksums(saved) == files  # noqa: SLF001
    (saved / "modeling_vltrim.py").write_text("# edited by hand\n" + (saved / "modeling_vltrim.py").read_text())
    vltrim.load(saved)  # its modeling file has no recorded checksum: not checked
    assert os.access(saved / "vltrim.json", os.R_OK)
