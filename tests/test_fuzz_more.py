"""Hold-out style fuzz cases beyond tests/test_fuzz_{run,cli,io,data}.py: numpy scalars and options of the wrong
type, data the model cannot take (found before any search), labels out of range, malformed run records and
checkpoints, paths and devices of the wrong kind, recipe and manifest edge cases. Each case asserts the error
type and that the message names the option / file / field, or asserts the correct behaviour."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vltrim
from vltrim.checks import integer, number
from vltrim.cli import app
from vltrim.data import ImageCaptionManifest, ImageFolder, SyntheticCaptions
from vltrim.data.synthetic import tokenizer as word_tokenizer
from vltrim.structure.plan import PlanError
from vltrim.tasks import contrastive_loss, evaluate_classification, evaluate_retrieval
from vltrim.train.loop import CheckpointError, train
from vltrim.train.run_record import ResumeMismatchError
from vltrim.zoo import tiny_model

DATA = SyntheticCaptions("train", 16)
ITEMS = [DATA[i] for i in range(8)]
FAST = dict(method="l1", retrain_steps=0, latency_batch=0, progress=False, evaluate_before=False)
runner = CliRunner()


def edited(**fields) -> list[dict]:
    """ITEMS with ``fields`` replaced (a callable gets the old value)."""
    return [{**it, **{k: f(it[k]) if callable(f) else f for k, f in fields.items()}} for it in ITEMS]


def no_run(monkeypatch) -> None:
    """Make compress's work phase fail the test: an error must come from the checks before it."""
    monkeypatch.setattr(
        sys.modules["vltrim.run.runner"], "_run", lambda *a: pytest.fail("work started before the error")
    )


def cli_refused(args: list, *words: str) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "Traceback" not in text
    for w in words:
        assert w in text, (w, text)
    return text


# ---- options: numpy scalars accepted, wrong types refused naming the option ---------------------------------
def test_numpy_scalars_are_accepted_as_numbers():
    res = vltrim.compress(
        tiny_model("CLIPModel"),
        target=np.float32(0.5),
        align=np.int64(8),
        seed=np.int64(3),
        batch_size=np.int32(4),
        train_data=ITEMS,
        **{**FAST, "retrain_steps": np.int64(1)},
        retrain_lr=np.float32(1e-4),
    )
    assert res.plan.achieved["params_removed"] == pytest.approx(0.5, abs=0.05)
    assert integer("n", np.int16(5)) == 5 and type(integer("n", np.int16(5))) is int
    assert number("x", np.float32(0.25)) == 0.25
    for bad in (np.bool_(True), True, "3", 2.5):
        with pytest.raises(ValueError, match="n must be an integer"):
            integer("n", bad)


@pytest.mark.parametrize(
    "option,value",
    [
        ("target", "0.5"),
        ("max_ratio", "0.5"),
        ("units", 5),
        ("method", {"l1"}),
        ("task", ["retrieval"]),
        ("metric", None),
        ("allocation", 3),
        ("seed", 2**40),
        ("seed", -1),
    ],
)
def test_options_of_the_wrong_type_name_the_option(option, value, monkeypatch):
    no_run(monkeypatch)
    with pytest.raises(ValueError, match=option):
        vltrim.compress(tiny_model("CLIPModel"), **{**FAST, option: value})


def test_work_dir_of_the_wrong_type_and_whole_float_align(tmp_path):
    with pytest.raises(TypeError, match="work_dir"):
        vltrim.compress(tiny_model("CLIPModel"), work_dir=5, **FAST)
    res = vltrim.compress(tiny_model("CLIPModel"), align=8.0, **FAST)  # a whole float is the integer (was a TypeError)
    assert all(len(k) % 8 == 0 for k in res.plan.keep.values())


