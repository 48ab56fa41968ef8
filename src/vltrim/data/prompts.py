"""Labelled images as image-caption pairs, one prompt per class, for CLIP-style training and zero-shot."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

PROMPT_KEYS = ("input_ids", "attention_mask")


class ClassPrompts(Dataset):
    """Wraps a dataset of ``{"pixel_values", "label"}`` items: each image's caption is its class prompt.

    ``class_texts`` holds every class's tokenized prompt; `evaluate_retrieval` reports zero-shot top-1
    with it, and the same-label positives of the contrastive loss make every image of a class match."""

    captions_by_label = True  # every item's caption is class_texts[label]: evaluation embeds each prompt once

    def __init__(
        self,
        images: Dataset,
        classes: Sequence[str],
        tokenizer: Callable,
        template: str = "a photo of a {}",
        max_length: int = 16,
    ):
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' for the class name, got {template!r}")
        if not classes:
            raise ValueError("classes is empty")
        self.images, self.classes, self.template = images, list(classes), template
        enc = tokenizer(
            [template.format(c) for c in self.classes],
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        self.class_texts = {k: torch.as_tensor(enc[k]) for k in PROMPT_KEYS if k in enc}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.images[i]
        c = int(item["label"])
        if not 0 <= c < len(self.classes):
            raise IndexError(f"item {i} has label {c}, outside the {len(self.classes)} classes")
        return {**item, **{k: v[c] for k, v in self.class_texts.items()}}
