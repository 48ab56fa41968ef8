"""Every task from the command line, with the data users have: --task, sentence files, image folders, hf:DIR,
tokenizers (builtin, vocabulary checks, no hub), images resized as CLIP does or by the model's own processor,
recipe spellings, vltrim.load('reference' / 'tiny:...'), and the Python inputs (DataLoader, datasets.Dataset)."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

import vltrim
from vltrim.cli import app, make_data
from vltrim.data import ModelImageProcessor, as_dataset, load_image
from vltrim.data.sentences import read_sentences
from vltrim.zoo import tiny_model

runner = CliRunner(env={"COLUMNS": "2000"})  # rich wraps error lines at the terminal width
WORDS = [f"w{i}" for i in range(59)]
QUICK = ["--method", "l1", "--target", "0.3", "--align", "1", "--latency-batch", "0", "--batch-size", "4"]


def _invoke(*args: str):
    r = runner.invoke(app, ["compress", *map(str, args)])
    return r


def _vocab(folder: Path, n_words: int = len(WORDS)) -> Path:
    """A BERT word-piece tokenizer of 5 special tokens + ``n_words`` words, saved in ``folder``."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(n_words)]
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return folder


def _bert_dir(tmp_path: Path) -> Path:
    """A tiny BERT saved as a sentence-transformers model (64-row vocabulary, max_seq_length 24)."""
    d = tmp_path / "minilm"
    tiny_model("BertModel").save_pretrained(d)
    _vocab(d)
    (d / "sentence_bert_config.json").write_text('{"max_seq_length": 24}')
    (d / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": 64, "pooling_mode_mean_tokens": true}')
    return d


def _sentences(n: int, seed: int = 0) -> list[str]:
    r = random.Random(seed)
    return [" ".join(r.choice(WORDS) for _ in range(r.randint(3, 30))) for _ in range(n)]


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    noise = rng.integers(-20, 20, (size[1], size[0], 3))
    Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(path)


COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}


def _folder(root: Path, classes=COLOURS, per_class: int = 3) -> Path:
    for name in classes:
        for i in range(per_class):
            _png(root / name / f"{i}.png", COLOURS.get(name, (128, 128, 128)))
    return root


# ---------------------------------------------------------------- sentence-embedding


