"""Classification (ViT/DeiT) and sentence-embedding distillation (BERT) through vltrim.compress and UPop."""

from __future__ import annotations

import pytest
import torch

import vltrim
import vltrim.tasks
import vltrim.train
from vltrim.data import SyntheticCaptions
from vltrim.data.synthetic import ATTRIBUTES, SHAPES, tokenizer
from vltrim.tasks import SentenceDistillData, evaluate_classification, evaluate_embeddings
from vltrim.zoo import tiny_model

FAST = dict(batch_size=16, latency_batch=2, progress=False)


def shape_data(split: str, n: int) -> list[dict[str, torch.Tensor]]:
    """Built-in images labelled by their shape (5 labels for the tiny classifiers' 5 outputs; 4 used)."""
    d = SyntheticCaptions(split, n)
    return [
        {"pixel_values": d.pixel_values[i], "label": torch.tensor(SHAPES.index(ATTRIBUTES[int(d.labels[i])][1]))}
        for i in range(n)
    ]


@pytest.mark.parametrize("name", ["ViTForImageClassification", "DeiTForImageClassificationWithTeacher"])
def test_classification_compress_with_upop(name):
    model = tiny_model(name)
    res = vltrim.compress(
        model,
        "upop",
        target=0.3,
        task="classification",
        train_data=shape_data("train", 64),
        eval_data=shape_data("val", 32),
        search_steps=4,
        retrain_steps=2,
        **FAST,
    )
    assert 0 <= res.report["after"]["top1"] <= 1 and res.plan.achieved["params_removed"] >= 0.3


def test_classification_training_learns():
    model = tiny_model("ViTForImageClassification")
    data = shape_data("train", 128)
    before = evaluate_classification(model, data)["top1"]
    vltrim.train.train(model, data, vltrim.tasks.classification_loss, steps=60, lr=2e-3, batch_size=32, progress=False)
    assert evaluate_classification(model, data)["top1"] > before + 0.2


def test_sentence_embedding_distillation():
    teacher = tiny_model("BertModel")
    texts = SyntheticCaptions("train", 64).captions
    data = SentenceDistillData(texts, tokenizer(16), teacher, max_length=16)
    assert evaluate_embeddings(teacher, data)["cosine_to_teacher"] == pytest.approx(1.0, abs=1e-5)
    res = vltrim.compress(
        teacher,
        "upop",
        target=0.4,
        task="sentence-embedding",
        train_data=data,
        eval_data=data,
        search_steps=6,
        retrain_steps=10,
        lr=1e-3,
        **FAST,
    )
    assert {"before", "after_search", "after"} <= set(res.report) and res.plan.achieved["params_removed"] >= 0.4


def test_embedding_loss_pulls_a_student_to_the_teacher():
    teacher, student = tiny_model("BertModel", seed=0), tiny_model("BertModel", seed=1)
    with torch.no_grad():  # a student that starts far away: scramble its word embeddings
        student.embeddings.word_embeddings.weight.normal_(0, 1)
    data = SentenceDistillData(SyntheticCaptions("train", 64).captions, tokenizer(16), teacher, max_length=16)
    before = evaluate_embeddings(student, data)["cosine_to_teacher"]
    vltrim.train.train(student, data, vltrim.tasks.embedding_loss, steps=40, lr=2e-3, batch_size=16, progress=False)
    after = evaluate_embeddings(student, data)["cosine_to_teacher"]
    assert after > 0.8 and after > before + 0.3, (before, after)
