"""BLIP's three tasks on tiny random models: itm-retrieval (ITC + ITM, re-ranking), vqa (answer decoder, exact match)
and captioning (caption decoder, BLEU-4 / CIDEr); their registration and their refusal of a model that does not fit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import Dataset, default_collate

import vltrim.tasks
import vltrim.train
from vltrim.data.inputs import Sample
from vltrim.data.scenes import SceneCaptions, SceneQA
from vltrim.data.tokenizer import WordTokenizer
from vltrim.tasks import TASKS, default_task, get_task
from vltrim.tasks import itm as itm_mod
from vltrim.tasks.captioning import caption_loss, evaluate_captioning, references, token_kl
from vltrim.tasks.itm import evaluate_itm, hard_negatives, itm_kd, itm_loss
from vltrim.tasks.text_metrics import caption_scores
from vltrim.tasks.vqa import evaluate_vqa, vqa_loss
from vltrim.zoo import tiny_model

COLORS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "star", "heart"]
WORDS = [*COLORS, *SHAPES, "a", "what", "color", "is", "the", "shape"]
BLIP_CLASSES = ("BlipForImageTextRetrieval", "BlipForQuestionAnswering", "BlipForConditionalGeneration")


def image(label: int) -> torch.Tensor:
    """A 32 px image that depends on its label only (one bright channel band per label), plus a little noise."""
    g = torch.Generator().manual_seed(label)
    x = torch.randn(3, 32, 32, generator=g) * 0.1
    x[label % 3, 8 * (label // 3) : 8 * (label // 3) + 8] += 2.0
    return x


def caption(label: int) -> str:
    return f"a {COLORS[label % 4]} {SHAPES[label // 4 % 4]}"


class TinyCaptions(Dataset):
    """Items of ``labels``: image, tokenized caption, scene label; references are all captions of the same label."""

    def __init__(self, labels: list[int], with_references: bool = True):
        self.tokenizer = WordTokenizer(WORDS, max_length=8)
        self.labels, self.captions = labels, [caption(y) for y in labels]
        enc = self.tokenizer(self.captions)
        self.items = [
            {"pixel_values": image(y), "input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]}
            | {"label": torch.tensor(y)}
            for i, y in enumerate(labels)
        ]
        if with_references:
            self.references = lambda i: [c for c, y in zip(self.captions, labels) if y == labels[i]]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


class TinyQA(Dataset):
    """Questions about a label's color; ``answers``: the answer strings the items' ``answer`` index."""

    def __init__(self, labels: list[int]):
        self.tokenizer = WordTokenizer(WORDS, max_length=8)
        self.answers = list(COLORS)
        q = self.tokenizer(["what color is the shape"] * len(labels))
        a = self.tokenizer([COLORS[y % 4] for y in labels], max_length=4)
        self.items = []
        for i, y in enumerate(labels):
            ids, mask = a["input_ids"][i], a["attention_mask"][i]
            self.items.append(
                {"pixel_values": image(y), "input_ids": q["input_ids"][i], "attention_mask": q["attention_mask"][i]}
                | {"decoder_input_ids": ids, "decoder_attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
                | {"answer": torch.tensor(y % 4)}
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def blip(name: str) -> torch.nn.Module:
    """A tiny BLIP from the zoo (its vision tower is initialised so the output depends on the image)."""
    return tiny_model(name)


def batch_of(data: Dataset) -> dict[str, torch.Tensor]:
    return default_collate([data[i] for i in range(len(data))])


CASES = {
    "itm-retrieval": ("BlipForImageTextRetrieval", lambda: TinyCaptions([0, 1, 2, 3, 0, 1, 2, 3])),
    "vqa": ("BlipForQuestionAnswering", lambda: TinyQA([0, 1, 2, 3, 0, 1])),
    "captioning": ("BlipForConditionalGeneration", lambda: TinyCaptions([0, 1, 2, 3, 0, 1])),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    name, make = CASES[request.param]
    torch.manual_seed(0)
    return get_task(request.param), blip(name), make()


# ---- all three tasks ----------------------------------------------------------------------------------------------
def test_loss_is_finite_and_reaches_every_part(case):
    task, model, data = case
    model.train()
    loss = task.loss(model, batch_of(data))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_kd_is_zero_for_a_copy_and_positive_after_a_change(case):
    task, model, data = case
    batch, student = batch_of(data), copy.deepcopy(model)
    torch.manual_seed(1)
    assert task.kd(student, model, batch).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    kd = task.kd(student, model, batch)
    kd.backward()
    assert kd.item() > 1e-4 and student.vision_model.embeddings.patch_embedding.weight.grad is not None


def test_evaluate_returns_the_metrics_in_range_and_keeps_the_mode(case):
    task, model, data = case
    model.train()
    out = task.evaluate(model, data)
    assert model.training and all(m.training for m in model.modules())
    assert task.metric in out
    for key, value in out.items():
        assert value >= 0 and (key in ("CIDEr", "loss") or value <= 1), (key, value)


def test_a_few_steps_lower_the_loss(case):
    task, model, data = case
    batch = batch_of(data)
    with torch.no_grad():
        torch.manual_seed(0)
        before = task.loss(model, batch).item()
    vltrim.train.train(model, data, task.loss, steps=30, lr=2e-3, batch_size=len(data), warmup=0, progress=False)
    with torch.no_grad():
        torch.manual_seed(0)
        after = task.loss(model, batch).item()
    assert after < 0.7 * before


def test_try_data_evaluates_through_the_items_tried(case):
    """Task.try_data evaluates a Sample of the data: the tokenizer, answers and references come from the dataset."""
    task, model, data = case
    task.try_data(model, data, "eval_data", evaluate=True)
    task.try_data(model, data, "train_data")


def test_wrapped_model_runs_inside_the_wrapper_forward(case):
    """A DDP-like wrapper sees one forward per loss (its gradient sync hooks there); the loss is the unwrapped one."""

    class Wrapper(torch.nn.Module):
        def __init__(self, module: torch.nn.Module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.module(*args, **kwargs)

    task, model, data = case
    batch, wrapped = batch_of(data), Wrapper(model)
    torch.manual_seed(0)
    plain = task.loss(model, batch)
    torch.manual_seed(0)
    assert task.loss(wrapped, batch).item() == pytest.approx(plain.item(), rel=1e-6)
    assert wrapped.calls == 1 and "forward" not in model.__dict__


@pytest.mark.parametrize(
    "task,name,make",
    [
        ("itm-retrieval", "BlipForImageTextRetrieval", lambda: SceneCaptions("val", 8)),
        ("captioning", "BlipForConditionalGeneration", lambda: SceneCaptions("val", 8)),
        ("vqa", "BlipForQuestionAnswering", lambda: SceneQA("val", 8)),
    ],
)
def test_tasks_run_on_the_builtin_scenes(task, name, make):
    task, model, data = get_task(task), blip(name), make()
    task.check(model)
    task.try_data(model, data, "train_data")
    task.try_data(model, data, "eval_data", evaluate=True)
    assert torch.isfinite(task.loss(model, batch_of(data)))
    assert 0 <= task.evaluate(model, data, batch_size=3)[task.metric]


# ---- registration -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,task",
    [
        ("BlipForImageTextRetrieval", "itm-retrieval"),
        ("BlipForQuestionAnswering", "vqa"),
        ("BlipForConditionalGeneration", "captioning"),
        ("BlipModel", "retrieval"),
    ],
)
def test_default_task_and_the_only_fitting_task(name, task):
    model = tiny_model(name)
    assert default_task(model) == task
    assert [n for n, t in TASKS.items() if t.fits(model)] == [task]


def test_existing_tasks_come_first():
    assert list(TASKS)[:3] == ["retrieval", "classification", "sentence-embedding"]


@pytest.mark.parametrize("task,model,fitting", [("vqa", "BlipForConditionalGeneration", "captioning"),
                                                ("captioning", "BlipForQuestionAnswering", "vqa"),
                                                ("retrieval", "BlipForImageTextRetrieval", "itm-retrieval"),
                                                ("itm-retrieval", "CLIPModel", "retrieval")])  # fmt: skip
def test_check_names_the_task_that_fits(task, model, fitting):
    with pytest.raises(ValueError, match=rf"task '{task}' needs .*task='{fitting}'"):
        get_task(task).check(tiny_model(model))


def test_blip_model_keeps_the_retrieval_task():
    model, data = tiny_model("BlipModel"), TinyCaptions([0, 1, 2, 3])
    batch = batch_of(data)
    assert torch.isfinite(vltrim.tasks.contrastive_loss(model, batch))
    assert vltrim.tasks.similarity_kd_loss(model, copy.deepcopy(model), batch).item() == pytest.approx(0, abs=1e-6)
    assert 0 <= vltrim.tasks.evaluate_retrieval(model, data)["mean_R@1"] <= 1


# ---- itm-retrieval ------------------------------------------------------------------------------------------------
def test_itc_and_itm_scores_are_those_of_the_model_forward():
    model, batch = blip("BlipForImageTextRetrieval"), batch_of(TinyCaptions([0, 1, 2, 3]))
    inputs = {k: batch[k] for k in ("input_ids", "pixel_values", "attention_mask")}
    sim, itm, _ = itm_mod._scores(model, batch)
    itc = model(**inputs, use_itm_head=False).itm_score
    assert torch.allclose(sim, itc / itm_mod.TEMPERATURE, atol=1e-5)
    assert torch.allclose(itm[:4], model(**inputs, use_itm_head=True).itm_score, atol=1e-5)


def test_hard_negatives_have_another_label_and_follow_the_rng():
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    sim = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    img, txt = hard_negatives(sim, labels)
    assert len(img) == len(txt) == 12 and (labels[img] != labels[txt]).all()
    assert (img[:6] == torch.arange(6)).all() and (txt[6:] == torch.arange(6)).all()
    torch.manual_seed(3)
    assert [x.tolist() for x in hard_negatives(sim, labels)] == [img.tolist(), txt.tolist()]
    assert [len(x) for x in hard_negatives(sim, torch.zeros(6, dtype=torch.long))] == [0, 0]  # one label: none


def test_hard_negatives_favour_similar_items():
    labels, sim = torch.arange(3), torch.tensor([[0.0, 40.0, 15.0], [20.0, 0.0, -20.0], [-20.0, 10.0, 0.0]])
    img, txt = hard_negatives(sim, labels)  # i2t by rows, t2i by columns, never the item itself
    assert txt[:3].tolist() == [1, 0, 1] and img[3:].tolist() == [1, 0, 0]


def test_itm_loss_is_itc_plus_itm_cross_entropy():
    model, batch = blip("BlipForImageTextRetrieval"), batch_of(TinyCaptions([0, 1, 2, 3, 0, 1]))
    torch.manual_seed(0)
    sim, itm, _ = itm_mod._scores(model, batch)
    eq = (batch["label"][:, None] == batch["label"][None, :]).float()
    target = eq / eq.sum(1, keepdim=True)
    itc = 0.5 * (torch.nn.functional.cross_entropy(sim, target) + torch.nn.functional.cross_entropy(sim.t(), target))
    itm_target = torch.tensor([1] * 6 + [0] * (len(itm) - 6))
    torch.manual_seed(0)
    expected = itc + torch.nn.functional.cross_entropy(itm, itm_target)
    assert itm_loss(model, batch).item() == pytest.approx(expected.item(), rel=1e-5)


def test_itm_kd_uses_the_teachers_negatives(monkeypatch):
    model, batch = blip("BlipForImageTextRetrieval"), batch_of(TinyCaptions([0, 1, 2, 3]))
    drawn = []
    real = itm_mod.hard_negatives
    monkeypatch.setattr(itm_mod, "hard_negatives", lambda *a: drawn.append(1) or real(*a))
    itm_kd(copy.deepcopy(model), model, batch)
    assert drawn == [1]  # drawn once, from the teacher, and the student scores the same pairs


def _label_oracle(model, data):
    """An ITM scorer that knows the truth: match logit +10 when the image's and the caption's labels agree, else -10
    (the label read from the image's [CLS] state and from the caption's color word)."""
    labels = sorted(set(data.labels))
    with torch.no_grad():
        cls = itm_mod.image_states(model, torch.stack([image(y) for y in labels]))[:, 0]
    color = {data.tokenizer.index[c]: i for i, c in enumerate(COLORS)}

    def scores(net, states, ids, mask):
        img = torch.cdist(states[:, 0], cls).argmin(1)
        txt = torch.tensor([color[int(t)] for t in ids[:, 2]])
        agree = (torch.tensor(labels)[img] % 4 == txt).float() * 20 - 10
        return torch.stack([-agree, agree], 1)

    return scores


def test_itm_reranking_fixes_what_itc_gets_wrong(monkeypatch):
    model, data = blip("BlipForImageTextRetrieval"), TinyCaptions([0, 1, 2, 3, 0, 1, 2, 3])
    with torch.no_grad():  # ITC blind: every caption equally similar to every image
        model.text_proj.weight.zero_()
        model.text_proj.bias.fill_(1.0)
    monkeypatch.setattr(itm_mod, "match_logits", _label_oracle(model, data))
    full = evaluate_itm(model, data, k=8)
    assert full["mean_R@1"] == 1.0 and full["i2t_R@1"] == 1.0 and full["t2i_R@1"] == 1.0
    assert full["itc_mean_R@1"] < 1.0
    none = evaluate_itm(model, data, k=1)  # re-ranking one candidate changes nothing
    assert none["mean_R@1"] == pytest.approx(none["itc_mean_R@1"])


def test_itm_evaluation_caps_k_and_checks_it():
    model, data = blip("BlipForImageTextRetrieval"), TinyCaptions([0, 1, 2])
    assert evaluate_itm(model, data, k=100) == evaluate_itm(model, data, k=3)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        evaluate_itm(model, data, k=0)


def test_itm_needs_captions():
    model = blip("BlipForImageTextRetrieval")
    with pytest.raises(ValueError, match="itm-retrieval needs 'input_ids'"):
        itm_loss(model, {"pixel_values": torch.randn(2, 3, 32, 32)})


# ---- vqa ----------------------------------------------------------------------------------------------------------
def test_vqa_loss_is_the_model_forward_loss():
    model, batch = blip("BlipForQuestionAnswering"), batch_of(TinyQA([0, 1, 2, 3]))
    keys = ("input_ids", "pixel_values", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels")
    assert vqa_loss(model, batch).item() == pytest.approx(model(**{k: batch[k] for k in keys}).loss.item(), rel=1e-5)


def test_vqa_derives_labels_from_the_answer_mask():
    model, batch = blip("BlipForQuestionAnswering"), batch_of(TinyQA([0, 1, 2, 3]))
    without = {k: v for k, v in batch.items() if k != "labels"}
    assert vqa_loss(model, without).item() == pytest.approx(vqa_loss(model, batch).item())
    with pytest.raises(ValueError, match="vqa needs 'decoder_input_ids'"):
        vqa_loss(model, {k: v for k, v in batch.items() if not k.startswith("decoder")})


def test_vqa_exact_match_counts_the_correct_answers(monkeypatch):
    model, data = blip("BlipForQuestionAnswering"), TinyQA([0, 1, 2, 3])
    said = ["red", "GREEN ", "red", "yellow"]  # gold: red green blue yellow
    ids = data.tokenizer(said, max_length=4)["input_ids"]
    monkeypatch.setattr(model, "generate", lambda **kw: ids[: len(kw["input_ids"])])
    assert evaluate_vqa(model, data)["accuracy"] == 0.75


def test_vqa_memorises_four_answers():
    model, data = blip("BlipForQuestionAnswering"), TinyQA([0, 1, 2, 3])
    vltrim.train.train(model, data, vqa_loss, steps=40, lr=3e-3, batch_size=4, warmup=0, progress=False)
    assert evaluate_vqa(model, data)["accuracy"] == 1.0


def test_vqa_needs_gold_answers_and_a_tokenizer():
    model, data = blip("BlipForQuestionAnswering"), TinyQA([0, 1])
    items = [{k: v for k, v in data[i].items() if k != "answer"} for i in range(2)]

    class NoAnswers(TinyQA):
        def __getitem__(self, i):
            return items[i]

    with pytest.raises(ValueError, match="answer_texts"):
        evaluate_vqa(model, NoAnswers([0, 1]))
    with pytest.raises(ValueError, match=r"needs the eval data's \.tokenizer"):
        evaluate_vqa(model, [data[0], data[1]])


def test_token_kl_reads_only_positions_that_predict_a_real_token():
    teacher = torch.randn(2, 5, 7)
    labels = torch.tensor([[2, 9, 3, -100, -100], [2, 3, -100, -100, -100]])
    student = teacher.clone()
    student[0, 3:], student[1, 2:] = 5.0, -5.0  # positions whose next label is padding
    assert token_kl(student, teacher, labels).item() == pytest.approx(0.0, abs=1e-6)
    student[1, 0, 1] += 3.0  # predicts labels[1, 1], a real token
    assert token_kl(student, teacher, labels).item() > 0
    assert token_kl(student, teacher, torch.full_like(labels, -100)).item() == 0.0  # nothing to distil: 0, not NaN


# ---- captioning ---------------------------------------------------------------------------------------------------
def test_caption_loss_is_the_model_forward_loss():
    model, batch = blip("BlipForConditionalGeneration"), batch_of(TinyCaptions([0, 1, 2, 3]))
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(
        pixel_values=batch["pixel_values"],
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=labels,
    )
    assert caption_loss(model, batch).item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_captioning_evaluation_scores_the_decoded_captions():
    model, data = blip("BlipForConditionalGeneration"), TinyCaptions([0, 1, 2, 0, 1, 2])
    vltrim.train.train(model, data, caption_loss, steps=30, lr=3e-3, batch_size=6, warmup=0, progress=False)
    out = evaluate_captioning(model, data, batch_size=4)
    with torch.no_grad():
        ids = model.generate(pixel_values=batch_of(data)["pixel_values"], max_new_tokens=20, do_sample=False)
    hyps = data.tokenizer.batch_decode(ids, skip_special_tokens=True)
    refs = [data.references(i) for i in range(len(data))]
    assert {k: out[k] for k in ("CIDEr", "BLEU-4")} == pytest.approx(caption_scores(hyps, refs))
    assert out["CIDEr"] > 1.0  # the decoder learned the captions
    assert out["loss"] == pytest.approx(caption_loss(model.eval(), batch_of(data)).item(), rel=1e-4)


def test_captioning_falls_back_to_the_items_caption_and_takes_beams():
    model = blip("BlipForConditionalGeneration")
    plain, with_refs = TinyCaptions([0, 0, 1], with_references=False), TinyCaptions([0, 0, 1])
    greedy = evaluate_captioning(model, plain, num_beams=1, max_new_tokens=6)
    assert 0 <= greedy["BLEU-4"] <= 1 and greedy["CIDEr"] >= 0
    assert set(evaluate_captioning(model, with_refs, num_beams=2, max_new_tokens=6)) == {"CIDEr", "BLEU-4", "loss"}
    with pytest.raises(ValueError, match="num_beams must be an integer >= 1"):
        evaluate_captioning(model, plain, num_beams=0)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer in \[1, 23\]"):
        evaluate_captioning(model, plain, max_new_tokens=40)


def test_captioning_reads_references_of_the_items_tried():
    """A Sample (items 0 and 3 of a dataset) is scored against the references of those items."""
    data = TinyCaptions([0, 1, 2, 1])
    assert references(Sample(data, [0, 3]), 1) == [caption(1), caption(1)]
