"""Image classification (ViT / DeiT classifiers): cross-entropy, logit distillation, top-1 accuracy."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..train.distill import logits_kl


def class_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(pixel_values=batch["pixel_values"]).logits


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(class_logits(model, batch), batch["label"])


def classification_kd(student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        t = class_logits(teacher, batch)
    return logits_kl(class_logits(student, batch), t)


@torch.no_grad()
def evaluate_classification(model: nn.Module, data: Dataset, batch_size: int = 256) -> dict[str, float]:
    model.eval()
    dev = next(model.parameters()).device
    correct = total = 0
    for batch in DataLoader(data, batch_size=batch_size):
        pred = class_logits(model, {"pixel_values": batch["pixel_values"].to(dev)}).argmax(-1).cpu()
        correct += (pred == batch["label"]).sum().item()
        total += len(pred)
    return {"top1": correct / total}
