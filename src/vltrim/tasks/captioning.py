"""Image captioning as BLIP trains and evaluates it (BlipForConditionalGeneration): the caption decoder's
teacher-forced cross-entropy, logit distillation at real tokens, and BLEU-4 / CIDEr of generated captions.

Also the decoder helpers VQA shares: the shifted language-model loss, token-level KL, and reading texts and
references back from a dataset (through vltrim's views of it, e.g. the items tried before a run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vltrim.checks import integer, kept_modes
from vltrim.data.inputs import Sample, in_order
from vltrim.tasks.text_metrics import caption_scores
from vltrim.train.distill import logits_kl

IGNORE = -100  # label of a position the loss skips (padding), as HF's losses
CAPTION_TOKENS = 20  # longest generated caption (BLIP's captioning max_length)


# ---- decoder helpers (shared with VQA) ----------------------------------------------------------------------------
def with_bos(ids: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``ids`` with the decoder's start token first, as BLIP sets it before its decoder (and as generation starts)."""
    out = ids.clone()
    out[:, 0] = _text_config(model).bos_token_id
    return out


def _text_config(model: nn.Module) -> Any:
    return getattr(model, "module", model).config.text_config


def token_labels(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Targets of a teacher-forced decoder: the ids, `IGNORE` at padding."""
    return ids.masked_fill(mask == 0, IGNORE)


def shifted_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy (position t predicts label t+1) over the labelled tokens, as BLIP's decoder loss."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE, label_smoothing=smoothing
    )


def token_kl(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) of next-token distributions, averaged over the positions that predict a real token."""
    real = labels[:, 1:] != IGNORE
    if not real.any():  # nothing to distil (every answer empty): 0, kept on the graph
        return student.sum() * 0.0
    return logits_kl(student[:, :-1][real], teacher[:, :-1][real], temperature)


def source_item(data: Any, i: int) -> tuple[Any, int]:
    """The dataset that holds item ``i`` of ``data`` and its index there (through `Sample`, the items of a dataset
    tried before a run), so per-dataset fields (tokenizer, references, answers) are read from the user's dataset."""
    while isinstance(data, Sample):
        data, i = data.data, data.indices[i]
    return data, i


def dataset_field(data: Any, name: str, task: str, why: str) -> Any:
    """``data``'s attribute ``name`` (read through vltrim's views); a clear error naming it and ``why`` when missing."""
    base, _ = source_item(data, 0)
    value = getattr(base, name, None)
    if value is None:
        raise ValueError(f"{task} evaluation needs the eval data's .{name} ({why}); {type(base).__name__} has none")
    return value


def decode(tokenizer: Any, ids: torch.Tensor) -> list[str]:
    """Generated ids as stripped texts, special tokens dropped (the tokenizer's ``batch_decode``)."""
    if not callable(getattr(tokenizer, "batch_decode", None)):
        raise ValueError(
            f"the eval data's tokenizer ({type(tokenizer).__name__}) has no batch_decode: generated text cannot be read"
        )
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def new_tokens(model: nn.Module, want: int | None, default: int, prompt: int = 1) -> int:
    """Tokens to generate: ``want`` (default ``default``), at most what the decoder's positions leave after ``prompt``."""
    room = _text_config(model).max_position_embeddings - prompt
    if want is None:
        return max(1, min(default, room))
    return integer("max_new_tokens", want, minimum=1, maximum=room)


# ---- captioning ---------------------------------------------------------------------------------------------------
def _caption(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced decoder logits [batch, tokens, vocab] and their labels."""
    for key in ("pixel_values", "input_ids"):
        if key not in batch:
            raise ValueError(
                f"captioning needs {key!r} in every item (image, tokenized caption); the items have {sorted(batch)}"
            )
    ids = batch["input_ids"]
    mask = batch.get("attention_mask", torch.ones_like(ids))
    labels = batch["labels"] if "labels" in batch else token_labels(ids, mask)
    out = model(pixel_values=batch["pixel_values"], input_ids=with_bos(ids, model), attention_mask=mask)
    return out.logits, labels


Logits = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def decoder_loss(
    logits_of: Logits, model: nn.Module, batch: dict[str, torch.Tensor], smoothed: bool = True
) -> torch.Tensor:
    """Next-token cross-entropy of the teacher-forced decoder ``logits_of`` gives (logits, labels), with the model's
    label smoothing when ``smoothed`` (the loss BLIP trains with), without (the likelihood itself)."""
    logits, labels = logits_of(model, batch)
    return shifted_loss(logits, labels, _text_config(model).label_smoothing if smoothed else 0.0)


def decoder_kd(
    logits_of: Logits, student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor], temperature: float
) -> torch.Tensor:
    """KL of the student's next-token distributions to the teacher's (both teacher-forced), at real tokens."""
    with torch.no_grad():
        t, _ = logits_of(teacher, batch)
    s, labels = logits_of(student, batch)
    return token_kl(s, t, labels, temperature)


def caption_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Teacher-forced next-token cross-entropy of the caption ([bos] caption [eos]; padding not scored)."""
    return decoder_loss(_caption, model, batch)


def caption_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Teacher-forced next-token cross-entropy of the caption without label smoothing (the likelihood itself)."""
    return decoder_loss(_caption, model, batch, smoothed=False)


def caption_kd(
    student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0
) -> torch.Tensor:
    """KL of the student's next-token distributions to the teacher's, at the caption's real tokens."""
    return decoder_kd(_caption, student, teacher, batch, temperature)


@torch.no_grad()
def evaluate_captioning(
    model: nn.Module, data: Dataset, batch_size: int = 64, num_beams: int = 1, max_new_tokens: int | None = None
) -> dict[str, float]:
    """CIDEr and BLEU-4 of generated captions (greedy; beam search with ``num_beams`` > 1) against each image's
    references (``data.references(i)``, else its own caption ``data.captions[i]``), and the mean teacher-forced
    ``loss``. The model's train/eval mode is restored afterwards."""
    num_beams = integer("num_beams", num_beams, minimum=1)
    tokens = new_tokens(model, max_new_tokens, CAPTION_TOKENS)
    tokenizer = dataset_field(data, "tokenizer", "captioning", "it decodes the generated captions")
    references(data, 0)  # no reference captions: fail before generating
    with kept_modes(model):
        model.eval()
        hyps, losses = [], []
        for batch in in_order(data, batch_size):
            texts, loss = _caption_batch(model, batch, tokens, num_beams, tokenizer)
            hyps, losses = hyps + texts, losses + [loss]
    scores = caption_scores(hyps, [references(data, i) for i in range(len(hyps))])
    loss = sum(x for x, _ in losses) / max(1, sum(n for _, n in losses))
    return {"CIDEr": scores["CIDEr"], "BLEU-4": scores["BLEU-4"], "loss": loss}


def _caption_batch(
    model: nn.Module, batch: dict[str, torch.Tensor], tokens: int, num_beams: int, tokenizer: Any
) -> tuple[list[str], tuple[float, int]]:
    """Generated captions of a batch, and its summed teacher-forced loss with the number of tokens it scores."""
    batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    ids = model.generate(
        pixel_values=batch["pixel_values"], max_new_tokens=tokens, num_beams=num_beams, do_sample=False
    )
    logits, labels = _caption(model, batch)
    n = int((labels[:, 1:] != IGNORE).sum())
    return decode(tokenizer, ids), (shifted_loss(logits, labels, _text_config(model).label_smoothing).item() * n, n)


def references(data: Any, i: int) -> list[str]:
    """Reference captions of item ``i``: ``data.references(i)`` (all captions of its scene), else ``[data.captions[i]]``."""
    base, j = source_item(data, i)
    if callable(getattr(base, "references", None)):
        return list(base.references(j))
    captions = getattr(base, "captions", None)
    if captions is None:
        raise ValueError(
            f"captioning evaluation needs reference captions: the eval data ({type(base).__name__}) has neither a "
            "references(i) method nor a captions list"
        )
    return [captions[j]]
