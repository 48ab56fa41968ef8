"""Image classification (ViT / DeiT classifiers): cross-entropy, logit distillation, top-1 accuracy."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..checks import kept_modes
from ..data.inputs import in_order
from ..train.distill import logits_kl


def class_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(pixel_values=batch["pixel_values"]).logits


def _labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's class labels; classification data without a 'label' field is a clear error."""
    if "label" not in batch:
        raise ValueError(f"classification needs a class 'label' in every item; the items have {sorted(batch)}")
    return batch["label"]


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(class_logits(model, batch), _labels(batch))


def classification_kd(student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        t = class_logits(teacher, batch)
    return logits_kl(class_logits(student, batch), t)


@torch.no_grad()
def evaluate_classification(model: nn.Module, data: Dataset, batch_size: int = 256) -> dict[str, float]:
    """Top-1 accuracy over ``data`` (batched with its own ``collate`` when it has one); the model's mode is restored."""
    dev = next(model.parameters()).device
    correct = total = 0
    with kept_modes(model):
        model.eval()
        for batch in in_order(data, batch_size):
            labels = _labels(batch)
            pred = class_logits(model, {"pixel_values": batch["pixel_values"].to(dev)}).argmax(-1).cpu()
            correct += (pred == labels.cpu()).sum().item()
            total += len(pred)
    return {"top1": correct / total}