# ---- data the model cannot take: refused before any work, naming the option ---------------------------------
@pytest.mark.parametrize(
    "label,fields,words",
    [
        ("float ids", dict(input_ids=lambda v: v.float()), ["train_data", "input_ids", "integers"]),
        (
            "uint8 pixels",
            dict(pixel_values=torch.zeros(3, 32, 32, dtype=torch.uint8)),
            ["train_data", "pixel_values", "uint8"],
        ),
        ("wrong image size", dict(pixel_values=torch.zeros(3, 64, 64)), ["train_data", "CLIPModel", "64"]),
        ("one channel", dict(pixel_values=torch.zeros(1, 32, 32)), ["train_data", "channels"]),
        ("ids beyond vocab", dict(input_ids=lambda v: v + 1000), ["train_data", "token embedding table has 64 rows"]),
        ("2-d labels", dict(label=torch.tensor([1, 2])), ["train_data", "label"]),
    ],
)
def test_train_data_the_model_cannot_take_fails_before_work(label, fields, words, monkeypatch):
    no_run(monkeypatch)
    with pytest.raises((TypeError, ValueError)) as e:
        vltrim.compress(tiny_model("CLIPModel"), train_data=edited(**fields), **{**FAST, "retrain_steps": 1})
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_bad_eval_data_with_good_train_data_fails_before_the_search(monkeypatch):
    no_run(monkeypatch)
    bad = [{k: v for k, v in it.items() if k != "pixel_values"} for it in ITEMS]
    with pytest.raises(ValueError, match="eval_data.*pixel_values"):
        vltrim.compress(tiny_model("CLIPModel"), train_data=ITEMS, eval_data=bad, **{**FAST, "retrain_steps": 1})


def images(labels) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(3, 32, 32, generator=g), "label": torch.tensor(c)} for c in labels]


@pytest.mark.parametrize("option", ["train_data", "eval_data"])
@pytest.mark.parametrize("label", [7, -1])
def test_classification_labels_outside_the_models_classes(option, label, monkeypatch):
    no_run(monkeypatch)
    data = {"train_data": images([0, 1, 2, 3]), "eval_data": images([0, 1, 2, 3])}
    data[option] = images([0, 1, 2, label])
    with pytest.raises(ValueError, match=f"{option}.*'label' {label} is outside the model's 5 classes"):
        vltrim.compress(
            tiny_model("ViTForImageClassification"), task="classification", **data, **{**FAST, "retrain_steps": 1}
        )


def test_classification_evaluation_refuses_bad_labels_instead_of_scoring_zero():
    vit = tiny_model("ViTForImageClassification")
    with pytest.raises(ValueError, match="outside the model's 5 classes"):
        evaluate_classification(vit, images([9, 9, 9]))
    onehot = [{**it, "label": torch.eye(5)[1]} for it in images([0, 0, 0, 0, 0])]
    with pytest.raises(ValueError, match="one integer class index"):
        evaluate_classification(vit, onehot)
    int32 = [{**it, "label": it["label"].int()} for it in images([0, 1, 2, 3])]
    res = vltrim.compress(vit, task="classification", train_data=int32, eval_data=int32, **{**FAST, "retrain_steps": 1})
    assert 0 <= res.report["after"]["top1"] <= 1


def test_retrieval_evaluates_fewer_items_than_its_largest_k():
    r = evaluate_retrieval(tiny_model("CLIPModel"), ITEMS[:3])
    assert r["i2t_R@10"] == 1.0 and r["t2i_R@5"] == 1.0 and 0 <= r["mean_R@1"] <= 1


# ---- run records and checkpoints ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["[1, 2]", '{"settings": [1]}', "{not json"])
def test_malformed_run_record_is_refused_naming_it_and_override_resumes(tmp_path, text):
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(ResumeMismatchError, match="run.json"):
        vltrim.compress(tiny_model("CLIPModel"), work_dir=tmp_path, resume=True, **FAST)
    res = vltrim.compress(tiny_model("CLIPModel"), work_dir=tmp_path, resume=True, override=True, **FAST)
    assert res.plan.keep
    assert json.loads((tmp_path / "run.json").read_text())["overridden"]


