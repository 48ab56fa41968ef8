"""Train the small HuBERT keyword classifier that benchmarks/speech_study.py compresses (CPU, deterministic by seed).

    python benchmarks/speech_commands.py        # once: renders the spoken-command clips (espeak-ng / flite / sox)
    python benchmarks/speech_teacher.py         # trains the teacher if missing; writes results/speech_teacher.md
    python benchmarks/speech_teacher.py --force

The data are the rendered clips of benchmarks/speech_commands.py (20 words, split by voice: test and val voices are
never heard in training), read through vltrim's own audio folder loader (`vltrim.tasks.sources.DataSource`, task
audio-classification: every file checked, 16 kHz, 1 s) and cached as tensors beside the clips. The teacher is a
HubertForSequenceClassification from scratch (no pretrained speech weights install offline): the HuBERT CNN feature
encoder at 64 channels (the usual 320x stride: 49 frames per second), 4 Transformer layers of width 192, 4 heads, FFN
768; its front end is about a third of its MACs, as HuBERT-base's is. Trained with vltrim's task loss
(`vltrim.train.train`: AdamW, warm-up then cosine), SpecAugment time masks on; saved with `vltrim.save` to
~/.cache/vltrim/speech_teacher/ with speech_teacher.json (its held-out accuracies) beside it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import transformers as tf
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_line  # noqa: E402

import vltrim  # noqa: E402
from vltrim.measure import cost_split  # noqa: E402
from vltrim.tasks import get_task  # noqa: E402
from vltrim.tasks.sources import DataSource  # noqa: E402
from vltrim.train import train  # noqa: E402

DATA = Path.home() / ".cache" / "vltrim" / "speech_commands"
ROOT = Path.home() / ".cache" / "vltrim" / "speech_teacher"
RESULTS = Path(__file__).parent / "results"
CLASSES = sorted("zero one two three four five six seven eight nine yes no up down left right on off stop go".split())
STEPS, BATCH, LR, SEED = 2500, 32, 5e-4, 0


def config() -> tf.HubertConfig:
    return tf.HubertConfig(
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=768,
        conv_dim=(64,) * 7,
        num_conv_pos_embeddings=64,
        num_conv_pos_embedding_groups=16,
        classifier_proj_size=128,
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)},
        layerdrop=0.0,
        mask_time_prob=0.05,
    )


class Clips(Dataset):
    """One split's clips held in memory: {'input_values', 'label'} items."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_values": self.x[i].float(), "label": self.y[i]}

    def subset(self, per_class: int) -> Clips:
        """The first ``per_class`` clips of every class (a fixed, balanced evaluation subset)."""
        idx = torch.cat([(self.y == c).nonzero()[:per_class, 0] for c in range(len(CLASSES))])
        return Clips(self.x[idx], self.y[idx])


def split(name: str) -> Clips:
    """The rendered clips of one split, read once with vltrim's audio folder loader and cached as a tensor file."""
    cache = DATA / f"{name}.pt"
    if cache.is_file():
        return Clips(*torch.load(cache))
    if not (DATA / name).is_dir():
        sys.exit(f"{DATA / name} is missing: render the clips first (python benchmarks/speech_commands.py)")
    t0 = time.time()
    ds = DataSource(tf.HubertForSequenceClassification(config()), "speech", "audio-classification").open(
        str(DATA / name), "--data", "train"
    )
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it["input_values"] for it in items]).half()  # 16-bit clips: half is exact enough, half the memory
    y = torch.stack([it["label"] for it in items])
    torch.save((x, y), cache)
    print(f"{name}: {len(y)} clips read in {time.time() - t0:.0f}s, cached to {cache}", flush=True)
    return Clips(x, y)


def load_teacher() -> tuple[torch.nn.Module, dict]:
    return vltrim.load(ROOT / "model"), json.loads((ROOT / "speech_teacher.json").read_text())


def train_teacher(force: bool = False) -> dict:
    if (ROOT / "speech_teacher.json").is_file() and not force:
        print(f"finished teacher in {ROOT} (--force retrains)", flush=True)
        return load_teacher()[1]
    train_data, val, test = split("train"), split("val"), split("test")
    torch.manual_seed(SEED)
    model = tf.HubertForSequenceClassification(config())
    task = get_task("audio-classification")
    t0 = time.time()
    losses = train(model, train_data, task.loss, STEPS, lr=LR, batch_size=BATCH, seed=SEED, desc="speech teacher")
    seconds = time.time() - t0
    model.eval()
    record = {
        "class": type(model).__name__,
        "params": vltrim.count_params(model),
        "split": cost_split(model),
        "steps": STEPS,
        "batch_size": BATCH,
        "lr": LR,
        "train_clips": len(train_data),
        "train_seconds": round(seconds),
        "final_loss": sum(losses[-50:]) / 50,
        "val_top1": task.evaluate(model, val)["top1"],
        "test_top1": task.evaluate(model, test)["top1"],
        "chance": 1 / len(CLASSES),
        "threads": torch.get_num_threads(),
    }
    ROOT.mkdir(parents=True, exist_ok=True)
    card = "Small HuBERT keyword classifier trained on rendered spoken commands by benchmarks/speech_teacher.py."
    vltrim.save(model, ROOT / "model", card_extra=card)
    (ROOT / "speech_teacher.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record), flush=True)
    return record


def write_results(r: dict) -> None:
    s = r["split"]
    lines = [
        "# Speech teacher (benchmarks/speech_teacher.py)",
        "",
        f"HubertForSequenceClassification from scratch, {r['params']:,} params, {r['steps']} steps of batch "
        f"{r['batch_size']} (lr {r['lr']}) on {r['train_clips']:,} rendered clips in {r['train_seconds']} s.",
        "",
        "| split | top-1 |",
        "|---|---|",
        f"| val (unseen voices) | {r['val_top1']:.3f} |",
        f"| test (unseen voices) | {r['test_top1']:.3f} |",
        f"| chance | {r['chance']:.3f} |",
        "",
        "| part (1 s clip) | params | share | MACs | share |",
        "|---|---|---|---|---|",
        *(
            f"| {k} | {v['params']:,} | {v['params_share']:.1%} | {v['macs']:,} | {v['macs_share']:.1%} |"
            for k, v in s.items()
        ),
        "",
        f"Machine: {machine_line()}.",
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speech_teacher.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="retrain even when a finished teacher exists")
    args = ap.parse_args()
    torch.set_num_threads(2)
    write_results(train_teacher(args.force))


if __name__ == "__main__":
    main()
