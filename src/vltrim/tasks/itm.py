"""Image-text retrieval as BLIP trains and evaluates it (BlipForImageTextRetrieval).

Training: ITC, a contrastive loss over the batch's unimodal [CLS] features (cosine / `TEMPERATURE`), plus ITM, the
2-way matching head on every positive pair and on one hard negative per image and per text, drawn with probability
softmax(ITC similarity) among the items of other labels (BLIP's blip_retrieval.py). Evaluation: ITC ranks all pairs,
then the ITM head re-ranks each query's top k by ITM match logit + ITC similarity (BLIP's evaluation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vltrim.checks import integer, kept_modes
from vltrim.data.inputs import in_order
from vltrim.tasks.retrieval import recall_at_k
from vltrim.train.distill import logits_kl, similarity_kl

TEMPERATURE = 0.07  # BLIP's ITC temperature (learned from 0.07 there; HF's class keeps none: cosines only)
TOP_K = 16  # ITC candidates the ITM head re-ranks per query (BLIP: 256 on COCO's 5k images)
MATCH = 1  # the ITM head's "image and text match" logit
T = TypeVar("T")


def inside_forward(model: nn.Module, fn: Callable[[nn.Module], T]) -> T:
    """``fn(net)`` for the network ``model`` wraps (DistributedDataParallel, as accelerate wraps it), run inside the
    wrapper's forward: DDP synchronises gradients only of work done in its forward. An unwrapped model runs
    ``fn(model)`` as it is. (Not for DataParallel: its replicas would not run ``fn``.)"""
    net = getattr(model, "module", None)
    if not isinstance(net, nn.Module):
        return fn(model)
    saved = net.__dict__.get("forward")  # accelerate's autocast wrapper, if any
    net.forward = lambda: fn(net)
    try:
        return model()
    finally:
        if saved is None:
            del net.forward
        else:
            net.forward = saved


def _text(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if "input_ids" not in batch:
        raise ValueError(
            f"itm-retrieval needs 'input_ids' (a tokenized caption) in every item; the items have {sorted(batch)}"
        )
    ids = batch["input_ids"]
    return ids, batch.get("attention_mask", torch.ones_like(ids))


def _labels(batch: dict[str, torch.Tensor], n: int, device: torch.device) -> torch.Tensor:
    """Each item's ``label`` (pairs with equal labels match), else its index (image i matches caption i only)."""
    labels = batch.get("label")
    if labels is None:
        return torch.arange(n, device=device)
    if labels.dim() != 1:
        raise ValueError(
            f"itm-retrieval 'label' must be one value per item (pairs with equal labels match), got shape "
            f"{tuple(labels.shape[1:])} per item"
        )
    return labels.to(device)


