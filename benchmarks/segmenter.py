"""A DPT segmenter on the built-in scenes: train a small teacher, then compress it with upop, taylor and l1 at 2x and
4x of the Transformer blocks' MACs, every method with the same total training steps.

    python benchmarks/segmenter.py      # teacher (trained once, cached in ~/.cache/vltrim/segmenter), the study
    # writes benchmarks/results/segmenter.{md,json}

Teacher: DPTForSemanticSegmentation, random init (the neck's and head's convolutions at torch's default init), ViT
backbone of width 192, 6 layers, 3 heads, FFN 768 on 64 x 64 images in 8 x 8 patches (65 tokens); the neck reads
layers 0, 2, 3 and 5 (reassemble widths 24 / 48 / 96 / 192, fusion width 32); 5 classes (background and the four
shapes). Trained on 4,000 built-in scenes (`vltrim.data.SceneSegments`, per-pixel cross-entropy), judged by mIoU on
500 test scenes whose layouts never occur in training.

Study (`vltrim.study`, task segmentation, metric macs): target 0.5 and 0.75 of the prunable MACs (the blocks'; 2x
and 4x of them; the neck and head are kept whole, so the whole model's MACs fall less, reported as 'MACs ratio').
Every cell trains ``--steps`` steps in all at one learning rate, with the task loss + per-pixel logit distillation
from the teacher: l1 and taylor (one-shot plans; taylor scores on a few batches, no training) retrain all of them;
upop's search trains too, so it searches half and retrains half. ``--seeds`` seeds of every cell's search and
retraining (mean and spread of mIoU; the teacher is one, trained with seed 0). Latency: the study's interleaved runs
(batch 1 and 32) on this CPU, each method set timed with the original in its own run, for the first seed's models."""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers as tf
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, machine_line  # noqa: E402

import vltrim  # noqa: E402
from vltrim.arch import get_adapter  # noqa: E402
from vltrim.data import SceneSegments  # noqa: E402
from vltrim.measure import _macs_of_parts  # noqa: E402
from vltrim.tasks import get_task  # noqa: E402
from vltrim.train import train  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CACHE = Path.home() / ".cache" / "vltrim" / "segmenter"
IMAGE = 64
CONFIG = dict(
    hidden_size=192,
    num_hidden_layers=6,
    num_attention_heads=3,
    intermediate_size=768,
    image_size=IMAGE,
    patch_size=8,
    backbone_out_indices=[0, 2, 3, 5],
    neck_hidden_sizes=[24, 48, 96, 192],
    fusion_hidden_size=32,
    num_labels=5,
    use_auxiliary_head=False,
)
SIZES = {"train": 4000, "test": 500}


def data(split: str) -> SceneSegments:
    return SceneSegments(split, SIZES[split], seed=0, image_size=IMAGE)