def test_sentence_embedding_from_the_shell_end_to_end(tmp_path):
    """A sentence-transformers BERT directory, a .txt and a labelled .jsonl of sentences: compress, retrain with
    --retrain-lr / --seed, print the metric, save with the pipeline files, reload."""
    src = _bert_dir(tmp_path)
    (tmp_path / "train.txt").write_text("\n\n".join(_sentences(16)) + "\n")
    (tmp_path / "val.jsonl").write_text(
        "\n".join(json.dumps({"text": s, "label": "ab"[i // 2 % 2]}) for i, s in enumerate(_sentences(8, 1)))
    )
    out = tmp_path / "small"
    r = _invoke(
        src,
        "--out",
        out,
        "--task",
        "sentence-embedding",
        "--data",
        tmp_path / "train.txt",
        "--eval-data",
        tmp_path / "val.jsonl",
        "--retrain-steps",
        "2",
        "--retrain-lr",
        "3e-4",
        "--seed",
        "7",
        "--work-dir",
        tmp_path / "w",
        *QUICK,
    )
    assert r.exit_code == 0, r.output
    assert "cosine_to_teacher" in r.output and "probe_top1" in r.output
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "sentence-embedding" and 0 < report["after"]["cosine_to_teacher"] <= 1.0 + 1e-6
    run = json.loads((tmp_path / "w" / "run.json").read_text())
    assert run["settings"]["retrain_lr"] == 3e-4 and run["settings"]["seed"] == 7
    small = vltrim.load(out)
    assert vltrim.count_params(small) < vltrim.count_params(tiny_model("BertModel"))
    assert (out / "modules.json").is_file() and (out / "tokenizer.json").is_file()
    # the default task of a text encoder is sentence-embedding; a CSV of sentences works too
    (tmp_path / "s.csv").write_text(
        "sentence,label\n" + "\n".join(f"{s},{i // 2 % 2}" for i, s in enumerate(_sentences(6)))
    )
    r = _invoke(src, "--out", tmp_path / "again", "--eval-data", tmp_path / "s.csv", *QUICK)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "again" / "report.json").read_text())["task"] == "sentence-embedding"


def test_a_sentence_transformers_pipeline_with_its_transformer_in_a_sub_folder(tmp_path):
    """The older layout (0_Transformer/ holds config, weights and tokenizer): model and tokenizer are read from there."""
    src = tmp_path / "st"
    tiny_model("BertModel").save_pretrained(src / "0_Transformer")
    _vocab(src / "0_Transformer")
    (src / "modules.json").write_text(
        json.dumps(
            [{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]
        )
    )
    (tmp_path / "s.txt").write_text("\n".join(_sentences(6)))
    r = _invoke(src, "--out", tmp_path / "o", "--eval-data", tmp_path / "s.txt", *QUICK)
    assert r.exit_code == 0, r.output
    assert "cosine_to_teacher" in r.output and (tmp_path / "o" / "tokenizer.json").is_file()


def test_sentence_files_and_their_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('"a bare string"\n{"sentence": "b", "label": 3}\n')
    with pytest.raises(ValueError, match=r"row 1 has no 'label' but others do"):
        read_sentences(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"text": "x", "label": 1}\n{"txt": "y"}\n')
    with pytest.raises(ValueError, match=r"b.jsonl row 2 \(line 2\) has no 'text' or 'sentence' field"):
        read_sentences(tmp_path / "b.jsonl")
    (tmp_path / "c.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="c.txt has no sentences"):
        read_sentences(tmp_path / "c.txt")
    (tmp_path / "d.jsonl").write_text('{"text": "x", "label": "pos"}\n{"text": "y", "label": "neg"}\n')
    s = read_sentences(tmp_path / "d.jsonl")
    assert s.labels == [1, 0] and s.classes == ["neg", "pos"]
    src = _bert_dir(tmp_path)
    r = _invoke(src, "--out", tmp_path / "o", "--data", tmp_path / "b.jsonl", "--retrain-steps", "1", *QUICK)
    assert r.exit_code == 2 and "b.jsonl row 2" in r.output
    r = _invoke(src, "--out", tmp_path / "o", "--data", tmp_path / "pairs.parquet", "--retrain-steps", "1", *QUICK)
    assert (
        r.exit_code == 2
        and "--data" in r.output
        and "does not exist" in r.output
        and "text file of sentences" in r.output
    )
    r = _invoke(src, "--out", tmp_path / "o", "--data", "builtin", "--retrain-steps", "1", *QUICK)
    assert r.exit_code == 2 and "image-text model" in r.output and "sentence-embedding" in r.output


# ---------------------------------------------------------------- classification


def test_classification_from_an_image_folder_records_its_labels(tmp_path):
    """A ViT classifier retrained on root/<class>/*.png from the shell; class names land in the saved config, and an
    evaluation folder with fewer classes is labelled by name, not by position."""
    _folder(tmp_path / "train")
    _folder(tmp_path / "val", {"dog": 0, "fox": 0}, per_class=2)
    out = tmp_path / "small"
    r = _invoke(
        "tiny:ViTForImageClassification",
        "--out",
        out,
        "--task",
        "classification",
        "--data",
        tmp_path / "train",
        "--eval-data",
        tmp_path / "val",
        "--retrain-steps",
        "2",
        *QUICK,
    )
    assert r.exit_code == 0, r.output
    assert "top1" in r.output
    cfg = json.loads((out / "config.json").read_text())
    assert [cfg["id2label"][str(i)] for i in range(5)] == ["cat", "dog", "fox", "LABEL_3", "LABEL_4"]
    small = vltrim.load(out)
    assert small.config.label2id["fox"] == 2 and small.config.num_labels == 5
    val = make_data(str(tmp_path / "val"), small, "val", None, str(out), task="classification")
    assert sorted({int(val[i]["label"]) for i in range(len(val))}) == [1, 2]  # dog, fox: the model's ids


def test_classification_refuses_folders_that_do_not_fit(tmp_path):
    _folder(tmp_path / "six", {f"c{i}": 0 for i in range(6)}, per_class=1)
    r = _invoke(
        "tiny:ViTForImageClassification",
        "--out",
        tmp_path / "o",
        "--data",
        tmp_path / "six",
        "--retrain-steps",
        "1",
        *QUICK,
    )
    assert r.exit_code == 2 and "has 6 classes but the model has 5 labels" in r.output
    model = tiny_model("ViTForImageClassification")
    model.config.id2label = {i: n for i, n in enumerate(["ant", "bee", "cat", "dog", "eel"])}
    _folder(tmp_path / "named", {"cat": 0, "owl": 0}, per_class=1)
    with pytest.raises(
        ValueError, match=r"classes \['owl'\] are not among the model's labels \(ant, bee, cat, dog, eel\)"
    ):
        make_data(str(tmp_path / "named"), model, "train", None, "tiny:x", task="classification")
    r = _invoke(
        "tiny:ViTForImageClassification",
        "--out",
        tmp_path / "o",
        "--data",
        tmp_path / "six",
        "--tokenizer",
        "x",
        *QUICK,
    )
    assert r.exit_code == 2 and "reads no text" in r.output


# ---------------------------------------------------------------- images: CLIP's resize + crop, or the model's processor


def test_images_are_resized_and_centre_cropped_as_clip_does(tmp_path):
    img = np.zeros((32, 64, 3), np.int64)
    img[:, :16], img[:, 16:48], img[:, 48:] = (255, 0, 0), (0, 0, 200), (255, 0, 0)  # red sides, blue centre
    img[:, 16:48] += np.random.default_rng(0).integers(0, 40, (32, 32, 3))
    Image.fromarray(img.astype(np.uint8)).save(tmp_path / "wide.png")
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    ours = load_image(tmp_path / "wide.png", 16, mean, std)
    clip = transformers.CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, image_mean=mean, image_std=std
    )
    ref = torch.as_tensor(clip(images=Image.open(tmp_path / "wide.png"), return_tensors="pt")["pixel_values"][0])
    assert (
        ours.shape == (3, 16, 16) and (ours - ref).abs().max() < 1e-5
    )  # CLIP's own processor: shorter side, centre square
    for shape in ((90, 17), (150, 200)):
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (*shape, 3)).astype(np.uint8)).save(
            tmp_path / "r.png"
        )
        ref = torch.as_tensor(clip(images=Image.open(tmp_path / "r.png"), return_tensors="pt")["pixel_values"][0])
        assert (load_image(tmp_path / "r.png", 16, mean, std) - ref).abs().max() < 1e-5
    raw = load_image(tmp_path / "wide.png", 16, (0, 0, 0), (1, 1, 1))
    assert (
        raw[0].mean() < 0.15 and raw[2].mean() > 0.75
    )  # only the blue centre is kept, not squeezed in with the red sides


def test_the_model_directorys_image_processor_is_used(tmp_path):
    d = tmp_path / "vit"
    tiny_model("ViTForImageClassification").save_pretrained(d)
    proc = transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.5, 0.5]
    )
    proc.save_pretrained(d)
    _folder(tmp_path / "train", per_class=1)
    model = vltrim.cli.load_any(str(d))
    data = make_data(str(tmp_path / "train"), model, "train", None, str(d), task="classification")
    assert isinstance(data.processor, ModelImageProcessor)
    want = torch.as_tensor(
        proc(images=Image.open(tmp_path / "train" / "cat" / "0.png").convert("RGB"), return_tensors="pt")[
            "pixel_values"
        ][0]
    )
    assert torch.allclose(data[0]["pixel_values"], want)
    proc.size = {"height": 24, "width": 24}
    proc.save_pretrained(d)
    with pytest.raises(ValueError, match=r"preprocessor_config.json makes 24x24 images, but the model takes 32x32"):
        make_data(str(tmp_path / "train"), model, "train", None, str(d), task="classification")


