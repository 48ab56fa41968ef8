"""--data / --eval-data for the BLIP tasks (itm-retrieval, captioning, vqa): the built-in scenes at the model's sizes,
image-question-answer manifests, hf:DIR datasets, and errors that name the file, the field and what the task takes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from vltrim.data.manifest import ImageCaptionManifest, ImageQuestionManifest, encode_questions
from vltrim.data.scenes import SceneCaptions, SceneQA, vocabulary
from vltrim.data.scenes import tokenizer as scene_tokenizer
from vltrim.tasks import TASKS
from vltrim.tasks.sources import DataSource, builtin_scenes
from vltrim.zoo import tiny_model

MODELS = {
    "itm-retrieval": "BlipForImageTextRetrieval",
    "captioning": "BlipForConditionalGeneration",
    "vqa": "BlipForQuestionAnswering",
}
QA_KEYS = {
    "pixel_values",
    "input_ids",
    "attention_mask",
    "decoder_input_ids",
    "decoder_attention_mask",
    "labels",
    "answer",
}


@pytest.fixture(scope="module")
def models() -> dict:
    return {task: tiny_model(cls) for task, cls in MODELS.items()}


def _source(models: dict, task: str, tokenizer: str | None = None) -> DataSource:
    return DataSource(models[task], f"tiny:{MODELS[task]}", task, tokenizer)


def _bert_tokenizer(folder: Path) -> Path:
    """A BERT word-piece tokenizer of 5 special tokens + the scene words, saved in ``folder`` (fits a 64-row table)."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + vocabulary()
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return folder


def _png(path: Path, colour: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 48, 3), colour, np.uint8)).save(path)
    return path.name


