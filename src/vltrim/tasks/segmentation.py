"""Semantic segmentation (DPTForSemanticSegmentation and other ``*ForSemanticSegmentation`` models): per-pixel
cross-entropy, per-pixel logit distillation, mean IoU.

Items are {'pixel_values': [3, H, W], 'labels': [H, W] class indices}; label 255 marks pixels that count for nothing
(unlabelled, object borders), as in ADE20K and transformers' ``semantic_loss_ignore_index``. A model's logits come at
its own resolution (DPT: twice the input side): the loss and the metric upsample them (bilinear, as transformers'
segmenters do) to the label size; distillation compares student and teacher at the logits' own resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vltrim.arch.inputs import PRIMARY_INPUTS
from vltrim.checks import kept_modes
from vltrim.data.inputs import in_order
from vltrim.train.distill import logits_kl

IGNORE_INDEX = 255  # pixels no loss or metric counts


def pixel_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, classes, h, w] logits of the batch's images (labels left out: the model would compute its own loss)."""
    return model(**{k: v for k, v in batch.items() if k in PRIMARY_INPUTS}).logits


def pixel_labels(batch: dict[str, torch.Tensor], classes: int) -> torch.Tensor:
    """The batch's [B, H, W] label maps, checked: integers, each a class index in [0, classes) or 255 (ignored)."""
    if "labels" not in batch:
        raise ValueError(
            f"segmentation needs a 'labels' map in every item ([H, W] class indices, 255 ignored); the items have "
            f"{sorted(batch)}"
        )
    y = batch["labels"]
    if y.dim() != 3 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(
            f"segmentation 'labels' must be one [H, W] map of integer class indices per item, got "
            f"{str(y.dtype).replace('torch.', '')} labels of shape {tuple(y.shape[1:])} per item"
        )
    bad = y[((y < 0) | (y >= classes)) & (y != IGNORE_INDEX)]
    if len(bad):
        raise ValueError(
            f"segmentation label {int(bad[0])} is outside the model's {classes} classes (0..{classes - 1}, and "
            f"{IGNORE_INDEX} for ignored pixels); the model's num_labels must cover every class of the data"
        )
    return y.long()


def upsampled(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Logits resized (bilinear) to the label size ``size`` (as they are when they already have it)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def segmentation_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels (logits upsampled to the label size; label 255 ignored); 0, with
    a gradient, for a batch without a labelled pixel."""
    logits = pixel_logits(model, batch)
    y = pixel_labels(batch, logits.shape[1]).to(logits.device)
    logits = upsampled(logits, y.shape[-2:])
    if not (y != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX)


def segmentation_kd(
    student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) of every pixel's class distribution, averaged over pixels (temperature as
    classification's logit distillation)."""
    with torch.no_grad():
        t = pixel_logits(teacher, batch)
    s = pixel_logits(student, batch)
    if s.shape != t.shape:
        t = upsampled(t, s.shape[-2:])

    def per_pixel(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])

    return logits_kl(per_pixel(s), per_pixel(t), temperature)


def confusion(pred: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """[classes, classes] counts of (label, prediction) over the labelled pixels (label 255 left out)."""
    keep = labels != IGNORE_INDEX
    idx = labels[keep].long() * classes + pred[keep].long()
    return torch.bincount(idx, minlength=classes * classes).reshape(classes, classes)


def miou(conf: torch.Tensor) -> dict[str, float]:
    """mIoU (the mean IoU of the classes present in the labels or the predictions) and pixel accuracy of a
    confusion matrix (rows labels, columns predictions)."""
    conf = conf.double()
    inter, labelled, predicted = conf.diag(), conf.sum(1), conf.sum(0)
    union = labelled + predicted - inter
    present = union > 0
    total = conf.sum()
    return {
        "mIoU": (inter[present] / union[present]).mean().item() if present.any() else 0.0,
        "pixel_acc": (inter.sum() / total).item() if total > 0 else 0.0,
    }


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, data: Dataset, batch_size: int = 64) -> dict[str, float]:
    """mIoU and pixel accuracy over every labelled pixel of ``data`` (one confusion matrix over the whole set; the
    logits upsampled to the label size); the model's mode is restored."""
    dev = next(model.parameters()).device
    conf = None
    with kept_modes(model):
        model.eval()
        for batch in in_order(data, batch_size):
            logits = pixel_logits(model, {k: v.to(dev) for k, v in batch.items() if k in PRIMARY_INPUTS})
            classes = logits.shape[1]
            y = pixel_labels(batch, classes)
            pred = upsampled(logits.float(), y.shape[-2:]).argmax(1).cpu()
            c = confusion(pred, y, classes)
            conf = c if conf is None else conf + c
    if conf is None:
        raise ValueError("segmentation evaluation data is empty")
    return miou(conf)
