"""Visual question answering as BLIP trains and evaluates it (BlipForQuestionAnswering): the answer decoder's
teacher-forced cross-entropy, logit distillation on the gold answer, exact-match accuracy of greedy answers.

The model's forward returns no decoder logits (only a loss), so `answer_logits` runs its parts as that forward does:
vision tower -> question encoder cross-attending to the image -> answer decoder cross-attending to the question."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vltrim.checks import kept_modes
from vltrim.data.inputs import in_order
from vltrim.tasks.captioning import (
    dataset_field,
    decode,
    decoder_kd,
    decoder_loss,
    new_tokens,
    source_item,
    token_labels,
    with_bos,
)
from vltrim.tasks.itm import inside_forward

ANSWER_TOKENS = 10  # longest generated answer (BLIP's VQA max_length)
NEEDED = ("pixel_values", "input_ids", "decoder_input_ids")


def _checked(batch: dict[str, torch.Tensor]) -> None:
    missing = [k for k in NEEDED if k not in batch]
    if missing:
        raise ValueError(
            f"vqa needs {', '.join(map(repr, missing))} in every item (image, tokenized question, tokenized answer "
            f"'[bos] answer [eos]'); the items have {sorted(batch)}"
        )


def _answer_logits(
    net: nn.Module, batch: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Decoder logits of the answer ``ids`` given image and question, exactly as BlipForQuestionAnswering.forward."""
    image = net.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
    image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
    question_mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
    question = net.text_encoder(
        input_ids=batch["input_ids"],
        attention_mask=question_mask,
        encoder_hidden_states=image,
        encoder_attention_mask=image_mask,
    ).last_hidden_state
    return net.text_decoder(
        input_ids=ids, attention_mask=mask, encoder_hidden_states=question, encoder_attention_mask=question_mask
    ).logits


def answer_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced answer-decoder logits [batch, tokens, vocab] and their labels (``labels``, else the answer ids
    with -100 at padding)."""
    _checked(batch)
    ids = with_bos(batch["decoder_input_ids"], model)
    mask = batch.get("decoder_attention_mask", torch.ones_like(ids))
    labels = batch["labels"] if "labels" in batch else token_labels(ids, mask)
    return inside_forward(model, lambda net: _answer_logits(net, batch, ids, mask)), labels


def vqa_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy of the gold answer (the loss BLIP's forward computes with ``labels``)."""
    return decoder_loss(answer_logits, model, batch)


def vqa_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy of the gold answer without label smoothing (the likelihood itself)."""
    return decoder_loss(answer_logits, model, batch, smoothed=False)


def vqa_kd(
    student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0
) -> torch.Tensor:
    """KL of the student's answer-token distributions to the teacher's (both fed the gold answer), at real tokens."""
    return decoder_kd(answer_logits, student, teacher, batch, temperature)


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, no surrounding space: the exact-match form of an answer."""
    return " ".join(text.lower().split())


@torch.no_grad()
def evaluate_vqa(
    model: nn.Module, data: Dataset, batch_size: int = 64, max_new_tokens: int | None = None
) -> dict[str, float]:
    """Exact-match ``accuracy`` of greedily generated answers against the gold ones (item ``answer``: an index into
    ``data.answers``; else ``data.answer_texts[i]``). The model's train/eval mode is restored afterwards."""
    tokens = new_tokens(model, max_new_tokens, ANSWER_TOKENS)
    tokenizer = dataset_field(data, "tokenizer", "vqa", "it decodes the generated answers")
    dev = next(model.parameters()).device
    correct = total = 0
    with kept_modes(model):
        model.eval()
        for batch in in_order(data, batch_size):
            _checked(batch)
            gold = gold_answers(data, batch, total)
            ids = model.generate(
                input_ids=batch["input_ids"].to(dev),
                pixel_values=batch["pixel_values"].to(dev),
                attention_mask=batch.get("attention_mask", torch.ones_like(batch["input_ids"])).to(dev),
                max_new_tokens=tokens,
                do_sample=False,
                num_beams=1,
            )
            answers = decode(tokenizer, ids)
            correct += sum(normalize_answer(a) == normalize_answer(g) for a, g in zip(answers, gold))
            total += len(gold)
    return {"accuracy": correct / max(total, 1)}


def gold_answers(data: Any, batch: dict[str, torch.Tensor], start: int) -> list[str]:
    """The gold answer texts of a batch of items ``start``.. of ``data``."""
    n = len(batch["input_ids"])
    if "answer" in batch:
        answers = dataset_field(data, "answers", "vqa", "the items' 'answer' indexes it")
        index = batch["answer"].reshape(-1).tolist()
        bad = [a for a in index if not 0 <= a < len(answers)]
        if bad:
            raise ValueError(f"vqa 'answer' {bad[0]} is not an index into the data's {len(answers)} answers")
        return [answers[a] for a in index]
    texts = []
    for i in range(start, start + n):
        base, j = source_item(data, i)
        if getattr(base, "answer_texts", None) is None:
            raise ValueError(
                "vqa evaluation needs each item's gold answer: an 'answer' index into data.answers in every item, "
                f"or data.answer_texts; {type(base).__name__} has neither"
            )
        texts.append(base.answer_texts[j])
    return texts
