"""Saved directories and plan files under abuse: checksums catch edits, every bad input is a clear error
naming the file (and field), saves never leave a directory that loads while being wrong."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import random_plan, run, tamper_weights

import vltrim
from vltrim import io
from vltrim.io import MissingModelFileError, ModelDirError
from vltrim.reference import ASSET
from vltrim.structure.plan import read_plans
from vltrim.zoo import tiny_model


def _state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def _small(seed: int = 0, plan_seed: int = 0):
    model = tiny_model("CLIPModel", seed=seed)
    return vltrim.apply_plan(model, random_plan(model, {"neurons"}, seed=plan_seed))


@pytest.fixture(scope="module")
def saved_once(tmp_path_factory):
    """A tiny pruned CLIP saved once; tests copy the directory before tampering with it."""
    small = _small()
    d = tmp_path_factory.mktemp("saved") / "model"
    vltrim.save(small, d)
    return small, d


@pytest.fixture
def saved(saved_once, tmp_path):
    small, d = saved_once
    shutil.copytree(d, tmp_path / "model")
    return small, tmp_path / "model"


def _edit_json(file: Path, change) -> None:
    d = json.loads(file.read_text())
    change(d)
    file.write_text(json.dumps(d, indent=1))


def _raises(exc, path: Path, *words: str, **kw):
    """Load ``path`` expecting ``exc`` whose message holds every word; return the message."""
    with pytest.raises(exc) as info:
        vltrim.load(path, **kw)
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)
    assert "Traceback" not in msg and "size mismatch" not in msg
    return msg


# ---- checksums ------------------------------------------------------------------------------------------
def test_round_trip_records_checksums_and_is_bit_exact(saved):
    small, d = saved
    rec = json.loads((d / "vltrim.json").read_text())
    assert rec["format"] == "vltrim.model_dir" and rec["version"] == 1 and rec["algorithm"] == "sha256"
    assert set(rec["files"]) == {"config.json", "plan.json", "model.safetensors", "modeling_vltrim.py"}
    for name, digest in rec["files"].items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = vltrim.load(d)
    assert _state_equal(small, again)
    inputs = vltrim.get_adapter(small).reference_inputs(small, 2)
    assert all(torch.equal(x, y) for x, y in zip(run(small, inputs), run(again, inputs)))


def test_bit_flip_in_weights_is_refused_unless_verify_false(saved):
    small, d = saved
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-3] ^= 0x10  # inside the last tensor's data, not the header
    (d / "model.safetensors").write_bytes(bytes(raw))
    _raises(ModelDirError, d, "model.safetensors", str(d), "checksum", "verify=False")
    again = vltrim.load(d, verify=False)
    assert not _state_equal(small, again)


def test_weights_of_another_seed_are_refused(saved, tmp_path):
    small, d = saved
    other = _small(seed=1)
    vltrim.save(other, tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", d / "model.safetensors")
    _raises(ModelDirError, d, "model.safetensors", "checksum")
    assert _state_equal(other, vltrim.load(d, verify=False))


@pytest.mark.parametrize("key,value", [("hidden_act", "relu"), ("layer_norm_eps", 0.5), ("num_attention_heads", 2)])
def test_config_edits_are_refused(saved, key, value):
    small, d = saved
    _edit_json(d / "config.json", lambda c: c["vision_config"].update({key: value}))
    _raises(ModelDirError, d, "config.json", "checksum")
    again = vltrim.load(d, verify=False)  # edited on purpose: loads, and computes something else
    assert getattr(again.config.vision_config, key) == value


def test_plan_edit_and_several_edits_name_every_file(saved):
    _, d = saved
    _edit_json(d / "plan.json", lambda p: p.update(method="edited"))
    _raises(ModelDirError, d, "plan.json", "does not match the checksum")
    _edit_json(d / "config.json", lambda c: c.update(projection_dim=16))
    msg = _raises(ModelDirError, d, "plan.json", "config.json")
    assert "model.safetensors" not in msg


def test_readme_is_not_checked(saved):
    small, d = saved
    (d / "README.md").write_text("my notes")
    assert _state_equal(small, vltrim.load(d))


def test_directory_without_checksums_is_refused_unless_verify_false(saved):
    small, d = saved
    (d / "vltrim.json").unlink()  # issue 20: deleting vltrim.json no longer turns the checks off
    with pytest.raises(io.MissingModelFileError, match="no vltrim.json.*verify=False"):
        vltrim.load(d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = vltrim.load(d, verify=False)
    assert _state_equal(small, again)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"format": "other"}',
        '{"format": "vltrim.model_dir", "version": 2, "algorithm": "sha256", "files": {}}',
        '{"format": "vltrim.model_dir", "version": 1, "algorithm": "md5", "files": {}}',
        '{"format": "vltrim.model_dir", "version": 1, "algorithm": "sha256", "files": {"config.json": "abc"}}',
        '{"format": "vltrim.model_dir", "version": 1, "algorithm": "sha256", "files": {"config.json": "'
        + "0" * 64
        + '"}}',
    ],
)
def test_malformed_checksum_file(saved, text):
    small, d = saved
    (d / "vltrim.json").write_text(text)
    _raises(ModelDirError, d, "vltrim.json")
    assert _state_equal(small, vltrim.load(d, verify=False))


def test_checksum_file_naming_other_paths(saved):
    _, d = saved
    _edit_json(d / "vltrim.json", lambda r: r["files"].update({"../escape.json": "0" * 64}))
    _raises(MissingModelFileError, d, "vltrim.json", "../escape.json")


def test_verify_must_be_a_bool(saved):
    with pytest.raises(TypeError, match="verify"):
        vltrim.load(saved[1], verify="no")


def test_reference_asset_verifies_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vltrim.load(ASSET)


# ---- config.json ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw,words",
    [
        (None, ("config.json", "line")),  # truncated
        (b"\xff\xfe{\x00", ("config.json", "UTF-8")),
        (b"[1, 2]", ("config.json", "object", "list")),
        (b'"clip"', ("config.json", "object")),
        (b"", ("config.json",)),
        (b"[" * 100000, ("config.json", "nested too deeply")),
    ],
)
def test_unreadable_config(saved, raw, words):
    _, d = saved
    f = d / "config.json"
    f.write_bytes(f.read_bytes()[:50] if raw is None else raw)
    _raises(ModelDirError, d, "config.json", "checksum")
    _raises(ModelDirError, d, *words, verify=False)


@pytest.mark.parametrize(
    "tower,key,value,words",
    [
        ("vision_config", "hidden_act", 5, ("vision_config.hidden_act", "str")),
        ("vision_config", "layer_norm_eps", "x", ("vision_config.layer_norm_eps",)),
        ("text_config", "hidden_size", "64", ("text_config.hidden_size", "int")),
        ("text_config", "num_hidden_layers", 1.5, ("text_config.num_hidden_layers",)),
        ("vision_config", "hidden_act", "no_such_act", ("valid CLIPModel", "no_such_act")),
        ("text_config", "num_attention_heads", 0, ("valid CLIPModel",)),
        ("text_config", "num_attention_heads", 3, ("valid CLIPModel",)),
    ],
)
def test_config_with_wrong_values(saved, tower, key, value, words):
    _, d = saved
    _edit_json(d / "config.json", lambda c: c[tower].update({key: value}))
    _raises(ModelDirError, d, "config.json", *words, verify=False)


def test_config_of_another_model_type(saved):
    _, d = saved
    vit = tiny_model("ViTModel")
    (d / "config.json").write_text(vit.config.to_json_string())
    _raises(ModelDirError, d, "config.json", "plan.json", "'vit'", verify=False)


def test_config_edit_that_changes_shapes_blames_config(saved):
    _, d = saved
    _edit_json(d / "config.json", lambda c: c.update(projection_dim=16))
    msg = _raises(ModelDirError, d, "config.json does not match model.safetensors", "projection", verify=False)
    assert "plan.json does not match" not in msg


# ---- plan.json in a directory ---------------------------------------------------------------------
def test_swapped_plan_of_another_target(saved, tmp_path):
    _, d = saved
    model = tiny_model("CLIPModel")
    random_plan(model, {"neurons"}, seed=5).save(d / "plan.json")
    _raises(ModelDirError, d, "plan.json", "checksum")
    _raises(ModelDirError, d, "plan.json does not match model.safetensors", "mlp.fc", "shape", verify=False)
    with pytest.raises(RuntimeError):  # as load raised before for weights that do not fit
        vltrim.load(d, verify=False)


def test_swapped_plan_of_another_model(saved):
    _, d = saved
    other = tiny_model("ViTModel")
    random_plan(other, {"neurons"}).save(d / "plan.json")
    _raises(ModelDirError, d, "plan.json", "ViTModel", "config.json", verify=False)


def test_plan_for_another_configuration(saved):
    _, d = saved
    _edit_json(d / "plan.json", lambda p: [g.update(size=g["size"] + 8) for g in p["groups"].values()])
    _raises(vltrim.PlanError, d, "plan.json", "config.json", verify=False)


def test_plan_of_an_unknown_class(saved):
    _, d = saved
    _edit_json(d / "plan.json", lambda p: p.update(model_class="GPT9"))
    _raises(vltrim.UnsupportedModelError, d, "plan.json", "GPT9", verify=False)


@pytest.mark.parametrize("tamper", ["drop", "extra", "shape"])
def test_mismatched_weights_name_the_tensor(saved, tamper):
    _, d = saved
    word = tamper_weights(d / "model.safetensors", tamper)
    _raises(ModelDirError, d, "model.safetensors", "checksum")
    _raises(ModelDirError, d, "model.safetensors", word, verify=False)


@pytest.mark.parametrize("cut", ["truncated", "garbage", "empty"])
def test_unreadable_weights(saved, cut):
    _, d = saved
    f = d / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"\x00garbage" * 100, "empty": b""}[cut])
    _raises(ModelDirError, d, "model.safetensors", "checksum")
    _raises(ModelDirError, d, "model.safetensors", "not a readable safetensors file", verify=False)


# ---- missing files ------------------------------------------------------------------------------------
def test_huggingface_directory(tmp_path):
    tiny_model("BertModel").save_pretrained(tmp_path)
    msg = _raises(MissingModelFileError, tmp_path, "no plan.json", "from_pretrained", "CLI")
    assert "not a vltrim model directory" in msg
    with pytest.raises(FileNotFoundError):
        vltrim.load(tmp_path)


def test_empty_or_unrelated_directory(tmp_path):
    _raises(MissingModelFileError, tmp_path, "no plan.json", "empty")
    (tmp_path / "notes.txt").write_text("x")
    _raises(MissingModelFileError, tmp_path, "no plan.json", "notes.txt")
    _raises(MissingModelFileError, tmp_path / "nope", "does not exist")
    _raises(ModelDirError, tmp_path / "notes.txt", "is a file")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_incomplete_directory(saved, name):
    _, d = saved
    (d / name).unlink()
    _raises(MissingModelFileError, d, name, "incomplete")
    _raises(MissingModelFileError, d, name, verify=False)


# ---- plan files ---------------------------------------------------------------------------------------------
GOOD = {
    "format": "vltrim.plan",
    "version": 1,
    "model_class": "CLIPModel",
    "method": "m",
    "groups": {"text.layers.0.mlp.neurons": {"kind": "neurons", "size": 96, "keep": [0, 1, 2]}},
}


def _group(**kw):
    return json.dumps(
        {**GOOD, "groups": {"text.layers.0.mlp.neurons": {**GOOD["groups"]["text.layers.0.mlp.neurons"], **kw}}}
    )


BAD_PLANS = {
    "infinity": json.dumps(GOOD)[:-1] + ', "achieved": {"x": Infinity}}',
    "-infinity": json.dumps(GOOD)[:-1] + ', "achieved": {"x": -Infinity}}',
    "nan": json.dumps(GOOD)[:-1] + ', "target": {"target": NaN}}',
    "1e999": json.dumps(GOOD)[:-1] + ', "target": {"target": 1e999}}',
    "5000 digits": json.dumps(GOOD)[:-1] + ', "achieved": {"x": ' + "9" * 5000 + "}}",
    "5000 digit keep": _group(keep=[int("1" * 50)]).replace("1" * 50, "1" * 5000),
    "deep": '{"format": "vltrim.plan", "version": 1, "settings": ' + "[" * 100000 + "]" * 100000 + "}",
    "deep dict": '{"a":' * 50000 + "1" + "}" * 50000,
    "non-utf8": b'{"format": "vltrim.plan", "method": "\xff\xfe"}',
    "truncated": json.dumps(GOOD)[:40],
    "empty": "",
    "array": "[1, 2]",
    "keep floats": _group(keep=[0.0, 1.5]),
    "keep bools": _group(keep=[True, False]),
    "keep strings": _group(keep=["0", "1"]),
    "keep int": _group(keep=5),
    "keep null": _group(keep=None),
    "keep empty": _group(keep=[]),
    "keep out of range": _group(keep=[0, 96]),
    "keep negative": _group(keep=[-1]),
    "keep duplicated": _group(keep=[1, 1]),
    "kind unknown": _group(kind="rows"),
    "size bool": _group(size=True),
    "size string": _group(size="96"),
    "size zero": _group(size=0),
    "group not dict": json.dumps({**GOOD, "groups": {"g": [1, 2]}}),
    "groups list": json.dumps({**GOOD, "groups": [1, 2]}),
    "groups null": json.dumps({**GOOD, "groups": None}),
    "groups string": json.dumps({**GOOD, "groups": "abc"}),
    "no groups": json.dumps({k: v for k, v in GOOD.items() if k != "groups"}),
    "model_class int": json.dumps({**GOOD, "model_class": 3}),
    "no model_class": json.dumps({k: v for k, v in GOOD.items() if k != "model_class"}),
    "method list": json.dumps({**GOOD, "method": ["x"]}),
    "settings list": json.dumps({**GOOD, "settings": [1]}),
    "target string": json.dumps({**GOOD, "target": "half"}),
    "achieved null": json.dumps({**GOOD, "achieved": None}),
    "version bool": json.dumps({**GOOD, "version": True}),
    "version 2": json.dumps({**GOOD, "version": 2}),
    "chains": json.dumps({"format": "vltrim.plans", "plans": [GOOD]}),  # Plan.load reads one plan
}


@pytest.mark.parametrize("label", sorted(BAD_PLANS))
def test_bad_plan_files(tmp_path, label):
    f = tmp_path / "p.json"
    text = BAD_PLANS[label]
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(vltrim.PlanError) as info:
        vltrim.Plan.load(f)
    assert str(f) in str(info.value) and "Traceback" not in str(info.value)


FIELD_WORDS = {
    "keep floats": "keep",
    "keep bools": "keep",
    "keep strings": "keep",
    "keep int": "keep",
    "kind unknown": "kind",
    "size bool": "size",
    "groups list": "groups",
    "model_class int": "model_class",
    "settings list": "settings",
    "5000 digits": "5000 digits",
    "infinity": "Infinity",
    "nan": "NaN",
    "chains": "read_plans",
}


@pytest.mark.parametrize("label", sorted(FIELD_WORDS))
def test_bad_plan_messages_name_the_field(tmp_path, label):
    f = tmp_path / "p.json"
    f.write_text(BAD_PLANS[label])
    with pytest.raises(vltrim.PlanError, match=FIELD_WORDS[label]):
        vltrim.Plan.load(f)


@pytest.mark.parametrize(
    "label", ["infinity", "5000 digits", "deep", "non-utf8", "keep floats", "groups list", "truncated"]
)
def test_bad_plan_json_in_a_directory(saved, label):
    _, d = saved
    text = BAD_PLANS[label]
    (d / "plan.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    _raises(ModelDirError, d, "plan.json", "checksum")
    _raises(vltrim.PlanError, d, "plan.json", verify=False)


@pytest.mark.parametrize(
    "plans,words",
    [
        ("missing", ("plans", "missing")),
        ([], ("empty",)),
        (None, ("NoneType",)),
        ({}, ("dict",)),
        ("x", ("str",)),
        ([{}], ("plan 1 of 1", "not a vltrim plan")),
        ([GOOD, 3], ("plan 2 of 2",)),
    ],
)
def test_bad_plan_chains(tmp_path, plans, words):
    f = tmp_path / "plan.json"
    d = {"format": "vltrim.plans"} if plans == "missing" else {"format": "vltrim.plans", "plans": plans}
    f.write_text(json.dumps(d))
    with pytest.raises(vltrim.PlanError) as info:
        read_plans(f)
    for w in (str(f), *words):
        assert w in str(info.value), (w, str(info.value))


def test_plan_file_round_trip_still_exact(tmp_path):
    plan = vltrim.plan(tiny_model("BertModel"), "l1", target=0.3)
    plan.save(tmp_path / "p.json")
    assert vltrim.Plan.load(tmp_path / "p.json").to_dict() == json.loads(json.dumps(plan.to_dict()))


# ---- save ---------------------------------------------------------------------------------------------
class _Opaque:
    pass


def _loop() -> dict:
    d: dict = {}
    d["self"] = d
    return d


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("achieved", {"params_removed": float("nan")}, ("achieved", "params_removed", "nan")),
        ("achieved", {"params_removed": float("inf")}, ("achieved", "params_removed", "inf")),
        ("target", {"target": float("-inf")}, ("target",)),
        ("achieved", {"x": torch.tensor(0.5)}, ("achieved", "'x'", "Tensor")),
        ("achieved", {"x": _Opaque()}, ("achieved", "_Opaque")),
        ("target", {"units": {"heads"}}, ("target", "units", "set")),
        ("achieved", {1: 0.5}, ("achieved", "key 1")),
        ("settings", _loop(), ("settings", "contains itself")),
        ("achieved", [1, 2], ("achieved", "object")),
        ("settings", {"deep": json.loads("[" * 500 + "]" * 500)}, ("settings", "deeper than")),
    ],
)
def test_save_with_malformed_metadata_writes_nothing(tmp_path, field, value, words):
    small = _small()
    setattr(vltrim.plans_of(small)[0], field, value)
    with pytest.raises(vltrim.PlanError) as info:
        vltrim.save(small, tmp_path / "out")
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert list(tmp_path.iterdir()) == []  # no directory, no temporary leftovers
    with pytest.raises(vltrim.PlanError):
        vltrim.plans_of(small)[0].save(tmp_path / "p.json")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_save(saved):
    small, d = saved
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    bad = _small(seed=1)
    vltrim.plans_of(bad)[0].achieved = {"params_removed": float("nan")}
    with pytest.raises(vltrim.PlanError):
        vltrim.save(bad, d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert [p.name for p in d.parent.iterdir()] == [d.name]
    assert _state_equal(small, vltrim.load(d))


def test_metadata_of_other_types_still_saves(tmp_path):
    small = _small()
    vltrim.plans_of(small)[0].achieved = {"params_removed": "lots", "model_params_before": None}
    vltrim.plans_of(small)[0].target = {"target": "half"}
    vltrim.save(small, tmp_path / "out")
    assert vltrim.plans_of(vltrim.load(tmp_path / "out"))[0].achieved["params_removed"] == "lots"


def test_overwriting_a_previous_save(saved):
    _, d = saved
    (d / "report.json").write_text("{}")  # the report of the model saved before
    (d / "notes.txt").write_text("mine")
    other = _small(seed=1, plan_seed=3)
    vltrim.save(other, d)  # no report: the old one described another model and goes; the user's own files stay
    assert _state_equal(other, vltrim.load(d)) and not (d / "report.json").exists() and (d / "notes.txt").exists()


def test_crash_while_replacing_files_leaves_a_refused_directory(saved, monkeypatch):
    """Killed after vltrim.json and one data file were replaced: the mix must not load as a model."""
    _, d = saved
    real, calls = io.os.replace, []

    def dies_on_third(a, b):
        calls.append(b)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        real(a, b)

    monkeypatch.setattr(io.os, "replace", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        vltrim.save(_small(seed=1, plan_seed=3), d)
    monkeypatch.setattr(io.os, "replace", real)
    _raises(ModelDirError, d, "checksum")
    assert [p.name for p in d.parent.iterdir()] == [d.name]  # the temporary directory is cleaned up


def test_crash_while_writing_a_new_directory_leaves_nothing(tmp_path, monkeypatch):
    def fails(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_model", fails)
    with pytest.raises(OSError, match="disk full"):
        vltrim.save(_small(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_to_overwrite_foreign_files(tmp_path):
    tiny_model("BertModel").save_pretrained(tmp_path / "hf")
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    with pytest.raises(ModelDirError, match="config.json"):
        vltrim.save(_small(), tmp_path / "hf")
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before
    (tmp_path / "f").write_text("x")
    with pytest.raises(ModelDirError, match="is a file"):
        vltrim.save(_small(), tmp_path / "f")
    (tmp_path / "empty").mkdir()
    vltrim.save(_small(), tmp_path / "empty")
    vltrim.load(tmp_path / "empty")


def test_chain_with_a_malformed_plan_names_it(tmp_path):
    once = _small()
    twice = vltrim.apply_plan(once, random_plan(once, {"heads"}, seed=2))
    vltrim.plans_of(twice)[1].achieved = {"x": float("nan")}
    with pytest.raises(vltrim.PlanError, match=r"plan 2 of 2\['achieved'\]\['x'\]"):
        vltrim.save(twice, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_destination_can_be_checked_before_work(tmp_path):
    tiny_model("BertModel").save_pretrained(tmp_path / "hf")
    with pytest.raises(ModelDirError, match="config.json"):
        io.check_save_destination(tmp_path / "hf")
    io.check_save_destination(tmp_path / "new")
    assert not (tmp_path / "new").exists()
