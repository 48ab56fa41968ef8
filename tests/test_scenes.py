"""The built-in scenes of the BLIP tasks: deterministic, split by description, answers true to the rendered objects,
one tokenizer for every word, item formats, a spread of answers, and fast enough to build in a test."""

from __future__ import annotations

import collections
import time

import numpy as np
import pytest
import torch

from vltrim.data import scenes
from vltrim.data.scenes import ANSWERS, SceneCaptions, SceneQA, caption_tokens, describe, question_tokens, split_of
from vltrim.data.synthetic import COLORS, MEAN, STD


@pytest.fixture(scope="module")
def qa() -> SceneQA:
    return SceneQA("train", 3000, seed=1)


@pytest.fixture(scope="module")
def captions() -> SceneCaptions:
    return SceneCaptions("val", 400, seed=2, image_size=64)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_identical_items_and_another_seed_differs():
    for make in (SceneCaptions, SceneQA):
        a, b, c = make("train", 64, seed=3), make("train", 64, seed=3), make("train", 64, seed=4)
        assert all(_same(a[i], b[i]) for i in range(64))
        assert not torch.equal(a.pixel_values, c.pixel_values)
        assert [describe(s) for s in a.scenes] != [describe(s) for s in c.scenes]
    q1, q2 = SceneQA("val", 50, seed=5), SceneQA("val", 50, seed=5)
    assert q1.questions == q2.questions and q1.answer_texts == q2.answer_texts


def test_images_rendered_on_access_equal_the_held_ones(monkeypatch):
    held = SceneQA("test", 40, seed=6, image_size=48)
    monkeypatch.setattr(scenes, "PRECOMPUTE_BYTES", 0)
    lazy = SceneQA("test", 40, seed=6, image_size=48)
    assert held.pixel_values is not None and lazy.pixel_values is None
    assert all(_same(held[i], lazy[i]) for i in range(40))


def test_val_and_test_descriptions_never_appear_in_train():
    train = {describe(s) for s in SceneCaptions("train", 4000, seed=0).scenes}
    train |= {describe(s) for s in SceneQA("train", 2000, seed=9).scenes}
    for split in ("val", "test"):
        held_out = {describe(s) for s in SceneQA(split, 1000, seed=1).scenes + SceneCaptions(split, 1000).scenes}
        assert held_out and not held_out & train
        assert {split_of(s) for s in SceneCaptions(split, 200, seed=7).scenes} == {split}


def test_labels_group_items_of_one_description(captions):
    descriptions = [describe(s) for s in captions.scenes]
    by_label = collections.defaultdict(set)
    for lab, d in zip(captions.labels.tolist(), descriptions):
        by_label[lab].add(d)
    assert all(len(d) == 1 for d in by_label.values())
    assert len(set(descriptions)) == len(by_label) < len(captions)  # descriptions repeat: hits and references exist
    for i in range(len(captions)):
        refs = captions.references(i)
        same = [c for c, lab in zip(captions.captions, captions.labels) if lab == captions.labels[i]]
        assert captions.captions[i] in refs and set(refs) == set(same) and len(refs) == len(set(refs))
    assert max(len(captions.references(i)) for i in range(len(captions))) > 1


def _cell_words(scene_caption: str) -> list[tuple[str, str, str, str, str]]:
    """(size, color, shape, row, column) of each object, read from a caption of template 0."""
    objects = scene_caption.replace(" and ", " , ").split(" , ")
    return [tuple(o.split()[:3] + o.split()[4:]) for o in objects]


