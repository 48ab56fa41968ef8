"""Sentence-embedding distillation (BERT / MiniLM): the pruned encoder learns the teacher's embeddings.

Embedding = mean of the last hidden states over the attention mask, L2-normalised (sentence-transformers
style). The teacher's embeddings are computed once into the dataset, so loss and metric need no teacher."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def sentence_embedding(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    h = model(**{k: batch[k] for k in TEXT_KEYS if k in batch}).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


class SentenceDistillData(Dataset):
    """Tokenized sentences plus the teacher's embedding of each (``teacher_embedding``)."""

    def __init__(self, texts: Sequence[str], tokenizer: Callable, teacher: nn.Module, max_length: int = 128, batch_size: int = 64):
        if not texts:
            raise ValueError("SentenceDistillData needs at least one sentence")
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        self.enc = {k: enc[k] for k in TEXT_KEYS if k in enc}
        teacher.eval()
        dev = next(teacher.parameters()).device
        with torch.no_grad():
            embs = [sentence_embedding(teacher, {k: v[i : i + batch_size].to(dev) for k, v in self.enc.items()}).float().cpu()
                    for i in range(0, len(texts), batch_size)]
        self.teacher_embedding = torch.cat(embs)

    def __len__(self) -> int:
        return len(self.teacher_embedding)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**{k: v[i] for k, v in self.enc.items()}, "teacher_embedding": self.teacher_embedding[i]}


def embedding_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """1 - cosine to the teacher's embedding, averaged over the batch."""
    return 1 - (sentence_embedding(model, batch) * batch["teacher_embedding"]).sum(-1).mean()


@torch.no_grad()
def evaluate_embeddings(model: nn.Module, data: Dataset, batch_size: int = 256) -> dict[str, float]:
    model.eval()
    dev = next(model.parameters()).device
    cos = []
    for batch in DataLoader(data, batch_size=batch_size):
        batch = {k: v.to(dev) for k, v in batch.items()}
        cos.append((sentence_embedding(model, batch) * batch["teacher_embedding"]).sum(-1).float().cpu())
    return {"cosine_to_teacher": torch.cat(cos).mean().item()}