def image_states(net: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision tower's last hidden states (the ITC feature reads [CLS], the ITM cross-attention all tokens)."""
    return net.vision_model(pixel_values=pixel_values).last_hidden_state


def itc_features(
    net: nn.Module, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image and (unimodal) text features, as the model's ``use_itm_head=False`` forward computes them."""
    text = net.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    return F.normalize(net.vision_proj(image[:, 0]), dim=-1), F.normalize(net.text_proj(text[:, 0]), dim=-1)


def match_logits(net: nn.Module, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ITM head logits [pairs, 2] of image i with text i, as the model's ``use_itm_head=True`` forward computes them."""
    image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
    fused = net.text_encoder(
        input_ids=ids, attention_mask=mask, encoder_hidden_states=image, encoder_attention_mask=image_mask
    ).last_hidden_state
    return net.itm_head(fused[:, 0])


def hard_negatives(sim: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, text) index pairs: for each image a text, then for each text an image, drawn with probability
    softmax(``sim`` row) among items of another label (BLIP's hard negatives; torch's RNG). An item whose batch
    holds no other label gets none."""
    other = labels[:, None] != labels[None, :]
    n = torch.arange(len(labels), device=sim.device)
    i2t, has_i2t = _draw(sim.detach().float(), other)
    t2i, has_t2i = _draw(sim.detach().float().t(), other.t())
    return torch.cat([n[has_i2t], t2i]), torch.cat([i2t, n[has_t2i]])


def _draw(logits: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One column per row with an allowed column, drawn from softmax(logits) over the allowed ones; and which rows."""
    rows = allowed.any(1)
    weights = logits.softmax(1).masked_fill(~allowed, 0.0)[rows]
    if not len(weights):
        return torch.zeros(0, dtype=torch.long, device=logits.device), rows
    return torch.multinomial(weights, 1).squeeze(1), rows


def _scores(
    net: nn.Module, batch: dict[str, torch.Tensor], pairs: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """ITC logits [images, texts] (cosine / temperature), ITM logits of the positive pairs then of ``pairs`` (drawn
    from these ITC logits when None), and the negative pairs used."""
    ids, mask = _text(batch)
    image = image_states(net, batch["pixel_values"])
    img, txt = itc_features(net, image, ids, mask)
    sim = img @ txt.t() / TEMPERATURE
    if pairs is None:
        pairs = hard_negatives(sim, _labels(batch, len(sim), sim.device))
    ni, nt = pairs
    n = torch.arange(len(sim), device=sim.device)
    itm = match_logits(net, image[torch.cat([n, ni])], ids[torch.cat([n, nt])], mask[torch.cat([n, nt])])
    return sim, itm, pairs


def _contrastive(sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; pairs with the same label all count as positives (as `retrieval.contrastive_loss`)."""
    target = (labels[:, None] == labels[None, :]).float()
    target, sim = target / target.sum(1, keepdim=True), sim.float()
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target))


def itm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """BLIP's retrieval loss: ITC + ITM (cross-entropy of the match head: positives 1, hard negatives 0)."""
    sim, itm, _ = inside_forward(model, lambda net: _scores(net, batch))
    labels = _labels(batch, len(sim), sim.device)
    target = torch.zeros(len(itm), dtype=torch.long, device=itm.device)
    target[: len(sim)] = MATCH
    return _contrastive(sim, labels) + F.cross_entropy(itm.float(), target)


def itm_kd(
    student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0
) -> torch.Tensor:
    """KL of the ITC similarity distributions (both directions) + KL of the ITM logits on the same pairs for both
    models (the hard negatives drawn from the teacher's similarities)."""
    with torch.no_grad():
        t_sim, t_itm, pairs = inside_forward(teacher, lambda net: _scores(net, batch))
    s_sim, s_itm, _ = inside_forward(student, lambda net: _scores(net, batch, pairs))
    return similarity_kl(s_sim, t_sim, temperature) + logits_kl(s_itm, t_itm, temperature)


@torch.no_grad()
def evaluate_itm(model: nn.Module, data: Dataset, k: int = TOP_K, batch_size: int = 64) -> dict[str, float]:
    """i2t and t2i R@1/5/10 after ITM re-ranking of each query's ITC top ``k`` (at most the data's size), their
    mean R@1, and ``itc_mean_R@1`` before re-ranking. A hit is any caption or image of the same ``label`` (without
    one, image i's only hit is caption i). The model's train/eval mode is restored afterwards."""
    k = integer("k", k, minimum=1)
    with kept_modes(model):
        model.eval()
        return _evaluate(getattr(model, "module", model), data, k, batch_size)


def _evaluate(net: nn.Module, data: Dataset, k: int, batch_size: int) -> dict[str, float]:
    images, ids, mask, img, txt, labels = _encode(net, data, batch_size)
    sim = img @ txt.t()
    top_i2t, top_t2i = sim.topk(min(k, len(txt)), dim=1).indices, sim.t().topk(min(k, len(img)), dim=1).indices
    itm = _pair_scores(net, images, ids, mask, _candidates(top_i2t, top_t2i), batch_size)
    i2t = recall_at_k(_reranked(sim, itm, top_i2t), labels, labels)
    t2i = recall_at_k(_reranked(sim.t(), itm.t(), top_t2i), labels, labels)
    itc = (recall_at_k(sim, labels, labels)[1] + recall_at_k(sim.t(), labels, labels)[1]) / 2
    out = {f"i2t_R@{r}": v for r, v in i2t.items()} | {f"t2i_R@{r}": v for r, v in t2i.items()}
    return out | {"mean_R@1": (i2t[1] + t2i[1]) / 2, "itc_mean_R@1": itc}


def _encode(net: nn.Module, data: Dataset, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Image states, text ids and masks (padded to one length), ITC features and labels of every item (on the CPU)."""
    dev = next(net.parameters()).device
    states, ids, masks, img, txt, labels = [], [], [], [], [], []
    for batch in in_order(data, batch_size):
        i, m = _text(batch)
        image = image_states(net, batch["pixel_values"].to(dev))
        a, b = itc_features(net, image, i.to(dev), m.to(dev))
        states.append(image.cpu())
        ids.append(i)
        masks.append(m)
        img.append(a.float().cpu())
        txt.append(b.float().cpu())
        done = sum(len(x) for x in labels)
        labels.append(_labels(batch, len(i), torch.device("cpu")) + (0 if "label" in batch else done))
    return torch.cat(states), _padded(ids), _padded(masks), torch.cat(img), torch.cat(txt), torch.cat(labels)


def _padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Batches of token rows padded with 0 to the longest (a collate may pad each batch to its own longest)."""
    n = max(p.shape[1] for p in parts)
    return torch.cat([F.pad(p, (0, n - p.shape[1])) for p in parts])


def _candidates(top_i2t: torch.Tensor, top_t2i: torch.Tensor) -> torch.Tensor:
    """The distinct (image, text) pairs either direction re-ranks, as rows [image, text]."""
    rows = torch.arange(len(top_i2t))[:, None].expand_as(top_i2t)
    cols = torch.arange(len(top_t2i))[:, None].expand_as(top_t2i)
    pairs = torch.cat(
        [torch.stack([rows, top_i2t], -1).reshape(-1, 2), torch.stack([top_t2i, cols], -1).reshape(-1, 2)]
    )
    return torch.unique(pairs, dim=0)


def _pair_scores(
    net: nn.Module, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, pairs: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """ITM match logits of ``pairs`` as an [images, texts] matrix (NaN where not scored)."""
    dev = next(net.parameters()).device
    out = torch.full((len(images), len(ids)), float("nan"))
    for chunk in pairs.split(batch_size):
        i, t = chunk[:, 0], chunk[:, 1]
        logits = match_logits(net, images[i].to(dev), ids[t].to(dev), mask[t].to(dev))
        out[i, t] = logits[:, MATCH].float().cpu()
    return out


def _reranked(sim: torch.Tensor, itm: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Scores ranking each query's (row's) ``top`` columns by ITM logit + ITC similarity, above every other column;
    the others keep their ITC order."""
    rows = torch.arange(len(sim))[:, None]
    best = itm[rows, top] + sim[rows, top]
    score = sim + (best.min() - sim.max() - 1)
    score[rows, top] = best
    return score