def test_captions_name_the_objects_where_the_image_shows_them(captions):
    s = captions.image_size
    for i in range(0, len(captions), 7):
        img = (captions[i]["pixel_values"] * STD + MEAN).permute(1, 2, 0).numpy()
        seen = np.zeros((2, 3), bool)
        for _size, color, _shape, row, column in _cell_words(scenes.caption(captions.scenes[i], 0)):
            r, c = ("top", "bottom").index(row), ("left", "center", "right").index(column)
            cell = img[r * s // 2 : (r + 1) * s // 2, c * s // 3 : (c + 1) * s // 3].reshape(-1, 3)
            drawn = cell[cell.max(1) > 0.5]
            assert len(drawn) > 20, (i, row, column)
            mean = drawn.mean(0) / drawn.mean(0).max()
            nearest = min(COLORS, key=lambda k: np.abs(np.array(COLORS[k]) / max(COLORS[k]) - mean).sum())
            assert nearest == color, (i, captions.captions[i])
            seen[r, c] = True
        for r, c in zip(*np.nonzero(~seen)):  # empty cells show only background
            cell = img[r * s // 2 : (r + 1) * s // 2, c * s // 3 : (c + 1) * s // 3].reshape(-1, 3)
            assert (cell.max(1) > 0.5).mean() < 0.02


def test_every_caption_is_one_of_its_scene_templates(captions):
    for scene, text in zip(captions.scenes, captions.captions):
        assert text in {scenes.caption(scene, t) for t in range(len(scenes.CAPTIONS))}


def _answer(scene: scenes.Scene, question: str) -> str:
    """The answer to a generated question, worked out from the scene's objects (independently of the generator)."""
    cells = {
        (("top", "bottom")[c // 3], ("left", "center", "right")[c % 3]): t for c, t in ((t.cell, t) for t in scene)
    }
    where = {t.shape: (c // 3, c % 3) for c, t in ((t.cell, t) for t in scene)}
    w = question.split()
    if w[:2] == ["what", "colour"]:
        return next(t.color for t in scene if t.shape == w[4])
    if w[:2] == ["what", "size"]:
        return next(t.size for t in scene if t.shape == w[4])
    if w[:2] == ["what", "shape"]:
        return cells[(w[4], w[5])].shape
    if w[:2] == ["how", "many"]:
        return ["zero", "one", "two", "three"][
            sum(t.shape + ("es" if t.shape == "cross" else "s") == w[2] for t in scene)
        ]
    if w[:2] == ["is", "there"]:
        return "yes" if any(t.color == w[3] and t.shape == w[4] for t in scene) else "no"
    (ra, ca), (rb, cb) = where[w[2]], where[w[-2]]
    holds = {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[" ".join(w[3:-3])]
    return "yes" if holds else "no"


def test_every_answer_follows_from_the_scene(qa):
    for scene, q, a in zip(qa.scenes, qa.questions, qa.answer_texts):
        named = [w for w in q.split() if w in {t.shape for t in scene}]
        if q.startswith(("what colour ", "what size ", "is the ")):
            assert all(sum(t.shape == n for t in scene) == 1 for n in named), q  # "the <shape>" names one object
        assert _answer(scene, q) == a, (scene, q, a)


def test_answers_are_spread_and_yes_no_balanced(qa):
    counts = collections.Counter(qa.answer_texts)
    assert max(counts.values()) / len(qa) < 0.35, counts.most_common(3)
    assert 0.4 < counts["yes"] / (counts["yes"] + counts["no"]) < 0.6
    assert len(counts) >= len(ANSWERS) - 2  # "three" (three objects of one shape) is rare
    kinds = collections.Counter(" ".join(q.split()[:2]) for q in qa.questions)
    assert len(kinds) == 6 and min(kinds.values()) > 0.05 * len(qa), kinds


def test_the_tokenizer_covers_every_word_and_fits_a_64_token_table(qa, captions):
    tok = scenes.tokenizer()
    assert tok.vocab[:4] == ["[pad]", "[unk]", "[bos]", "[eos]"] and len(tok) <= 64
    texts = qa.questions + qa.answer_texts + captions.captions + list(ANSWERS)
    texts += [scenes.caption(s, t) for s in SceneCaptions("test", 300).scenes for t in range(3)]
    assert not {w for t in texts for w in t.split()} - set(tok.vocab)
    for data in (qa, captions):
        ids = torch.cat([data.input_ids if data is captions else data.fields["input_ids"]])
        assert not (ids == tok.unk_token_id).any()


def test_texts_fit_their_length_uncut(qa, captions):
    assert caption_tokens() <= 24 and question_tokens() <= 24
    lengths = captions.attention_mask.sum(1)
    assert torch.equal(lengths, torch.tensor([len(c.split()) + 2 for c in captions.captions]))
    assert int(lengths.max()) <= caption_tokens()
    q = qa.fields["attention_mask"].sum(1)
    assert torch.equal(q, torch.tensor([len(t.split()) + 2 for t in qa.questions]))


def test_caption_items(captions):
    item = captions[3]
    assert set(item) == {"pixel_values", "input_ids", "attention_mask", "label"}
    assert item["pixel_values"].shape == (3, 64, 64) and item["pixel_values"].dtype == torch.float32
    assert item["input_ids"].shape == item["attention_mask"].shape == (24,)
    assert item["input_ids"].dtype == item["attention_mask"].dtype == item["label"].dtype == torch.long
    assert item["input_ids"][0] == 2 and 3 in item["input_ids"].tolist()
    assert captions.labels.dtype == torch.long and len(captions.captions) == len(captions) == 400


def test_question_items(qa):
    item = qa[5]
    assert set(item) == {
        "pixel_values",
        "input_ids",
        "attention_mask",
        "decoder_input_ids",
        "decoder_attention_mask",
        "labels",
        "answer",
    }
    assert item["pixel_values"].shape == (3, 32, 32) and item["input_ids"].shape == (24,)
    assert all(item[k].dtype == torch.long for k in item if k != "pixel_values")
    tok, ids, mask = qa.tokenizer, qa.fields["decoder_input_ids"], qa.fields["decoder_attention_mask"]
    assert ids.shape == (len(qa), 6) and torch.equal(ids[:, 0], torch.full((len(qa),), 2))
    assert torch.equal(ids[:, 2], torch.full((len(qa),), 3)) and torch.equal(mask.sum(1), torch.full((len(qa),), 3))
    assert torch.equal(qa.fields["labels"], ids.masked_fill(mask == 0, -100))
    assert [qa.answers[int(a)] for a in qa.answer] == qa.answer_texts
    assert [tok.vocab[i] for i in ids[:, 1].tolist()] == qa.answer_texts
    assert SceneQA("test", 10).answers == qa.answers == list(ANSWERS)


@pytest.mark.parametrize("size", [64, 96, 224])
def test_other_image_sizes(size):
    d = SceneQA("val", 20, image_size=size)
    assert d[0]["pixel_values"].shape == (3, size, size) and torch.isfinite(d[19]["pixel_values"]).all()


def test_two_thousand_items_build_in_well_under_five_seconds():
    for make in (SceneCaptions, SceneQA):
        start = time.perf_counter()
        make("train", 2000, seed=11)
        assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "dev"}, "split must be one of"),
        ({"n": 0}, "n must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"image_size": 8}, "image_size must be an integer >= 16"),
        ({"max_length": 16}, "max_length 16 cannot hold the longest scene caption (22 tokens"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SceneCaptions(**{"n": 10, **kwargs})


def test_question_lengths_are_checked():
    with pytest.raises(ValueError, match="answer_length must be an integer >= 3"):
        SceneQA(n=10, answer_length=2)
    with pytest.raises(ValueError, match="longest scene question"):
        SceneQA(n=10, max_length=8)
    assert len(SceneQA(n=10, max_length=question_tokens())) == 10
