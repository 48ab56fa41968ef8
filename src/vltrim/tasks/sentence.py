"""Sentence-embedding distillation (BERT / MiniLM): the pruned encoder learns the teacher's embeddings.

Embedding = mean of the last hidden states over the attention mask, L2-normalised (sentence-transformers
style). The teacher's embeddings are computed once into the dataset, so loss and metric need no teacher.
Texts are stored unpadded and padded per batch to its longest text (a 25-token tweet costs 25, not 128)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vltrim.progress import bar

TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def sentence_embedding(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    h = model(**{k: batch[k] for k in TEXT_KEYS if k in batch}).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


def pad_batch(items: Sequence[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack items whose text tensors differ in length: pad them to the longest (input_ids with ``pad_id``,
    masks and token types with 0); every other key is stacked as it is."""
    longest = max(len(it["input_ids"]) for it in items)
    out = {}
    for k in items[0]:
        if k in TEXT_KEYS:
            fill = pad_id if k == "input_ids" else 0
            out[k] = torch.stack([F.pad(it[k], (0, longest - len(it[k])), value=fill) for it in items])
        else:
            out[k] = torch.stack([torch.as_tensor(it[k]) for it in items])
    return out


def _unpadded(item: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One tokenized text cut to its attention mask (tokenizers that always pad, pad on the right)."""
    n = int(item["attention_mask"].sum())
    return {k: v[:n] for k, v in item.items()}


class TokenizedTexts(Dataset):
    """Tokenized texts (unpadded, padded per batch by ``collate``) with, when given, a class ``label`` per text:
    the items of text classification, and the base of `SentenceDistillData`."""

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer: Callable,
        max_length: int = 128,
        labels: Sequence[int] | None = None,
    ):
        if not texts:
            raise ValueError(f"{type(self).__name__} needs at least one text")
        if labels is not None and len(labels) != len(texts):
            raise ValueError(f"{type(self).__name__} got {len(labels)} labels for {len(texts)} texts")
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.pad_id = getattr(tokenizer, "pad_token_id", None) or 0
        self.items = [
            _unpadded({k: torch.as_tensor(enc[k][i]) for k in TEXT_KEYS if k in enc}) for i in range(len(texts))
        ]
        self.labels = None if labels is None else torch.as_tensor(list(labels), dtype=torch.long)

    def collate(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return pad_batch(items, self.pad_id)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.items[i], "label": self.labels[i]} if self.labels is not None else dict(self.items[i])


class SentenceDistillData(TokenizedTexts):
    """Tokenized sentences (unpadded), the teacher's embedding of each (``teacher_embedding``) and, when
    given, a class ``label`` per sentence (then `evaluate_embeddings` also reports a linear probe)."""

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer: Callable,
        teacher: nn.Module,
        max_length: int = 128,
        batch_size: int = 64,
        labels: Sequence[int] | None = None,
        progress: bool = True,
    ):
        super().__init__(texts, tokenizer, max_length, labels)
        teacher.eval()
        dev = next(teacher.parameters()).device
        embs = []
        with torch.no_grad(), bar(progress) as pb:
            job = pb.add_task("teacher embeddings", total=len(texts), info="")
            for i in range(0, len(texts), batch_size):
                batch = {k: v.to(dev) for k, v in self.collate(self.items[i : i + batch_size]).items()}
                embs.append(sentence_embedding(teacher, batch).float().cpu())
                pb.update(job, advance=len(embs[-1]))
        self.teacher_embedding = torch.cat(embs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**super().__getitem__(i), "teacher_embedding": self.teacher_embedding[i]}


def embedding_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """1 - cosine to the teacher's embedding, averaged over the batch."""
    return 1 - (sentence_embedding(model, batch) * batch["teacher_embedding"]).sum(-1).mean()


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    weight_decay: float = 1e-3,
    iters: int = 200,
) -> float:
    """Top-1 on ``test`` of a multinomial logistic regression fitted (L-BFGS, L2) on frozen ``train`` features."""
    x, xt = train_x.double(), test_x.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x, xt = (x - mean) / std, (xt - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, train_y) + weight_decay * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((xt @ w + b).argmax(1) == test_y).double().mean().item()


@torch.no_grad()
def evaluate_embeddings(model: nn.Module, data: Dataset, batch_size: int = 256) -> dict[str, float]:
    """Mean cosine to the teacher's embeddings; with labels, also ``probe_top1``: a linear probe fitted on
    the even-indexed sentences and tested on the odd ones (the same split for every model)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    cos, embs = [], []
    for batch in DataLoader(data, batch_size=batch_size, collate_fn=getattr(data, "collate", None)):
        batch = {k: v.to(dev) for k, v in batch.items()}
        e = sentence_embedding(model, batch).float()
        cos.append((e * batch["teacher_embedding"]).sum(-1).cpu())
        embs.append(e.cpu())
    model.train(was_training)
    out = {"cosine_to_teacher": torch.cat(cos).mean().item()}
    labels = getattr(data, "labels", None)
    if labels is not None and len(labels) >= 4:
        e = torch.cat(embs)
        with torch.enable_grad():
            out["probe_top1"] = linear_probe(e[0::2], labels[0::2], e[1::2], labels[1::2])
    return out