# ---------------------------------------------------------------- tokenizers


def _manifest(tmp_path: Path, n: int = 4) -> Path:
    rows = []
    for i in range(n):
        _png(tmp_path / "img" / f"{i}.png", list(COLOURS.values())[i % 3], (48, 32))
        rows.append({"image": f"img/{i}.png", "caption": f"a {['red', 'green', 'blue'][i % 3]} square"})
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path / "pairs.jsonl"


def test_reference_model_with_the_builtin_tokenizer_and_a_manifest(tmp_path):
    pairs = _manifest(tmp_path)
    r = _invoke("reference", "--out", tmp_path / "o", "--eval-data", pairs, "--tokenizer", "builtin", *QUICK)
    assert r.exit_code == 0, r.output
    assert "mean_R@1" in r.output
    ref = vltrim.load("reference")
    assert type(ref).__name__ == "CLIPModel" and not ref.training
    data = make_data(str(pairs), ref, "val", None, "reference")  # builtin is the reference's default tokenizer
    assert int(data[0]["input_ids"].max()) < ref.config.text_config.vocab_size
    assert type(vltrim.load("tiny:ViTModel")).__name__ == "ViTModel"


def test_a_tokenizer_that_does_not_fit_is_refused_before_any_work(tmp_path):
    src = _bert_dir(tmp_path)
    big = _vocab(tmp_path / "big", 200)
    (tmp_path / "not-read-yet.jsonl").write_text("{not json")  # reading it would fail otherwise
    r = _invoke(
        src,
        "--out",
        tmp_path / "o",
        "--tokenizer",
        big,
        "--data",
        tmp_path / "not-read-yet.jsonl",
        "--retrain-steps",
        "1",
        *QUICK,
    )
    assert r.exit_code == 2 and "205 tokens" in r.output and "64 rows" in r.output and "big" in r.output
    pairs = _manifest(tmp_path)
    r = _invoke("tiny:CLIPModel", "--out", tmp_path / "o", "--eval-data", pairs, "--tokenizer", big, *QUICK)
    assert r.exit_code == 2 and "205 tokens" in r.output and "CLIPModel" in r.output


