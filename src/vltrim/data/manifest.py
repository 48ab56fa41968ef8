"""Loaders for a user's own data: image-caption manifests (JSONL / CSV) and class-per-folder images."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def load_image(path: str | Path, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """RGB image resized to size x size (bicubic), as a normalised CHW float tensor."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1)
    return (t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def read_manifest(path: str | Path, image_key: str = "image", caption_key: str = "caption") -> list[tuple[Path, str]]:
    """(image path, caption) rows of a .jsonl or .csv manifest; relative image paths are relative to the manifest."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} does not exist")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
    elif path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ValueError(f"manifest must be .jsonl or .csv, got {path.name}")
    out = []
    for n, r in enumerate(rows, 1):
        if image_key not in r or caption_key not in r:
            raise ValueError(f"{path} row {n} lacks '{image_key}' or '{caption_key}' (has {sorted(r)})")
        img = Path(r[image_key])
        out.append((img if img.is_absolute() else path.parent / img, str(r[caption_key])))
    if not out:
        raise ValueError(f"manifest {path} has no rows")
    return out


class ImageCaptionManifest(Dataset):
    """Image-caption pairs from a manifest; ``label`` groups identical captions for retrieval metrics."""

    def __init__(self, path: str | Path, tokenizer: Callable, image_size: int, max_length: int = 77,
                 image_key: str = "image", caption_key: str = "caption", mean=CLIP_MEAN, std=CLIP_STD):
        self.rows = read_manifest(path, image_key, caption_key)
        missing = [str(p) for p, _ in self.rows if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images listed in {path} are missing, e.g. {missing[0]}")
        self.captions = [c for _, c in self.rows]
        ids = {c: i for i, c in enumerate(dict.fromkeys(self.captions))}
        self.labels = torch.tensor([ids[c] for c in self.captions])
        enc = tokenizer(self.captions, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        self.input_ids, self.attention_mask = enc["input_ids"], enc["attention_mask"]
        self.image_size, self.mean, self.std = image_size, mean, std

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": load_image(self.rows[i][0], self.image_size, self.mean, self.std),
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "label": self.labels[i],
        }


class ImageFolder(Dataset):
    """root/<class name>/<image files>: items are pixel_values and the class index; ``classes`` names them."""

    def __init__(self, root: str | Path, image_size: int, mean=CLIP_MEAN, std=CLIP_STD):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.items = [(f, c) for c, name in enumerate(self.classes) for f in sorted((root / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not self.items:
            raise ValueError(f"no images found under {root}/<class>/ (suffixes {sorted(IMAGE_SUFFIXES)})")
        self.image_size, self.mean, self.std = image_size, mean, std

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        f, c = self.items[i]
        return {"pixel_values": load_image(f, self.image_size, self.mean, self.std), "label": torch.tensor(c)}
