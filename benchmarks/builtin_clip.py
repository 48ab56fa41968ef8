"""The built-in reference CLIP: mope vs upop vs l1 vs random at 2x and 4x, and MoPE width-only vs width+depth.

    python benchmarks/builtin_clip.py            # writes benchmarks/results/builtin_clip.{md,json,png}
    python benchmarks/builtin_clip.py --depth    # writes benchmarks/results/builtin_clip_depth.{md,json,png}
    python benchmarks/builtin_clip.py --calibration   # MoPE plans from disjoint calibration sets: benchmarks/results/builtin_clip_calibration.md
    python benchmarks/builtin_clip.py --calibration --targets 0.5 --calib-sizes 256 --mope-rounds 1 4   # and re-scored in 4 rounds: ..._calibration_rounds.md

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
    return (
        f"Built-in reference CLIP (1.6M params, 4+4 layers, width 128, trained on the built-in captions): both towers "
        f"pruned; retraining on {a.train_size:,} training pairs, batch {a.batch_size}, LR {a.lr:g} constant after "
        f"warm-up, {a.total_steps} total steps; upop searches {a.search_steps} of them; mope scores every head, FFN group "
        f"and layer by the drop of mean R@1 on 256 training pairs before retraining (time below) and adds hidden-state "
        f"and final-embedding distillation; mean R@1 on the 1,000 test pairs."
    )


def calibration_spread(a, sets: int = 5) -> str:
    """MoPE plans from disjoint calibration sets of the training pairs: mean R@1 right after pruning (at each
    ``--calib-sizes``), and after the benchmark's retraining for 256-pair sets at ``--retrain-targets``."""

    import vltrim
    from vltrim.methods import get_method
    from vltrim.tasks import get_task

    torch.set_num_threads(1)
    model, train, test = build(a)
    evaluate = get_task("retrieval").evaluate
    rows = [
        "| target | calibration pairs | rounds | stage | "
        + " | ".join(f"set {i}" for i in range(sets))
        + " | spread | mean |",
        "|---|---|---|---|" + "---|" * (sets + 2),
    ]
    for t in a.targets:
        for size in a.calib_sizes:
            for rounds in a.mope_rounds:
                n = min(sets, len(train) // size)
                plans = [
                    get_method("mope").search(
                        model,
                        t,
                        data=torch.utils.data.Subset(train, range(i * size, (i + 1) * size)),
                        task="retrieval",
                        calib_size=size,
                        rounds=rounds,
                    )
                    for i in range(n)
                ]
                stages = {
                    "right after pruning": [evaluate(vltrim.apply_plan(model, p), test)["mean_R@1"] for p in plans]
                }
                if size == 256 and t in a.retrain_targets:
                    stages[f"after {a.total_steps} retraining steps"] = [
                        _retrained(model, p, train, test, a) for p in plans
                    ]
                for stage, vals in stages.items():
                    cells = [f"{v:.3f}" for v in vals] + ["-"] * (sets - n)
                    rows.append(
                        f"| {1 / (1 - t):.0f}x | {size} | {rounds} | {stage} | "
                        + " | ".join(cells)
                        + f" | {min(vals):.3f}-{max(vals):.3f} | {sum(vals) / len(vals):.3f} |"
                    )
                    print(rows[-1], flush=True)
    return (
        f"**MoPE's plan vs its calibration set** (mean R@1 on the 1,000 test pairs; set i = training pairs "
        f"i x size .. (i + 1) x size - 1; retraining as in the main table, seed 0; teacher "
        f"{evaluate(model, test)['mean_R@1']:.3f}):\n\n" + "\n".join(rows) + "\n"
    )


def _retrained(model, plan, train, test, a) -> float:
    """Mean R@1 after the benchmark's retraining of ``plan`` (mope's distillation defaults)."""
    import vltrim

    res = vltrim.compress(
        model,
        "mope",
        plan.target["target"],
        task="retrieval",
        train_data=train,
        eval_data=test,
        plan=plan,
        search_steps=0,
        retrain_steps=a.total_steps,
        lr=a.lr,
        retrain_lr=a.lr,
        batch_size=a.batch_size,
        retrain_schedule="constant",
        latency_batch=0,
        progress=False,
        seed=0,
        evaluate_before=False,
    )
    return res.report["after"]["mean_R@1"]


if __name__ == "__main__":
    ap = harness.arguments(__doc__.split("\n\n")[0], methods=["mope", "upop", "l1", "random"], batch_size=64, lr=3e-4)
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument(
        "--calibration",
        action="store_true",
        help="only: mope plans from 5 disjoint calibration sets, metric right after pruning and after retraining",
    )
    ap.add_argument(
        "--calib-sizes", nargs="+", type=int, default=[256, 1024], help="--calibration: calibration set sizes"
    )
    ap.add_argument(
        "--retrain-targets", nargs="+", type=float, default=[0.5], help="--calibration: targets also retrained"
    )
    ap.add_argument(
        "--mope-rounds",
        nargs="+",
        type=int,
        default=[1],
        help="--calibration: mope's rounds setting(s) "
        "(1: one scoring, as in the paper; R: the width cut in R re-scored steps)",
    )
    args = ap.parse_args()
    if args.calibration:
        md = calibration_spread(args)
        name = "builtin_clip_calibration" + ("" if args.mope_rounds == [1] else "_rounds")
        (harness.RESULTS / f"{name}.md").write_text(md)
        print(md)
        raise SystemExit
    harness.run_or_depth(args, "builtin_clip", build, "retrieval", METRICS, describe)