@pytest.mark.parametrize("name,content", [("state.pt", b"garbage"), ("model.safetensors", b"\x00" * 20)])
def test_a_damaged_checkpoint_is_named_when_resuming(tmp_path, name, content):
    model = tiny_model("CLIPModel").train()
    train(model, ITEMS, contrastive_loss, 3, batch_size=4, progress=False, output_dir=tmp_path, checkpoint_every=2)
    (tmp_path / "checkpoint-2" / name).write_bytes(content)
    with pytest.raises(CheckpointError, match="checkpoint-2"):
        train(
            tiny_model("CLIPModel"),
            ITEMS,
            contrastive_loss,
            3,
            batch_size=4,
            progress=False,
            output_dir=tmp_path,
            checkpoint_every=2,
            resume=True,
        )


# ---- files, paths and devices -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    m = tiny_model("CLIPModel")
    path = tmp_path_factory.mktemp("saved") / "m"
    vltrim.save(vltrim.apply_plan(m, vltrim.plan(m, "l1", 0.5)), path)
    return path


@pytest.mark.parametrize("bad", [None, 5, ""])
def test_paths_of_the_wrong_type_name_the_argument(saved, bad):
    with pytest.raises(TypeError, match="path must be a path"):
        vltrim.load(bad)
    with pytest.raises(TypeError, match="path must be a path"):
        vltrim.save(vltrim.load(saved), bad)


@pytest.mark.parametrize("device", ["tpu", None, "cuda:99" if torch.cuda.is_available() else "cuda"])
def test_load_on_a_device_that_does_not_exist(saved, device):
    with pytest.raises(ValueError, match="device"):
        vltrim.load(saved, device=device)


def test_a_directory_in_place_of_a_file(saved, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(saved, copy)
    (copy / "model.safetensors").unlink()
    (copy / "model.safetensors").mkdir()
    with pytest.raises(vltrim.ModelDirError, match="model.safetensors is a directory"):
        vltrim.load(copy)


def test_plan_files_with_a_key_given_twice_and_missing_plan_files(saved, tmp_path):
    text = (saved / "plan.json").read_text().replace('"method"', '"model_class": "SiglipModel", "method"', 1)
    (tmp_path / "dup.json").write_text(text)
    with pytest.raises(PlanError, match="dup.json.*'model_class' appears twice"):
        vltrim.Plan.load(tmp_path / "dup.json")
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        vltrim.Plan.load(tmp_path / "nope.json")
    with pytest.raises(TypeError, match="path"):
        vltrim.Plan.load(None)


def test_measure_checks_inputs_and_options():
    vit = tiny_model("ViTModel")
    with pytest.raises(ValueError, match="inputs do not fit ViTModel"):
        vltrim.measure(vit, inputs={"pixel_values": torch.zeros(1, 3, 64, 64)}, latency=False)
    with pytest.raises(TypeError, match="inputs must be a dict"):
        vltrim.measure(vit, inputs=torch.zeros(1, 3, 32, 32), latency=False)
    with pytest.raises(ValueError, match="latency must be true or false"):
        vltrim.measure(vit, latency="no")
    with pytest.raises(ValueError, match="min_round_s"):
        vltrim.measure(vit, min_round_s=float("nan"))
    assert vltrim.measure(vit, batch_size=np.int64(2), latency=False)["batch_size"] == 2


# ---- manifests and image folders ------------------------------------------------------------------------------------
@pytest.fixture
def image_dir(tmp_path):
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.png")
    return tmp_path


@pytest.mark.parametrize(
    "text,words",
    [
        ("image,caption,image\na.png,x,b.png\n", ["header", "'image'", "twice"]),
        ("image,caption\na.png,a red, round ball\n", ["row 1", "more cell", "quoted"]),
    ],
)
def test_csv_manifests_that_would_be_read_wrongly(image_dir, text, words):
    (image_dir / "m.csv").write_text(text)
    with pytest.raises(ValueError) as e:
        ImageCaptionManifest(image_dir / "m.csv", word_tokenizer(), image_size=16)
    for w in words + ["m.csv"]:
        assert w in str(e.value), (w, str(e.value))


def test_manifest_and_folder_arguments_of_the_wrong_type(image_dir):
    (image_dir / "m.jsonl").write_text('{"image": "a.png", "caption": "a red circle"}\n')
    with pytest.raises(ValueError, match="image_size"):
        ImageCaptionManifest(image_dir / "m.jsonl", word_tokenizer(), image_size="32")
    with pytest.raises(TypeError, match="tokenizer must be callable"):
        ImageCaptionManifest(image_dir / "m.jsonl", None, image_size=16)
    with pytest.raises(TypeError, match="path"):
        ImageCaptionManifest(None, word_tokenizer(), image_size=16)
    assert ImageCaptionManifest(image_dir / "m.jsonl", word_tokenizer(), image_size=np.int64(16))[0][
        "pixel_values"
    ].shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError, match="is a file"):
        ImageFolder(image_dir / "a.png", 16)
    with pytest.raises(ValueError, match="image_size"):
        ImageFolder(image_dir, (16, 16))


