"""Issue 20, calibration and tasks that cannot mean anything: every method's calibration data pass one check
(vocabulary, labels, finite values; enough distinct items for MoPE), a task that does not fit the model is refused
before any work even without data, the built-in tokenizer warns on mostly-unknown text, lowrank reads a list of
item dicts, and bad budget options of vltrim.plan are ValueErrors naming the option."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from test_tasks_more import shape_data
from typer.testing import CliRunner

import vltrim
from vltrim.cli import app
from vltrim.data import SyntheticCaptions
from vltrim.data.synthetic import tokenizer
from vltrim.methods import get_method
from vltrim.zoo import tiny_model


def _captions(n: int) -> list[dict[str, torch.Tensor]]:
    d = SyntheticCaptions("train", n)
    return [d[i] for i in range(n)]


# ---- MoPE on calibration that cannot rank modules -------------------------------------------------------------
@pytest.mark.parametrize("case", ["one item", "identical items"])
def test_mope_refuses_calibration_without_distinct_items(case):
    model = tiny_model("CLIPModel")
    items = _captions(1) if case == "one item" else _captions(1) * 8
    with pytest.raises(ValueError, match=r"calib_data: 1 distinct item.*at least 2.*every module scores the same"):
        vltrim.plan(model, "mope", 0.3, calib_data=items, task="retrieval", group_size=16)


def test_mope_refuses_nan_pixels():
    model = tiny_model("CLIPModel")
    items = _captions(8)
    items[5] = dict(items[5], pixel_values=torch.full_like(items[5]["pixel_values"], float("nan")))
    with pytest.raises(ValueError, match=r"calib_data: item 5 has non-finite values .*'pixel_values'"):
        get_method("mope").search(model, 0.3, data=items, task="retrieval", group_size=16)


# ---- labels and token ids of calibration data -------------------------------------------------------------------
@pytest.mark.parametrize("label", [-1, 5])  # the tiny classifier has num_labels = 5
@pytest.mark.parametrize("method", ["mope", "taylor"])
def test_calibration_labels_outside_the_classes_are_refused(method, label):
    model = tiny_model("ViTForImageClassification")
    items = shape_data("train", 8)
    items[3] = dict(items[3], label=torch.tensor(label))
    with pytest.raises(ValueError, match=rf"calib_data: item 3 has label {label}, outside the model's 5 classes"):
        settings = {"group_size": 16} if method == "mope" else {"num_batches": 1, "batch_size": 8}
        vltrim.plan(model, method, 0.3, calib_data=items, task="classification", **settings)


@pytest.mark.parametrize("method", ["taylor", "heads", "mope"])
def test_calibration_token_ids_past_the_vocabulary_are_refused(method):
    model = tiny_model("CLIPModel")  # vocabulary of 64
    items = _captions(8)
    ids = items[6]["input_ids"].clone()
    ids[1] = 500
    items[6] = dict(items[6], input_ids=ids)
    settings = {"group_size": 16} if method == "mope" else {"num_batches": 1, "batch_size": 8}
    with pytest.raises(ValueError, match=r"calib_data: item 6 holds token id 500.*64 rows"):
        vltrim.plan(model, method, 0.3, calib_data=items, task="retrieval", **settings)
    with pytest.raises(ValueError, match=r"item 6 holds token id 500"):  # the method's own spelling too
        kw = {"task": "retrieval"} if method == "mope" else {"loss_fn": lambda m, b: m(**b).logits_per_image.sum()}
        get_method(method).search(model, 0.3, data=items, **kw, **settings)


# ---- a task that does not fit the model ------------------------------------------------------------------------
def test_task_that_does_not_fit_is_refused_without_data(tmp_path):
    with pytest.raises(ValueError, match=r"task 'retrieval' needs .*BertModel is not one.*sentence-embedding"):
        vltrim.compress(tiny_model("BertModel"), "l1", 0.3, task="retrieval", retrain_steps=0, progress=False)
    with pytest.raises(ValueError, match=r"task 'classification' needs"):
        vltrim.compress(tiny_model("CLIPModel"), ["l1", "random"], task="classification", retrain_steps=0)
    out = tmp_path / "out"
    r = CliRunner(env={"COLUMNS": "2000"}).invoke(
        app, ["compress", "tiny:BertModel", "--task", "retrieval", "--method", "l1", "--out", str(out)]
    )
    assert r.exit_code != 0 and "needs" in r.output, r.output
    assert not (out / "report.json").exists()


def test_fitting_task_without_data_still_runs():
    res = vltrim.compress(
        tiny_model("BertModel"), "l1", 0.3, task="sentence-embedding", retrain_steps=0, latency_batch=0, progress=False
    )
    assert res.report["task"] == "sentence-embedding"


# ---- the built-in tokenizer on text it does not know -----------------------------------------------------------
def test_builtin_tokenizer_warns_on_mostly_unknown_words(tmp_path):
    tok = tokenizer(16)
    with pytest.warns(UserWarning, match=r"100% of the words of 2 texts .* unknown to the built-in word tokenizer"):
        tok(["zebra crossing tonight", "quantum lemonade"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok([SyntheticCaptions("train", 4).captions[i] for i in range(4)])  # its own captions: no warning
    # the reference teacher's data path: a manifest tokenized with the built-in tokenizer
    from PIL import Image

    rows = []
    for i, text in enumerate(["a cat on the sofa", "my neighbour's lawnmower"]):
        Image.new("RGB", (32, 32), (40 * i, 90, 120)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": text})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.warns(UserWarning, match=r"unknown to the built-in word tokenizer"):
        vltrim.data.ImageCaptionManifest(tmp_path / "m.jsonl", tok, image_size=32, max_length=16)


# ---- lowrank on a list of item dicts ---------------------------------------------------------------------------
def test_lowrank_reads_a_list_of_item_dicts_alone_and_in_a_chain():
    model = tiny_model("CLIPModel")
    items = _captions(8)
    plan = vltrim.plan(model, "lowrank", 0.3, data=items, num_batches=2, batch_size=4)
    assert plan.settings["weighted"] is True and plan.factor_scales
    batch = {k: torch.stack([it[k] for it in items[:4]]) for k in ("pixel_values", "input_ids", "attention_mask")}
    assert vltrim.plan(model, "lowrank", 0.3, data=[batch]).factor_scales  # a list of batches still works
    res = vltrim.compress(
        model, ["l1", "lowrank"], 0.2, train_data=items, retrain_steps=0, latency_batch=0, progress=False
    )
    assert res.plan is not None


# ---- budget options of vltrim.plan -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option,value", [("align", 2.5), ("align", "8"), ("align", None), ("align", 8.0), ("units", 5)]
)
@pytest.mark.parametrize("method", ["l1", "random", "taylor", "upop", "mope"])
def test_plan_refuses_bad_align_and_units_naming_the_option(method, option, value):
    model = tiny_model("CLIPModel")
    with pytest.raises(ValueError, match=rf"^{option} must be"):
        vltrim.plan(model, method, 0.3, **{option: value})