def new_teacher(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = tf.DPTForSemanticSegmentation(tf.DPTConfig(**CONFIG))
    for name, conv in model.named_modules():
        if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and not name.startswith("dpt."):
            conv.reset_parameters()
    model.config.id2label = dict(enumerate(SceneSegments.classes))
    model.config.label2id = {n: i for i, n in enumerate(SceneSegments.classes)}
    return model


def load_teacher(a: argparse.Namespace) -> tuple[nn.Module, dict]:
    """The trained teacher and its record (trained now unless cached for these settings)."""
    key = hashlib.sha1(json.dumps([CONFIG, SIZES, a.teacher_steps, a.teacher_lr, a.batch], sort_keys=True).encode())
    where = CACHE / f"teacher-{key.hexdigest()[:8]}"
    if (where / "record.json").is_file():
        return tf.DPTForSemanticSegmentation.from_pretrained(where).eval(), json.loads(
            (where / "record.json").read_text()
        )
    model, task = new_teacher(0), get_task("segmentation")
    t0 = time.time()
    losses = train(model, data("train"), task.loss, steps=a.teacher_steps, lr=a.teacher_lr, batch_size=a.batch,
                   desc="teacher", log_every=50)  # fmt: skip
    record = {
        "steps": a.teacher_steps,
        "lr": a.teacher_lr,
        "batch": a.batch,
        "train_s": round(time.time() - t0, 1),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        **{f"test_{k}": v for k, v in task.evaluate(model, data("test")).items()},
    }
    where.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(where)
    (where / "record.json").write_text(json.dumps(record, indent=1))
    return model.eval(), record


def block_macs(model: nn.Module) -> tuple[int, int]:
    """(MACs of the Transformer blocks, MACs of the whole model) for one reference image."""
    inputs = get_adapter(model).reference_inputs(model, 1)
    got = _macs_of_parts(model, inputs, {"blocks": list(model.dpt.encoder.layer)})
    return got["blocks"], sum(got.values())


def run_study(teacher: nn.Module, a: argparse.Namespace, seed: int, timed: bool) -> list[dict]:
    """upop (search half, retrain half) and l1 + taylor (retrain all), the same total steps; rows of both (timed:
    with latency)."""
    opts = {"lr": a.lr, "retrain_lr": a.lr, "metric": "macs"}
    ratios = [float(r) for r in a.ratios.split(",")]
    rows: list[dict] = []
    for methods, search, retrain in (("upop", a.steps // 2, a.steps - a.steps // 2), ("l1,taylor", 0, a.steps)):
        key = hashlib.sha1(
            json.dumps([methods, ratios, search, retrain, opts, a.batch, seed, timed], sort_keys=True).encode()
        )
        res = vltrim.study(
            teacher,
            task="segmentation",
            train_data=data("train"),
            eval_data=data("test"),
            methods=methods.split(","),
            ratios=ratios,
            retrain_steps=retrain,
            search_steps=search or None,
            out=CACHE / f"study-{key.hexdigest()[:8]}",
            batch_size=a.batch,
            seed=seed,
            compress_options=opts,
            latency_batches=(1, 32) if timed else (),
            latency_rounds=a.rounds,
        )
        for r in res.rows[0 if not rows else 1 :]:
            cell = res.out / "models" / str(r.get("cell"))
            if r.get("metric") is not None and cell.is_dir():
                blocks, total = block_macs(vltrim.load(cell))
                r = {**r, "blocks_macs": blocks, "total_macs": total}
            r["train_steps"] = (r.get("search_steps") or 0) + (r.get("retrain_steps") or 0) if r.get("method") else 0
            rows.append({**r, "seed": seed})
    return rows


def merged(runs: list[list[dict]]) -> list[dict]:
    """The first seed's rows, each with the mIoU of every seed (``seed_metrics``), their mean and spread."""
    out = []
    for i, r in enumerate(runs[0]):
        got = [run[i].get("metric") for run in runs]
        r = dict(r, seed_metrics=got)
        if all(v is not None for v in got):
            r["metric_mean"], r["metric_sd"] = statistics.fmean(got), statistics.pstdev(got) if len(got) > 1 else 0.0
        out.append(r)
    return out


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(teacher: dict, base: tuple[int, int], rows: list[dict], a: argparse.Namespace) -> str:
    blocks0, total0 = base
    lines = [
        f"`python benchmarks/segmenter.py --teacher-steps {a.teacher_steps} --steps {a.steps} --seeds {a.seeds} "
        f"--rounds {a.rounds}` (DPTForSemanticSegmentation, ViT width 192 x 6 layers, "
        f"64 x 64 images, 5 classes; random init, teacher trained {teacher['steps']} steps: test mIoU "
        f"{teacher['test_mIoU']:.3f}, pixel accuracy {teacher['test_pixel_acc']:.3f} on {SIZES['test']} unseen "
        f"layouts). The Transformer blocks are {blocks0 / total0:.0%} of the teacher's MACs; the neck and head, "
        "which no method prunes, the rest.",
        "",
        f"| method | target (of the blocks' MACs) | train steps (search + retrain) | test mIoU (of teacher), mean of "
        f"{a.seeds} seed{'s' * (a.seeds > 1)} | spread (sd) | params | "
        "blocks' MACs | MACs ratio (whole model) | speedup b1 | speedup b32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("metric") is None:
            lines.append(f"| {r['method']} | {_f(r.get('ratio'), 'g')} | | {r.get('achieved')} | | | | | | |")
            continue
        steps = f"{r.get('search_steps') or 0} + {r.get('retrain_steps') or 0}" if r.get("ratio") else "-"
        blocks = r.get("blocks_macs", blocks0 if r.get("ratio") is None else None)
        total = r.get("total_macs", total0 if r.get("ratio") is None else None)
        mean = r.get("metric_mean", r["metric"])
        lines.append(
            f"| {r['method']} | {_f(r.get('ratio'), 'g')} | {steps} | {mean:.3f} ({mean / teacher['test_mIoU']:.1%}) "
            f"| {_f(r.get('metric_sd') if r.get('ratio') else None, '.3f')} "
            f"| {_f(r.get('params'), ',')} | {_f(blocks, ',')} ({_f(blocks / blocks0 if blocks else None, '.0%')}) | "
            f"{_f(total0 / total if total else None, '.2f')}x | {_f(r.get('speedup_b1'), '.2f')}x | "
            f"{_f(r.get('speedup_b32'), '.2f')}x |"
        )
    lines += [
        "",
        f"Seeds {', '.join(map(str, range(a.seeds)))} (each cell's search and retraining; one teacher). Every method trains {a.steps} steps in all (batch {a.batch}, lr {a.lr}, task loss + per-pixel "
        "logit distillation from the teacher); upop's search is half of them. mIoU: mean IoU over the classes "
        "present, one confusion matrix over the test set. Latency: interleaved runs, median of "
        f"{a.rounds} rounds of the first seed's models (upop and its original in one run, l1 / taylor and theirs in "
        f"another); {machine_line()}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-steps", type=int, default=1000)
    ap.add_argument("--teacher-lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=120, help="training steps of every cell, search included")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ratios", default="0.5,0.75")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every cell (latency timed for seed 0)")
    ap.add_argument("--out", default=str(RESULTS / "segmenter"), help="results stem (.md and .json are added)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    teacher, record = load_teacher(a)
    base = block_macs(teacher)
    rows = merged([run_study(teacher, a, seed, timed=seed == 0) for seed in range(a.seeds)])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"teacher": {**record, "config": CONFIG, "blocks_macs": base[0], "total_macs": base[1]},
               "settings": vars(a), "seeds": list(range(a.seeds)), "machine": machine(), "wall_s": round(time.time() - t0, 1),
               "rows": rows}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str))
    out.with_suffix(".md").write_text(table(record, base, rows, a))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