def test_no_hub_access_a_missing_tokenizer_fails_fast_naming_the_path(tmp_path):
    pairs = _manifest(tmp_path)
    start = time.perf_counter()
    r = _invoke(
        "tiny:CLIPModel",
        "--out",
        tmp_path / "o",
        "--eval-data",
        pairs,
        "--tokenizer",
        "no-org/no-such-tokenizer",
        *QUICK,
    )
    assert r.exit_code == 2 and "no-org/no-such-tokenizer" in r.output and "never downloads" in r.output
    assert time.perf_counter() - start < 20
    d = tmp_path / "clip"
    tiny_model("CLIPModel").save_pretrained(d)
    r = _invoke(d, "--out", tmp_path / "o", "--eval-data", pairs, *QUICK)
    assert r.exit_code == 2 and str(d) in r.output and "--tokenizer" in r.output
    r = _invoke("tiny:CLIPModel", "--out", tmp_path / "o", "--eval-data", pairs, *QUICK)
    assert r.exit_code == 2 and "tiny:CLIPModel has no directory to read a tokenizer from" in r.output


# ---------------------------------------------------------------- retrieval: image folders as zero-shot prompts


def test_retrieval_from_an_image_folder_uses_class_prompts(tmp_path):
    _folder(tmp_path / "train", per_class=2)
    d = tmp_path / "clip"
    tiny_model("CLIPModel").save_pretrained(d)
    _vocab(d, 40)
    r = _invoke(
        d,
        "--out",
        tmp_path / "o",
        "--task",
        "retrieval",
        "--data",
        tmp_path / "train",
        "--eval-data",
        tmp_path / "train",
        "--retrain-steps",
        "1",
        *QUICK,
    )
    assert r.exit_code == 0, r.output
    assert "zero_shot_top1" in r.output


# ---------------------------------------------------------------- hf:DIR (datasets.save_to_disk)


