"""Text classification (BERT / RoBERTa / DistilBERT / MPNet / ModernBERT sequence classifiers): the task fits them by
default, trains and scores on tokenized texts, reads .jsonl / .csv and hf:DIR data with class names matched to the
model's labels, runs from the shell, and MoPE scores with it; a segmenter refuses distill's layer dropping clearly."""

from __future__ import annotations

import json
import random

import pytest
import torch
from test_cli_tasks import QUICK, WORDS, _invoke, _vocab

import vltrim
from vltrim.methods.common import prunable_groups
from vltrim.methods.mope import fast_errors, layer_ablations, make_probe, naive_errors, width_ablations
from vltrim.tasks import TokenizedTexts, default_task, get_task
from vltrim.tasks.sources import DataSource
from vltrim.zoo import tiny_model

CLASSIFIERS = [
    "BertForSequenceClassification",
    "RobertaForSequenceClassification",
    "DistilBertForSequenceClassification",
    "MPNetForSequenceClassification",
    "ModernBertForSequenceClassification",
]


def _texts(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Texts whose class (0..2) is which of three marker words they hold: learnable, so the metric moves."""
    r = random.Random(seed)
    labels = [i % 3 for i in range(n)]
    texts = [" ".join([f"w{y}", *(r.choice(WORDS[3:]) for _ in range(r.randint(2, 8)))]) for y in labels]
    return texts, labels


def _data(tmp_path, model, n=24, seed=0) -> TokenizedTexts:
    texts, labels = _texts(n, seed)
    return TokenizedTexts(texts, _tokenizer(tmp_path), 12, labels)


def _tokenizer(tmp_path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(_vocab(tmp_path / "tok")))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_the_task_fits_every_text_classifier_and_only_them(name):
    assert default_task(tiny_model(name)) == "text-classification"
    for other in ("BertModel", "ViTForImageClassification", "HubertForSequenceClassification"):
        assert not get_task("text-classification").fits(tiny_model(other))


@pytest.mark.parametrize("name", ["DistilBertForSequenceClassification", "ModernBertForSequenceClassification"])
def test_compress_trains_and_scores_a_text_classifier(tmp_path, name):
    model = tiny_model(name)
    data = _data(tmp_path, model)
    r = vltrim.compress(
        model, method="taylor", target=0.3, task="text-classification", train_data=data, eval_data=data,
        retrain_steps=30, retrain_lr=3e-3, batch_size=8, latency_batch=0, progress=False,
    )  # fmt: skip
    assert r.report["task"] == "text-classification"
    before, after = r.report["before"]["top1"], r.report["after"]["top1"]
    assert 0.0 <= before <= 1.0 and after > before  # the marker words are learnt
    batch = data.collate([data[i] for i in range(4)])
    loss = get_task("text-classification").loss(r.model, batch)
    assert torch.isfinite(loss)


def test_the_loss_reads_the_attention_mask(tmp_path):
    """Padding must not change a text's logits: the mask reaches the model."""
    model = tiny_model("BertForSequenceClassification").eval()
    data = _data(tmp_path, model, n=4)
    short = min(range(4), key=lambda i: len(data[i]["input_ids"]))
    alone = data.collate([data[short]])
    padded = data.collate([data[i] for i in range(4)])
    from vltrim.tasks.classification import class_logits

    with torch.no_grad():
        a, b = class_logits(model, alone)[0], class_logits(model, padded)[short]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_text_files_with_class_names_follow_the_models_labels(tmp_path):
    model = tiny_model("BertForSequenceClassification")
    model.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"w{i} w5", "label": ["pos", "neg"][i % 2]}) for i in range(6)))
    src = DataSource(model, "x", "text-classification", str(_vocab(tmp_path / "tok")))
    ds = src.open(str(f), "--data", "train")
    assert [int(ds[i]["label"]) for i in range(4)] == [2, 0, 2, 0]  # the model's ids, not sorted-name indices
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "w1", "label": "happy"}))
    with pytest.raises(ValueError, match="happy"):
        src.open(str(bad), "--data", "train")
    unlabelled = tmp_path / "u.csv"
    unlabelled.write_text("text\nw1 w2\n")
    with pytest.raises(ValueError, match="no 'label' field"):
        src.open(str(unlabelled), "--data", "train")


def test_hf_dir_with_text_and_string_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    model = tiny_model("DistilBertForSequenceClassification")
    texts, labels = _texts(6)
    datasets.Dataset.from_dict({"sentence": texts, "label": [["a", "b", "c"][y] for y in labels]}).save_to_disk(
        str(tmp_path / "d")
    )
    src = DataSource(model, "x", "text-classification", str(_vocab(tmp_path / "tok")))
    ds = src.open(f"hf:{tmp_path / 'd'}", "--data", "train")
    assert [int(ds[i]["label"]) for i in range(6)] == labels
    assert model.config.id2label[1] == "b"  # recorded for the saved model


def test_text_classification_from_the_shell(tmp_path):
    src = tmp_path / "clf"
    tiny_model("MPNetForSequenceClassification").save_pretrained(src)
    _vocab(src)
    texts, labels = _texts(12)
    (tmp_path / "train.csv").write_text(
        "text,label\n" + "\n".join(f"{t},{['x', 'y', 'z'][y]}" for t, y in zip(texts, labels))
    )
    out = tmp_path / "small"
    r = _invoke(src, "--out", out, "--data", tmp_path / "train.csv", "--eval-data", tmp_path / "train.csv", *QUICK)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "text-classification" and "top1" in report["after"]
    reloaded = vltrim.load(out)
    assert reloaded.config.id2label[2] == "z"


@pytest.mark.parametrize("name", ["BertForSequenceClassification", "ModernBertForSequenceClassification"])
def test_mope_scores_text_classifiers_fast_as_naive(tmp_path, name):
    model = tiny_model(name)
    probe = make_probe("text-classification", _data(tmp_path, model), batch_size=10)
    ab = width_ablations(model, prunable_groups(model, "heads,neurons"), 16, 8) + layer_ablations(model)
    fast, naive = fast_errors(model, probe, ab, ablation_batch=3), naive_errors(model, probe, ab)
    assert max(abs(a - b) for a, b in zip(fast, naive)) < 1e-6


def test_mope_scores_a_segmenter_and_distill_refuses_it():
    model = tiny_model("DPTForSemanticSegmentation")
    size = model.config.image_size
    g = torch.Generator().manual_seed(0)
    items = [
        {
            "pixel_values": torch.randn(3, size, size, generator=g),
            "labels": torch.randint(0, 3, (size, size), generator=g),
        }
        for _ in range(8)
    ]
    plan = vltrim.plan(model, method="mope", target=0.3, calib_data=items, task="segmentation")
    assert plan.achieved["params_removed"] > 0
    with pytest.raises(ValueError, match="no tower whose depth can change.*width method"):
        vltrim.plan(model, method="distill", target=0.3)
