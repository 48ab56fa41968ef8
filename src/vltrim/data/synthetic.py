"""Built-in image-caption data: one object per image (colour, shape, size, position), templated captions.

Deterministic by (seed, split, index), generated in memory in seconds, no download. Each item carries a
``label``: the index of its attribute tuple, so retrieval counts any caption that describes the same
scene as a hit (several images share a description)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from vltrim.data.tokenizer import WordTokenizer

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
TEMPLATES = (
    "a {size} {color} {shape} in the {position}",
    "a photo of a {color} {shape} , {size} , {position}",
    "{position} : a {size} {color} {shape}",
)
ATTRIBUTES = list(itertools.product(COLORS, SHAPES, SIZES, POSITIONS))  # label -> (color, shape, size, position)
SPLITS = {"train": 0, "val": 1, "test": 2}
MEAN, STD = 0.5, 0.25


def vocabulary() -> list[str]:
    words = set()
    for t in TEMPLATES:
        words.update(w for w in t.split() if not w.startswith("{"))
    for group in (COLORS, SHAPES, SIZES, POSITIONS):
        for phrase in group:
            words.update(phrase.split())
    return sorted(words) + ["photo", "of"]


def tokenizer(max_length: int = 16) -> WordTokenizer:
    """The word-level tokenizer that covers every caption of this dataset."""
    return WordTokenizer(vocabulary(), max_length=max_length)


def caption(label: int, template: int = 0) -> str:
    color, shape, size, position = ATTRIBUTES[label]
    return TEMPLATES[template].format(color=color, shape=shape, size=size, position=position)


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    return ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r))


def render(label: int, rng: np.random.Generator, image_size: int = 32) -> np.ndarray:
    """HxWx3 float image in [0, 1] of the scene ``label`` with random jitter, background and noise."""
    color, shape, size, position = ATTRIBUTES[label]
    s = image_size
    centers = {
        "top left": (0.28, 0.28),
        "top right": (0.72, 0.28),
        "bottom left": (0.28, 0.72),
        "bottom right": (0.72, 0.72),
        "center": (0.5, 0.5),
    }
    cx, cy = (np.array(centers[position]) + rng.uniform(-0.06, 0.06, 2)) * s
    r = (0.11 if size == "small" else 0.2) * s * rng.uniform(0.9, 1.1)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    img = np.empty((s, s, 3), np.float32)
    img[:] = rng.uniform(0.05, 0.35, 3)  # dim background of random tint
    img[_shape_mask(shape, xx, yy, cx, cy, r)] = np.array(COLORS[color], np.float32) / 255 * rng.uniform(0.85, 1.0)
    img += rng.normal(0, 0.04, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


@dataclass
class Example:
    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    label: int


class SyntheticCaptions(Dataset):
    """``n`` image-caption pairs of one split; items are dicts ready for a CLIP-style model."""

    def __init__(self, split: str = "train", n: int = 2000, seed: int = 0, image_size: int = 32, max_length: int = 16):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        self.tokenizer = tokenizer(max_length)
        rng = np.random.default_rng([seed, SPLITS[split]])
        self.labels = torch.as_tensor(rng.integers(0, len(ATTRIBUTES), n))
        templates = rng.integers(0, len(TEMPLATES), n)
        self.captions = [caption(int(lab), int(t)) for lab, t in zip(self.labels, templates)]
        images = np.stack([render(int(lab), rng, image_size) for lab in self.labels])
        self.pixel_values = (torch.from_numpy(images).permute(0, 3, 1, 2) - MEAN) / STD
        enc = self.tokenizer(self.captions)
        self.input_ids, self.attention_mask = enc["input_ids"], enc["attention_mask"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": self.pixel_values[i],
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "label": self.labels[i],
        }