@pytest.mark.slow
def test_hf_saved_datasets_for_each_task(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the 'datasets' package is not installed: hf:DIR cannot be read")
    images = [Image.fromarray(np.full((36, 30, 3), c, np.uint8)) for c in list(COLOURS.values()) * 2]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "fox"])})
    datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2] * 2}, features=feats).save_to_disk(
        str(tmp_path / "cls")
    )
    r = _invoke(
        "tiny:ViTForImageClassification",
        "--out",
        tmp_path / "a",
        "--data",
        f"hf:{tmp_path / 'cls'}",
        "--eval-data",
        f"hf:{tmp_path / 'cls'}",
        "--retrain-steps",
        "1",
        *QUICK,
    )
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "a" / "config.json").read_text())["id2label"]["2"] == "fox"
    text = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": _sentences(8)}),
            "test": datasets.Dataset.from_dict({"text": _sentences(4, 1), "label": [0, 1, 0, 1]}),
        }
    )
    text.save_to_disk(str(tmp_path / "text"))
    src = _bert_dir(tmp_path)
    r = _invoke(
        src,
        "--out",
        tmp_path / "b",
        "--data",
        f"hf:{tmp_path / 'text'}",
        "--eval-data",
        f"hf:{tmp_path / 'text'}",
        "--retrain-steps",
        "1",
        *QUICK,
    )
    assert r.exit_code == 0, r.output
    assert "cosine_to_teacher" in r.output
    d = tmp_path / "clip"
    tiny_model("CLIPModel").save_pretrained(d)
    _vocab(d, 40)
    pairs = datasets.Dataset.from_dict(
        {"image": images, "caption": ["w1 w2", "w3", "w4 w5 w6"] * 2},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    pairs.save_to_disk(str(tmp_path / "pairs"))
    r = _invoke(d, "--out", tmp_path / "c", "--eval-data", f"hf:{tmp_path / 'pairs'}", *QUICK)
    assert r.exit_code == 0, r.output
    assert "mean_R@1" in r.output
    r = _invoke(src, "--out", tmp_path / "o", "--data", f"hf:{tmp_path / 'text'}/nope", "--retrain-steps", "1", *QUICK)
    assert r.exit_code == 2 and "is not a directory" in r.output
    datasets.DatasetDict({"dev": text["train"]}).save_to_disk(str(tmp_path / "dev"))
    r = _invoke(src, "--out", tmp_path / "o", "--eval-data", f"hf:{tmp_path / 'dev'}", *QUICK)
    assert r.exit_code == 2 and "holds the splits ['dev']" in r.output and "/SPLIT" in r.output


def test_hf_data_without_the_datasets_package_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    r = _invoke(_bert_dir(tmp_path), "--out", tmp_path / "o", "--eval-data", f"hf:{tmp_path}", *QUICK)
    assert r.exit_code == 2 and "needs the 'datasets' package" in r.output and "pip install datasets" in r.output


# ---------------------------------------------------------------- recipes, the Python inputs


def test_recipe_takes_the_command_line_spellings(tmp_path):
    _folder(tmp_path / "train", per_class=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"task: classification\ndata: {tmp_path / 'train'}\nretrain-steps: 1\nretrain_lr: 0.001\n"
        "batch-size: 4\nlatency-batch: 0\nalign: 1\n"
    )
    r = runner.invoke(
        app,
        [
            "compress",
            "tiny:ViTForImageClassification",
            "--out",
            str(tmp_path / "o"),
            "--recipe",
            str(recipe),
            "--work-dir",
            str(tmp_path / "w"),
            "--target",
            "0.3",
        ],
    )
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "w" / "run.json").read_text())["settings"]
    assert settings["retrain_lr"] == 0.001 and settings["retrain_steps"] == 1 and settings["task"] == "classification"
    recipe.write_text("search-steps: 4\nsearch_steps: 5\n")
    r = runner.invoke(app, ["compress", "tiny:CLIPModel", "--out", str(tmp_path / "o"), "--recipe", str(recipe)])
    assert r.exit_code == 2 and "'search_steps' is given twice" in r.output


