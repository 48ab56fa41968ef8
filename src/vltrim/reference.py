"""The reference teacher: a small CLIPModel trained on the built-in image-caption data.

Its weights ship with the package (assets/reference_clip, written by benchmarks/train_reference.py);
if they are missing it is trained once and cached, so `vltrim demo` always has a real teacher."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from vltrim.data.synthetic import SyntheticCaptions, tokenizer
from vltrim.io import load, save
from vltrim.tasks.retrieval import contrastive_loss, evaluate_retrieval
from vltrim.train import train

ASSET = Path(__file__).parent / "assets" / "reference_clip"
IMAGE_SIZE, MAX_LENGTH = 32, 16
TRAIN_SIZE, VAL_SIZE, TEST_SIZE = 20000, 1000, 1000
TRAIN_STEPS, BATCH, LR = 1500, 128, 1e-3


def reference_config() -> CLIPConfig:
    """4+4 layers, width 128, 4 heads of 32, FFN 512; 32x32 images in 4x4 patches (65 tokens)."""
    tok = tokenizer(MAX_LENGTH)
    tower = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, hidden_act="gelu")
    vision = dict(tower, image_size=IMAGE_SIZE, patch_size=4)
    text = dict(
        tower,
        vocab_size=len(tok),
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=128)


def cache_dir() -> Path:
    return Path(os.environ.get("VLTRIM_CACHE", Path.home() / ".cache" / "vltrim")) / "reference_clip"


def datasets(train_size: int = TRAIN_SIZE) -> dict[str, SyntheticCaptions]:
    """Train / val / test splits of the built-in data at the reference resolution."""
    return {
        "train": SyntheticCaptions("train", train_size, image_size=IMAGE_SIZE, max_length=MAX_LENGTH),
        "val": SyntheticCaptions("val", VAL_SIZE, image_size=IMAGE_SIZE, max_length=MAX_LENGTH),
        "test": SyntheticCaptions("test", TEST_SIZE, image_size=IMAGE_SIZE, max_length=MAX_LENGTH),
    }


def train_reference(
    out: str | Path, steps: int = TRAIN_STEPS, train_size: int = TRAIN_SIZE, progress: bool = True
) -> CLIPModel:
    """Train the reference teacher from scratch and save it to ``out``."""
    torch.manual_seed(0)
    model = CLIPModel(reference_config())
    data = datasets(train_size)
    train(
        model,
        data["train"],
        contrastive_loss,
        steps,
        lr=LR,
        batch_size=BATCH,
        desc="train reference teacher",
        progress=progress,
    )
    metrics = evaluate_retrieval(model, data["test"])
    card = "Reference teacher trained on vltrim's built-in image-caption data; test metrics:\n\n" + "\n".join(
        f"- {k}: {v:.3f}" for k, v in metrics.items()
    )
    save(model, out, card_extra=card)
    return model


def load_reference(progress: bool = True) -> CLIPModel:
    """The shipped reference teacher, or a cached one, or (first run without either) a freshly trained one."""
    for path in (ASSET, cache_dir()):
        if (path / "model.safetensors").exists():
            return load(path)
    return train_reference(cache_dir(), progress=progress).eval()
