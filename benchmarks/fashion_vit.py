"""A ViT classifier trained here on Fashion-MNIST: the image-classification model of the compression study.

    apt-get install -y dataset-fashion-mnist
    python benchmarks/fashion_vit.py      # trains (or loads) the classifier and prints its test top-1

`ViTForImageClassification` (28px, patch 4, 4 layers, width 192, 3 heads, FFN 768; the vision tower of the
Fashion-MNIST dual encoder), trained from scratch with cross-entropy on the 60k training images; cached under
~/.cache/vltrim/fashion_vit/ (the same steps give the same weights). Top-1 on the 10k test images.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from fashion_dual_encoder import FashionMNIST  # noqa: E402

import vltrim  # noqa: E402
from vltrim.tasks import get_task  # noqa: E402
from vltrim.train import train  # noqa: E402

CACHE = Path.home() / ".cache" / "vltrim" / "fashion_vit"
STEPS = 600


def classifier(data, steps: int = STEPS) -> torch.nn.Module:
    """The trained classifier (cached by steps and training-set size)."""
    from transformers import ViTConfig, ViTForImageClassification

    path = CACHE / f"vit-{steps}-{len(data)}"
    if (path / "model.safetensors").exists():
        return vltrim.load(path).eval()
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=28,
        patch_size=4,
        num_channels=1,
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=10,
    )
    config._attn_implementation = "sdpa"
    model = ViTForImageClassification(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    train(
        model, data, get_task("classification").loss, steps, lr=1e-3, batch_size=64, seed=0, desc="train ViT classifier"
    )
    torch.set_num_threads(threads)
    vltrim.save(model.eval(), path)
    return model.eval()


def build(steps: int = STEPS):
    """The classifier, the training images and the test images."""
    data = {s: FashionMNIST(s) for s in ("train", "test")}
    return classifier(data["train"], steps), data["train"], data["test"]


if __name__ == "__main__":
    model, _, test = build()
    print(
        f"ViT classifier: {vltrim.count_params(model):,} params, test top-1 {get_task('classification').evaluate(model, test)['top1']:.4f}"
    )