def test_python_inputs_dataloader_and_hf_dataset_train_and_evaluate():
    datasets = pytest.importorskip("datasets", reason="the 'datasets' package is not installed")
    g = torch.Generator().manual_seed(0)
    hf = datasets.Dataset.from_dict(
        {
            "pixel_values": torch.randn(8, 3, 32, 32, generator=g).numpy(),
            "label": [0, 1, 2, 3, 4, 0, 1, 2],
            "note": ["raw text is dropped"] * 8,
        }
    )
    res = vltrim.compress(
        tiny_model("ViTForImageClassification"),
        "l1",
        0.3,
        task="classification",
        train_data=hf,
        eval_data=DataLoader(hf, batch_size=4),
        retrain_steps=2,
        align=1,
        latency_batch=0,
        progress=False,
    )
    assert {"before", "after"} <= set(res.report) and 0 <= res.report["after"]["top1"] <= 1
    with pytest.raises(
        TypeError,
        match="train_data takes a map-style dataset of dict items, a torch DataLoader or a Hugging Face datasets.Dataset",
    ):
        as_dataset(42, "train_data")


def test_python_data_tokenized_for_another_vocabulary_is_refused_before_any_work(monkeypatch):
    """Data built in Python carries token ids, not a tokenizer: ids past the embedding table are refused by name (with
    the largest id and the table's rows) before the search, instead of an IndexError deep in the embedding."""
    model = tiny_model("BertModel")
    rows = model.get_input_embeddings().num_embeddings
    items = [
        {
            "input_ids": torch.tensor([1, 2, rows + 7]),
            "attention_mask": torch.ones(3, dtype=torch.long),
            "teacher_embedding": torch.ones(model.config.hidden_size),
        }
    ] * 4
    calls = []
    monkeypatch.setattr(sys.modules["vltrim.run.runner"], "_run", lambda *a: calls.append(a))
    with pytest.raises(
        ValueError,
        match=rf"eval_data: items \[0, 3\] hold token id {rows + 7}, but BertModel's token embedding table has {rows} rows",
    ):
        vltrim.compress(
            model,
            "l1",
            0.3,
            task="sentence-embedding",
            eval_data=items,
            retrain_steps=0,
            latency_batch=0,
            progress=False,
        )
    assert not calls
    vltrim.compress(
        model,
        "l1",
        0.3,
        task="sentence-embedding",
        eval_data=items[:0] + [{**items[0], "input_ids": torch.tensor([1, 2, 3])}] * 4,
        retrain_steps=0,
        latency_batch=0,
        progress=False,
    )
    assert len(calls) == 1  # ids inside the table pass the check


def test_hf_image_column_of_file_paths(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the 'datasets' package is not installed")
    for i, c in enumerate(COLOURS.values()):
        _png(tmp_path / "img" / f"{i}.png", c, (48, 32))
    ds = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / "img" / f"{i % 3}.png") for i in range(6)], "label": [0, 1, 2] * 2}
    )
    ds.save_to_disk(str(tmp_path / "paths"))
    r = _invoke(
        "tiny:ViTForImageClassification", "--out", tmp_path / "a", "--eval-data", f"hf:{tmp_path / 'paths'}", *QUICK
    )
    assert r.exit_code == 0, r.output
    assert "top1" in r.output
    datasets.Dataset.from_dict({"image": ["nowhere.png"] * 2, "label": [0, 1]}).save_to_disk(str(tmp_path / "bad"))
    r = _invoke(
        "tiny:ViTForImageClassification", "--out", tmp_path / "b", "--eval-data", f"hf:{tmp_path / 'bad'}", *QUICK
    )
    assert r.exit_code == 2 and "nowhere.png" in r.output and "does not exist" in r.output


def test_a_hub_name_as_the_model_says_vltrim_never_downloads(tmp_path):
    start = time.perf_counter()
    r = _invoke("sentence-transformers/all-MiniLM-L6-v2", "--out", tmp_path / "o", *QUICK)
    assert (
        r.exit_code == 2
        and "never downloads" in r.output
        and "hf download sentence-transformers/all-MiniLM-L6-v2" in r.output
    )
    assert time.perf_counter() - start < 5  # no retries against an unreachable hub
