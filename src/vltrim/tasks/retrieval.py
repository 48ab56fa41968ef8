"""Image-text retrieval for CLIP-style models: contrastive loss, R@1/5/10 both ways, zero-shot accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vltrim.checks import kept_modes
from vltrim.data.inputs import in_order
from vltrim.train.distill import similarity_kl

IMAGE_KEYS = ("pixel_values",)
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _pooled(out: Any) -> torch.Tensor:
    return out if torch.is_tensor(out) else out.pooler_output


def image_embeds(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.normalize(_pooled(model.get_image_features(**{k: batch[k] for k in IMAGE_KEYS if k in batch})), dim=-1)


def text_embeds(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.normalize(_pooled(model.get_text_features(**{k: batch[k] for k in TEXT_KEYS if k in batch})), dim=-1)


def similarity_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scaled image-text similarity from the model's own forward (so DDP and autocast wrappers apply)."""
    out = model(**{k: batch[k] for k in (*IMAGE_KEYS, *TEXT_KEYS) if k in batch})
    return out.logits_per_image


def contrastive_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Symmetric InfoNCE; pairs with the same ``label`` (same scene / same caption) all count as positives."""
    logits = similarity_logits(model, batch)
    labels = batch.get("label")
    if labels is not None and labels.dim() != 1:
        raise ValueError(
            f"retrieval 'label' must be one value per item (pairs with equal labels match), got shape "
            f"{tuple(labels.shape[1:])} per item"
        )
    if labels is None:
        target = torch.eye(len(logits), device=logits.device)
    else:
        target = (labels[:, None] == labels[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _pair_outputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    return model(**{k: batch[k] for k in (*IMAGE_KEYS, *TEXT_KEYS) if k in batch})


def similarity_kd_loss(
    student: nn.Module,
    teacher: nn.Module,
    batch: dict[str, torch.Tensor],
    temperature: float = 1.0,
    embed_weight: float = 0.0,
) -> torch.Tensor:
    """KL between teacher and student image-text similarity distributions (both directions), the cross-modal
    distillation; + ``embed_weight`` x the uni-modal one: squared distance of each tower's final (normalised)
    embedding to the teacher's, averaged over items and the two towers. One forward of each model."""
    with torch.no_grad():
        t = _pair_outputs(teacher, batch)
    s = _pair_outputs(student, batch)
    loss = similarity_kl(s.logits_per_image, t.logits_per_image, temperature)
    if embed_weight:
        loss = loss + embed_weight * 0.5 * sum(
            (a.float() - b.float()).pow(2).sum(-1).mean()
            for a, b in ((s.image_embeds, t.image_embeds), (s.text_embeds, t.text_embeds))
        )
    return loss


def recall_at_k(
    sim: torch.Tensor, q_labels: torch.Tensor, g_labels: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Share of queries (rows) with a same-label item among their top-k gallery items (columns); a k beyond the
    gallery's size counts the whole gallery."""
    top = sim.topk(min(max(ks), sim.shape[1]), dim=1).indices
    hit = g_labels[top] == q_labels[:, None]
    return {k: hit[:, :k].any(1).float().mean().item() for k in ks}


@torch.no_grad()
def embed(model: nn.Module, data: Dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised image and text embeddings and labels of a whole dataset (without a ``label`` field, item i's
    label is i: image i matches caption i only). When every item's caption is its class prompt
    (``data.captions_by_label``, e.g. ClassPrompts), each prompt is embedded once, not per item.
    The model's train/eval mode is restored afterwards."""
    with kept_modes(model):
        model.eval()
        return _embed(model, data, batch_size)


def _embed(model: nn.Module, data: Dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dev = next(model.parameters()).device
    by_label = getattr(data, "captions_by_label", False)
    imgs, txts, labels = [], [], []
    for batch in in_order(data, batch_size):
        batch = {k: v.to(dev) for k, v in batch.items()}
        imgs.append(image_embeds(model, batch).float().cpu())
        if not by_label:
            txts.append(text_embeds(model, batch).float().cpu())
        done = sum(len(x) for x in labels)
        labels.append(batch["label"].cpu() if "label" in batch else torch.arange(done, done + len(imgs[-1])))
    labels_ = torch.cat(labels)
    if by_label:
        classes = text_embeds(model, {k: v.to(dev) for k, v in data.class_texts.items()}).float().cpu()
        return torch.cat(imgs), classes[labels_], labels_
    return torch.cat(imgs), torch.cat(txts), labels_


def evaluate_retrieval(model: nn.Module, data: Dataset, batch_size: int = 256) -> dict[str, float]:
    """i2t and t2i R@1/5/10 and their mean R@1 (a hit is any caption or image of the same label; without a
    ``label`` field, image i's only hit is caption i). The model's train/eval mode is restored afterwards."""
    with kept_modes(model):
        model.eval()
        return _evaluate_retrieval(model, data, batch_size)


def _evaluate_retrieval(model: nn.Module, data: Dataset, batch_size: int) -> dict[str, float]:
    img, txt, labels = embed(model, data, batch_size)
    sim = img @ txt.t()
    i2t, t2i = recall_at_k(sim, labels, labels), recall_at_k(sim.t(), labels, labels)
    out = {f"i2t_R@{k}": v for k, v in i2t.items()} | {f"t2i_R@{k}": v for k, v in t2i.items()}
    out["mean_R@1"] = (i2t[1] + t2i[1]) / 2
    if getattr(data, "class_texts", None) is not None:  # e.g. data.ClassPrompts: also classify by nearest prompt
        out["zero_shot_top1"] = _zero_shot(model, img, labels, data.class_texts)
    return out


@torch.no_grad()
def _zero_shot(
    model: nn.Module, img: torch.Tensor, labels: torch.Tensor, class_texts: dict[str, torch.Tensor]
) -> float:
    dev = next(model.parameters()).device
    classes = text_embeds(model, {k: v.to(dev) for k, v in class_texts.items()}).float().cpu()
    return ((img @ classes.t()).argmax(1) == labels).float().mean().item()


@torch.no_grad()
def zero_shot_accuracy(
    model: nn.Module, data: Dataset, class_texts: dict[str, torch.Tensor], batch_size: int = 256
) -> float:
    """Top-1 accuracy of classifying images by their nearest class prompt (``class_texts``: tokenized prompts, one per class)."""
    dev = next(model.parameters()).device
    img, labels = [], []
    with kept_modes(model):
        model.eval()
        for batch in in_order(data, batch_size):
            if "label" not in batch:
                raise ValueError(
                    f"zero-shot accuracy needs a class 'label' in every item; the items have {sorted(batch)}"
                )
            img.append(image_embeds(model, {"pixel_values": batch["pixel_values"].to(dev)}).float().cpu())
            labels.append(batch["label"])
        return _zero_shot(model, torch.cat(img), torch.cat(labels), class_texts)
