"""The built-in reference CLIP: mope vs upop vs l1 vs random at 2x and 4x, and MoPE width-only vs width+depth.

    python benchmarks/builtin_clip.py            # writes benchmarks/results/builtin_clip.{md,json,png}
    python benchmarks/builtin_clip.py --depth    # writes benchmarks/results/builtin_clip_depth.{md,json,png}
    python benchmarks/builtin_clip.py --calibration   # MoPE plans from 5 calibration sets: benchmarks/results/builtin_clip_calibration.md

The teacher is the shipped reference CLIP (1.6M params, 4+4 layers, trained on the built-in image-caption
data). Every method prunes both towers to the same share of prunable params through `vltrim.compress` and
retrains with contrastive loss + similarity KD (mope adds hidden-state and final-embedding KD); mean R@1 on the
1,000 built-in test pairs along one retraining run, so the tables read both equal total steps and equal
retraining steps (see benchmarks/harness.py). The built-in task is easy: expect every method to recover at 2x.
``--depth`` compares MoPE plans that reach the same params by width alone (depth_share 0) and by width and
depth (depth_share 0.5): retrained metric (3 seeds), and params, MACs and CPU latency of the plans (one
interleaved timing run, 2 threads).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

from vltrim.reference import datasets, load_reference  # noqa: E402

METRICS = [("mean_R@1", "mean R@1 (1,000 test pairs)")]


def build(a):
    data = datasets(a.train_size)
    return load_reference(progress=False), data["train"], data["test"]


def describe(a) -> str:
    return (f"Built-in reference CLIP (1.6M params, 4+4 layers, width 128, trained on the built-in captions): both towers "
            f"pruned; retraining on {a.train_size:,} training pairs, batch {a.batch_size}, LR {a.lr:g} constant after "
            f"warm-up, {a.total_steps} total steps; upop searches {a.search_steps} of them; mope scores every head, FFN group "
            f"and layer by the drop of mean R@1 on 256 training pairs before retraining (time below) and adds hidden-state "
            f"and final-embedding distillation; mean R@1 on the 1,000 test pairs.")


def calibration_spread(a, sets: int = 5, size: int = 256) -> str:
    """MoPE plans from ``sets`` disjoint calibration sets of the training pairs: mean R@1 right after pruning."""
    import torch

    import vltrim
    from vltrim.methods import get_method
    from vltrim.tasks import get_task

    torch.set_num_threads(1)
    model, train, test = build(a)
    rows = ["| target | " + " | ".join(f"pairs {i * size}-{(i + 1) * size - 1}" for i in range(sets)) + " |",
            "|---|" + "---|" * sets]
    for t in a.targets:
        vals = []
        for i in range(sets):
            calib = torch.utils.data.Subset(train, range(i * size, (i + 1) * size))
            plan = get_method("mope").search(model, t, data=calib, task="retrieval")
            vals.append(get_task("retrieval").evaluate(vltrim.apply_plan(model, plan), test)["mean_R@1"])
        rows.append(f"| {1 / (1 - t):.0f}x | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return (f"**MoPE's plan vs its calibration set** (mean R@1 on the 1,000 test pairs right after pruning, no retraining; "
            f"{sets} disjoint sets of {size} training pairs; teacher {get_task('retrieval').evaluate(model, test)['mean_R@1']:.3f}):\n\n"
            + "\n".join(rows) + "\n")


if __name__ == "__main__":
    ap = harness.arguments(__doc__.split("\n\n")[0], methods=["mope", "upop", "l1", "random"], batch_size=64, lr=3e-4)
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--calibration", action="store_true", help="only: mope plans from 5 disjoint calibration sets, metric right after pruning")
    args = ap.parse_args()
    if args.calibration:
        md = calibration_spread(args)
        (harness.RESULTS / "builtin_clip_calibration.md").write_text(md)
        print(md)
        raise SystemExit
    harness.run_or_depth(args, "builtin_clip", build, "retrieval", METRICS, describe)