# ---- CLI ---------------------------------------------------------------------------------------------------------------
BASE = ["compress", "tiny:CLIPModel", "--method", "l1", "--latency-batch", "0"]


def test_cli_recipe_files_that_cannot_be_read(tmp_path):
    (tmp_path / "a.yaml").write_bytes(b"target: \xff\xfe\n")
    cli_refused(BASE + ["--out", tmp_path / "o", "--recipe", tmp_path / "a.yaml"], "a.yaml", "not UTF-8")
    (tmp_path / "b.yaml").write_text("target: 0.5\ntarget: 0.3\n")
    cli_refused(BASE + ["--out", tmp_path / "o", "--recipe", tmp_path / "b.yaml"], "b.yaml", "'target' is given twice")
    (tmp_path / "c.yaml").write_text("a: [unclosed\n")
    text = cli_refused(BASE + ["--out", tmp_path / "o", "--recipe", tmp_path / "c.yaml"], "c.yaml", "not valid YAML")
    assert text.count("error:") == 1


def test_cli_plan_and_data_paths_name_their_option(tmp_path):
    cli_refused(BASE + ["--out", tmp_path / "o", "--plan", tmp_path / "nope.json"], "--plan", "does not exist")
    cli_refused(BASE + ["--out", tmp_path / "o", "--plan", tmp_path], "--plan", "is a directory")
    (tmp_path / "bad.json").write_text("{not json")
    cli_refused(BASE + ["--out", tmp_path / "o", "--plan", tmp_path / "bad.json"], "--plan", "bad.json")
    cli_refused(
        BASE + ["--out", tmp_path / "o", "--data", tmp_path / "none.jsonl", "--retrain-steps", "1"],
        "--data",
        "none.jsonl",
    )
    cli_refused(BASE + ["--out", tmp_path / "o", "--seed", "99999999999999999999"], "--seed")
    assert not (tmp_path / "o").exists()


def test_cli_measure_device_and_demo_options_are_checked_before_work(tmp_path, monkeypatch):
    cli_refused(["measure", "tiny:ViTModel", "--device", "tpu"], "--device", "tpu")
    import vltrim.demo

    monkeypatch.setattr(vltrim.demo, "run_demo", lambda *a, **k: pytest.fail("the demo started"))
    cli_refused(["demo", "--train-size", "-5", "--out", tmp_path / "d"], "--train-size")
    cli_refused(["demo", "--target", "2", "--out", tmp_path / "d"], "--target")
    (tmp_path / "file").write_text("x")
    cli_refused(["demo", "--out", tmp_path / "file"], "file", "not a directory")


def test_applying_a_plan_twice_says_the_model_already_has_it():
    m = tiny_model("CLIPModel")
    p = vltrim.plan(m, "l1", 0.5)
    with pytest.raises(PlanError, match="already has the plan applied"):
        vltrim.apply_plan(vltrim.apply_plan(m, p), p)


@pytest.mark.parametrize(
    "target,words", [("0.5", ["target", "str"]), (None, ["target"]), (float("nan"), ["target"]), (1.5, ["target"])]
)
def test_plan_refuses_a_bad_target_by_name(target, words):
    from vltrim.zoo import tiny_model

    with pytest.raises(ValueError) as e:
        vltrim.plan(tiny_model("CLIPModel"), "l1", target)
    assert all(w in str(e.value) for w in words), str(e.value)
