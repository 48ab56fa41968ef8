"""Built-in data, tokenizer, manifest loaders, retrieval metrics and the training loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vltrim.data import ImageCaptionManifest, ImageFolder, SyntheticCaptions, WordTokenizer
from vltrim.data.synthetic import ATTRIBUTES, tokenizer
from vltrim.tasks import contrastive_loss, evaluate_retrieval, recall_at_k, zero_shot_accuracy
from vltrim.train import train
from vltrim.zoo import tiny_model


def test_synthetic_is_deterministic_and_split_dependent():
    a, b = SyntheticCaptions("train", 64, seed=3), SyntheticCaptions("train", 64, seed=3)
    assert torch.equal(a.pixel_values, b.pixel_values) and a.captions == b.captions
    assert not torch.equal(a.pixel_values, SyntheticCaptions("val", 64, seed=3).pixel_values)


def test_captions_describe_their_label():
    d = SyntheticCaptions("test", 50)
    for cap, lab in zip(d.captions, d.labels.tolist()):
        color, shape, size, position = ATTRIBUTES[lab]
        assert all(w in cap for w in (color, shape, size, position))


def test_tokenizer_layout(tmp_path):
    tok = tokenizer(12)
    enc = tok(["a small red circle in the center", "zzz unknown"])
    ids = enc["input_ids"]
    assert ids[0, 0] == tok.bos_token_id and tok.eos_token_id in ids[0] and tok.eos_token_id != 2
    assert ids[1, 1] == tok.unk_token_id and enc["attention_mask"][1].sum() == 4
    tok.save(tmp_path / "t.json")
    assert WordTokenizer.load(tmp_path / "t.json").vocab == tok.vocab


def test_recall_at_k_counts_same_label_hits():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.0, 0.1, 0.2]])
    labels = torch.tensor([0, 1, 0])
    r = recall_at_k(sim, labels, labels, ks=(1, 2))
    assert r[1] == pytest.approx(2 / 3)  # row 1 retrieves item 0 (label 0) first: a miss
    assert r[2] == 1.0


def _tiny_clip_and_data(n=256):
    return tiny_model("CLIPModel"), SyntheticCaptions("train", n)


def test_training_reduces_contrastive_loss():
    model, data = _tiny_clip_and_data()
    losses = train(model, data, contrastive_loss, steps=40, lr=2e-3, batch_size=32, progress=False)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2


def test_retrieval_metrics_and_zero_shot_are_in_range():
    model, data = _tiny_clip_and_data(64)
    m = evaluate_retrieval(model, data)
    assert set(m) >= {"i2t_R@1", "t2i_R@1", "i2t_R@10", "mean_R@1"} and all(0 <= v <= 1 for v in m.values())
    assert m["i2t_R@1"] <= m["i2t_R@5"] <= m["i2t_R@10"]
    prompts = tokenizer(16)([f"a photo of a {s}" for s in ("circle", "square", "triangle", "cross")])
    shape_data = [
        {
            "pixel_values": x["pixel_values"],
            "label": torch.tensor(["circle", "square", "triangle", "cross"].index(ATTRIBUTES[int(x["label"])][1])),
        }
        for x in data
    ]
    assert 0 <= zero_shot_accuracy(model, shape_data, prompts) <= 1


def _write_images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")


def test_manifest_jsonl_and_csv(tmp_path):
    _write_images(tmp_path / "img", 3)
    rows = [{"image": f"img/{i}.png", "caption": c} for i, c in enumerate(["a red circle", "a cat", "a red circle"])]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "m.csv").write_text("image,caption\n" + "\n".join(f"{r['image']},{r['caption']}" for r in rows))
    for name in ("m.jsonl", "m.csv"):
        d = ImageCaptionManifest(tmp_path / name, tokenizer(8), image_size=16, max_length=8)
        item = d[1]
        assert item["pixel_values"].shape == (3, 16, 16) and item["input_ids"].shape == (8,)
        assert d.labels.tolist() == [0, 1, 0]  # identical captions share a label


def test_manifest_errors_are_clear(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "nope.png", "caption": "x"}))
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageCaptionManifest(tmp_path / "m.jsonl", tokenizer(8), 16)
    (tmp_path / "b.jsonl").write_text(json.dumps({"img": "a.png", "text": "x"}))
    with pytest.raises(ValueError, match="lacks"):
        ImageCaptionManifest(tmp_path / "b.jsonl", tokenizer(8), 16)
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(ValueError, match="jsonl or .csv"):
        ImageCaptionManifest(tmp_path / "c.txt", tokenizer(8), 16)


def test_image_folder(tmp_path):
    _write_images(tmp_path / "cats", 2)
    _write_images(tmp_path / "dogs", 3)
    d = ImageFolder(tmp_path, image_size=8)
    assert d.classes == ["cats", "dogs"] and len(d) == 5 and int(d[4]["label"]) == 1
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(tmp_path / "cats", image_size=8)


SHAPES = ("circle", "square", "triangle", "cross")


def _shape_images(n: int, split: str = "train") -> list[dict[str, torch.Tensor]]:
    data = SyntheticCaptions(split, n)
    return [
        {"pixel_values": x["pixel_values"], "label": torch.tensor(SHAPES.index(ATTRIBUTES[int(x["label"])][1]))}
        for x in data
    ]


def test_class_prompts_caption_each_image_with_its_class():
    from vltrim.data import ClassPrompts

    tok = tokenizer(16)
    data = ClassPrompts(_shape_images(16), SHAPES, tok)
    assert data.class_texts["input_ids"].shape == (4, 16)
    for i in range(len(data)):
        item = data[i]
        assert torch.equal(item["input_ids"], tok([f"a photo of a {SHAPES[int(item['label'])]}"])["input_ids"][0])
    with pytest.raises(IndexError, match="outside the 2 classes"):
        ClassPrompts(_shape_images(16), SHAPES[:2], tok)[
            next(i for i in range(16) if _shape_images(16)[i]["label"] >= 2)
        ]
    with pytest.raises(ValueError, match="template"):
        ClassPrompts(_shape_images(4), SHAPES, tok, template="no slot")


def test_zero_shot_top1_is_nearest_class_prompt():
    """evaluate_retrieval on ClassPrompts data adds zero-shot top-1: each image's nearest class prompt, by hand."""
    from vltrim.data import ClassPrompts
    from vltrim.tasks.retrieval import image_embeds, text_embeds

    model = tiny_model("VisionTextDualEncoderModel")
    data = ClassPrompts(_shape_images(64, "test"), SHAPES, tokenizer(16))
    with torch.no_grad():
        img = image_embeds(model, {"pixel_values": torch.stack([x["pixel_values"] for x in data])})
        pred = (img @ text_embeds(model, data.class_texts).t()).argmax(1)
    expected = (pred == torch.stack([x["label"] for x in data])).float().mean().item()
    assert evaluate_retrieval(model, data)["zero_shot_top1"] == pytest.approx(expected)
    assert zero_shot_accuracy(model, data, data.class_texts) == pytest.approx(expected)
    assert "zero_shot_top1" not in evaluate_retrieval(model, SyntheticCaptions("test", 16))


def test_class_prompt_captions_are_embedded_once_with_the_same_metrics():
    """ClassPrompts embeds each class prompt once for evaluation; the metrics equal embedding every caption."""
    from vltrim.data import ClassPrompts

    model = tiny_model("VisionTextDualEncoderModel")
    data = ClassPrompts(_shape_images(64, "test"), SHAPES, tokenizer(16))
    fast = evaluate_retrieval(model, data)
    data.captions_by_label = False
    slow = evaluate_retrieval(model, data)
    assert fast.keys() == slow.keys() and all(fast[k] == pytest.approx(slow[k]) for k in fast)