def _qa_rows(tmp_path: Path) -> list[dict]:
    red, blue = _png(tmp_path / "red.png", (220, 40, 40)), _png(tmp_path / "blue.png", (50, 90, 230))
    return [
        {"image": red, "question": "what colour is the square ?", "answer": "red"},
        {"image": blue, "question": "is there a blue circle ?", "answer": "yes"},
        {"image": red, "question": "how many circles are there ?", "answer": "zero"},
        {"image": blue, "question": "what colour is the circle ?", "answer": "blue"},
    ]


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _csv(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


# ---------------------------------------------------------------- builtin


def test_builtin_gives_each_task_its_scenes_at_the_model_sizes(models):
    for task, kind in (("itm-retrieval", SceneCaptions), ("captioning", SceneCaptions), ("vqa", SceneQA)):
        src = _source(models, task)
        src.check(["builtin", "builtin"])
        data = src.open("builtin", "--eval-data", "val")
        assert isinstance(data, kind) and len(data) == 1000 and data.split == "val"
        item = data[0]
        assert item["pixel_values"].shape == (3, 32, 32) and item["input_ids"].shape == (24,)
        assert set(item) == (QA_KEYS if task == "vqa" else {"pixel_values", "input_ids", "attention_mask", "label"})
        assert len(data.tokenizer) == len(scene_tokenizer())
    captions = _source(models, "captioning").open("builtin", "--eval-data", "val")
    assert captions is _source(models, "itm-retrieval").open("builtin", "--data", "val")  # rendered once


def test_builtin_train_split_is_larger_and_unseen_by_eval(models):
    train = _source(models, "vqa").open("builtin", "--data", "train")
    val = _source(models, "vqa").open("builtin", "--eval-data", "val")
    assert len(train) == 8000 and train.split == "train"
    assert not {s for s in train.descriptions} & {s for s in val.descriptions}


@pytest.mark.parametrize("task", sorted(MODELS))
def test_builtin_items_run_through_the_task(models, task):
    if task not in TASKS:
        pytest.skip(f"task {task} is not registered yet")
    data = _source(models, task).open("builtin", "--eval-data", "val")
    TASKS[task].try_data(models[task], data, "--data")


def _vqa_model(**text) -> torch.nn.Module:
    cfg = tiny_model("BlipForQuestionAnswering").config.to_dict()
    cfg["text_config"].update(text)
    return transformers.BlipForQuestionAnswering(transformers.BlipConfig(**cfg))


def test_builtin_refuses_a_model_whose_vocabulary_is_smaller_than_the_scene_tokenizer():
    small = _vqa_model(vocab_size=len(scene_tokenizer()) - 1)
    src = DataSource(small, "tiny:BlipForQuestionAnswering", "vqa")
    for call in (lambda: src.check(["builtin", None]), lambda: src.open("builtin", "--data", "train")):
        with pytest.raises(ValueError, match="--data builtin") as e:
            call()
        assert f"({len(scene_tokenizer())} tokens)" in str(e.value) and "--tokenizer" in str(e.value)
    with pytest.raises(ValueError, match="--eval-data builtin"):
        src.check([None, "builtin"])


def test_builtin_takes_a_model_built_with_exactly_the_scene_vocabulary():
    model = _vqa_model(vocab_size=len(scene_tokenizer()))
    src = DataSource(model, "tiny:BlipForQuestionAnswering", "vqa")
    src.check(["builtin", "builtin"])
    data = src.open("builtin", "--eval-data", "val")
    if "vqa" in TASKS:
        TASKS["vqa"].try_data(model, data, "--eval-data")


def test_builtin_refuses_a_text_length_shorter_than_the_captions():
    cfg = tiny_model("BlipForConditionalGeneration").config.to_dict()
    cfg["text_config"]["max_position_embeddings"] = 16
    model = transformers.BlipForConditionalGeneration(transformers.BlipConfig(**cfg))
    with pytest.raises(ValueError, match=r"--data builtin: max_length 16 cannot hold the longest scene caption"):
        DataSource(model, "tiny:BlipForConditionalGeneration", "captioning").open("builtin", "--data", "train")


def test_builtin_is_cached_per_split_size_and_length():
    assert builtin_scenes(True, "val", 32, 24) is builtin_scenes(True, "val", 32, 24)
    assert builtin_scenes(False, "val", 32, 24) is not builtin_scenes(True, "val", 32, 24)


def test_builtin_retrieval_is_unchanged():
    """The retrieval task's builtin data stays the one-object synthetic captions (a recorded baseline)."""
    from vltrim.data.synthetic import SyntheticCaptions

    data = DataSource(tiny_model("CLIPModel"), "tiny:CLIPModel", "retrieval").open("builtin", "--eval-data", "val")
    assert type(data) is SyntheticCaptions and len(data) == 1000


# ---------------------------------------------------------------- manifests


def test_vqa_manifest_jsonl_and_csv_give_scene_qa_items(tmp_path, models):
    rows = _qa_rows(tmp_path)
    tok = _bert_tokenizer(tmp_path / "tok")
    src = _source(models, "vqa", str(tok))
    jsonl = _jsonl(tmp_path / "qa.jsonl", rows)
    csv = _csv(
        tmp_path / "qa.csv", "image,question,answer", [f"{r['image']},{r['question']},{r['answer']}" for r in rows]
    )
    for path in (jsonl, csv):
        src.check([str(path), None])
        data = src.open(str(path), "--data", "train")
        assert isinstance(data, ImageQuestionManifest) and len(data) == 4
        assert data.answers == ["blue", "red", "yes", "zero"] and data.answer_texts == [r["answer"] for r in rows]
        assert data.questions == [r["question"] for r in rows] and callable(data.tokenizer.batch_decode)
        item = data[1]
        assert set(item) == QA_KEYS and item["pixel_values"].shape == (3, 32, 32) and item["input_ids"].shape == (24,)
        assert data.answers[int(item["answer"])] == "yes"
        ids, mask = data.fields["decoder_input_ids"], data.fields["decoder_attention_mask"]
        assert ids.shape == (4, 3) and bool(mask.all())  # [CLS] answer [SEP]: trimmed to the longest answer
        assert data.tokenizer.batch_decode(ids, skip_special_tokens=True) == data.answer_texts
        if "vqa" in TASKS:
            TASKS["vqa"].try_data(models["vqa"], data, "--data")


def test_caption_manifests_for_itm_retrieval_and_captioning(tmp_path, models):
    red, blue = _png(tmp_path / "red.png", (220, 40, 40)), _png(tmp_path / "blue.png", (50, 90, 230))
    rows = [
        {"image": red, "caption": "small red square at top left"},
        {"image": red, "caption": "top left : small red square"},
        {"image": blue, "caption": "large blue circle at bottom right"},
    ]
    path = _jsonl(tmp_path / "c.jsonl", rows)
    tok = str(_bert_tokenizer(tmp_path / "tok"))
    for task in ("itm-retrieval", "captioning"):
        data = _source(models, task, tok).open(str(path), "--eval-data", "val")
        assert isinstance(data, ImageCaptionManifest) and data.tokenizer is not None
        assert data.references(0) == data.references(1) == [rows[0]["caption"], rows[1]["caption"]]
        assert data.references(2) == [rows[2]["caption"]]
        if task in TASKS:
            TASKS[task].try_data(models[task], data, "--eval-data")


@pytest.mark.parametrize("task, missing", [("vqa", "answer"), ("vqa", "question"), ("captioning", "caption")])
def test_missing_manifest_fields_name_the_file_the_field_and_what_the_task_takes(tmp_path, models, task, missing):
    row = {"image": _png(tmp_path / "a.png", (1, 2, 3)), "question": "what ?", "answer": "red", "caption": "red"}
    path = _jsonl(tmp_path / "m.jsonl", [{k: v for k, v in row.items() if k != missing}])
    src = _source(models, task, str(_bert_tokenizer(tmp_path / "tok")))
    with pytest.raises(ValueError, match=f"lacks '{missing}'") as e:
        src.open(str(path), "--data", "train")
    assert str(path) in str(e.value) and f"the {task} task takes" in str(e.value)


def test_vqa_manifest_errors_are_clear(tmp_path, models):
    src = _source(models, "vqa", str(_bert_tokenizer(tmp_path / "tok")))
    image = _png(tmp_path / "a.png", (1, 2, 3))
    cases = {
        "list.jsonl": ([{"image": image, "question": "q ?", "answer": ["red", "blue"]}], "one answer per row"),
        "empty.jsonl": ([{"image": image, "question": " ", "answer": "red"}], "the question field 'question' is empty"),
        "none.jsonl": ([{"image": "gone.png", "question": "q ?", "answer": "red"}], "images listed in"),
    }
    for name, (rows, message) in cases.items():
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            src.open(str(_jsonl(tmp_path / name, rows)), "--data", "train")
    csv = _csv(tmp_path / "short.csv", "image,question", [f"{image},what ?"])
    with pytest.raises(ValueError, match=r"short.csv row 1 \(line 2\) lacks 'answer'.*vqa task takes"):
        src.open(str(csv), "--data", "train")
    (tmp_path / "notes.txt").write_text("what ?")
    for bad in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(ValueError, match="the vqa task takes 'builtin'"):
            src.open(str(bad), "--data", "train")
    with pytest.raises(FileNotFoundError, match="the vqa task takes 'builtin'"):
        src.check([str(tmp_path / "nowhere.jsonl"), None])


def test_encode_questions_pads_answers_to_the_longest_or_a_fixed_length():
    tok = scene_tokenizer(24)
    f = encode_questions(tok, ["what colour is the square ?"] * 2, ["red", "top left"], 24, None)
    assert f["decoder_input_ids"].shape == (2, 4) and f["labels"][0].tolist() == [2, tok.index["red"], 3, -100]
    f = encode_questions(tok, ["what colour is the square ?"], ["red"], 24, 6)
    assert f["decoder_input_ids"].shape == (1, 6) and f["decoder_attention_mask"].sum() == 3


# ---------------------------------------------------------------- hf:DIR


def _hf_images(datasets, n: int) -> tuple[list, object]:
    images = [Image.fromarray(np.full((36, 30, 3), 40 * i, np.uint8)) for i in range(n)]
    return images, datasets.Image()


def test_hf_saved_vqa_dataset(tmp_path, models):
    datasets = pytest.importorskip("datasets", reason="the 'datasets' package is not installed: hf:DIR cannot be read")
    images, image_feature = _hf_images(datasets, 4)
    feats = datasets.Features(
        {"image": image_feature, "question": datasets.Value("string"), "answer": datasets.Value("string")}
    )
    qa = {
        "image": images,
        "question": ["what colour is the square ?", "is there a red circle ?"] * 2,
        "answer": ["red", "no", "blue", "yes"],
    }
    full = datasets.Dataset.from_dict(qa, features=feats)
    datasets.DatasetDict({"train": full, "test": full.select([0, 1])}).save_to_disk(str(tmp_path / "qa"))
    src = _source(models, "vqa", str(_bert_tokenizer(tmp_path / "tok")))
    train = src.open(f"hf:{tmp_path / 'qa'}", "--data", "train")
    val = src.open(f"hf:{tmp_path / 'qa'}", "--eval-data", "val")
    assert len(train) == 4 and len(val) == 2 and train.answers == ["blue", "no", "red", "yes"]
    assert set(train[2]) == QA_KEYS and train[2]["pixel_values"].shape == (3, 32, 32)
    assert train.answers[int(train[2]["answer"])] == "blue" and callable(val.tokenizer.batch_decode)
    if "vqa" in TASKS:
        TASKS["vqa"].try_data(models["vqa"], val, "--eval-data", evaluate=True)
    no_answer = datasets.Dataset.from_dict(
        {"image": images, "question": qa["question"]},
        features=datasets.Features({"image": image_feature, "question": datasets.Value("string")}),
    )
    no_answer.save_to_disk(str(tmp_path / "noanswer"))
    with pytest.raises(ValueError, match=r"has no 'answer' / 'multiple_choice_answer' column.*vqa task takes"):
        src.open(f"hf:{tmp_path / 'noanswer'}", "--data", "train")
    lists = datasets.Dataset.from_dict({"image": images, "question": qa["question"], "answer": [["red"]] * 4})
    lists.save_to_disk(str(tmp_path / "lists"))
    with pytest.raises(ValueError, match="column 'answer' holds .*not strings"):
        src.open(f"hf:{tmp_path / 'lists'}", "--data", "train")


def test_hf_saved_caption_dataset_for_captioning(tmp_path, models):
    datasets = pytest.importorskip("datasets", reason="the 'datasets' package is not installed: hf:DIR cannot be read")
    images, image_feature = _hf_images(datasets, 3)
    feats = datasets.Features({"image": image_feature, "caption": datasets.Value("string")})
    captions = ["small red square at top left", "a photo of large blue circle top right", "top left : small cross"]
    datasets.Dataset.from_dict({"image": images, "caption": captions}, features=feats).save_to_disk(str(tmp_path / "c"))
    src = _source(models, "captioning", str(_bert_tokenizer(tmp_path / "tok")))
    data = src.open(f"hf:{tmp_path / 'c'}", "--eval-data", "val")
    assert data.captions == captions and callable(data.tokenizer.batch_decode)
    assert set(data[0]) == {"pixel_values", "input_ids", "attention_mask", "label"}
    if "captioning" in TASKS:
        TASKS["captioning"].try_data(models["captioning"], data, "--eval-data")
    datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": image_feature})).save_to_disk(
        str(tmp_path / "images")
    )
    with pytest.raises(ValueError, match=r"no text column.*the captioning task takes"):
        src.open(f"hf:{tmp_path / 'images'}", "--data", "train")
