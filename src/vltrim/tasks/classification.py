"""Classification of images (ViT / DeiT / DINOv2 classifiers), of audio clips (HuBERT / wav2vec 2.0 / WavLM
classifiers) and of texts (BERT / RoBERTa / DistilBERT / MPNet / ModernBERT sequence classifiers): cross-entropy,
logit distillation, top-1 accuracy. One set of functions serves all three: the model reads the batch's model inputs
its forward takes (pixel_values; input_values; input_ids with its masks)."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vltrim.arch.inputs import model_inputs
from vltrim.checks import kept_modes
from vltrim.data.inputs import in_order
from vltrim.train.distill import logits_kl


def class_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the batch's model inputs that the model's forward takes (an image classifier given captioned
    scenes reads only their pixels); labels and anything else left out."""
    return model(**_taken(model, model_inputs(batch))).logits


def _taken(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    params = inspect.signature(model.forward).parameters
    return {k: v for k, v in inputs.items() if k in params}


def _labels(batch: dict[str, torch.Tensor], classes: int) -> torch.Tensor:
    """The batch's class labels: one integer in [0, classes) per item; anything else is a clear error (an
    out-of-range label would fail deep in cross_entropy, or silently count as wrong in evaluation)."""
    if "label" not in batch:
        raise ValueError(f"classification needs a class 'label' in every item; the items have {sorted(batch)}")
    y = batch["label"]
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(
            f"classification 'label' must be one integer class index per item, got {str(y.dtype).replace('torch.', '')} "
            f"labels of shape {tuple(y.shape[1:])} per item (not one-hot, not floats)"
        )
    bad = y[(y < 0) | (y >= classes)]
    if len(bad):
        raise ValueError(
            f"classification 'label' {int(bad[0])} is outside the model's {classes} classes (0..{classes - 1}); "
            "the model's num_labels must cover every class of the data"
        )
    return y


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = class_logits(model, batch)
    return F.cross_entropy(logits, _labels(batch, logits.shape[-1]).to(logits.device, torch.long))


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
            logits = class_logits(model, {k: v.to(dev) for k, v in model_inputs(batch).items()})
            labels, pred = _labels(batch, logits.shape[-1]), logits.argmax(-1).cpu()
            correct += (pred == labels.cpu()).sum().item()
            total += len(pred)
    return {"top1": correct / total}
