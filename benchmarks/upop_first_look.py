"""First look at UPop on the reference teacher: subnet quality with no retraining, and search overhead.

    python benchmarks/upop_first_look.py [--target 0.5] [--steps 100]   # writes benchmarks/results/upop_first_look.{md,json}

At one target, the subnets of upop (after a `--steps` search), l1 and random are evaluated on the
built-in test split with no retraining; the search's wall time is compared with plain training steps
on the same batches (one run, same process). The full comparison (2x/3x/4x, equal retraining budget)
is a separate benchmark still to come.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, machine_line  # noqa: E402

import vltrim  # noqa: E402
from vltrim.methods import get_method  # noqa: E402
from vltrim.reference import datasets, load_reference  # noqa: E402
from vltrim.report import markdown_table  # noqa: E402
from vltrim.tasks import contrastive_loss, evaluate_retrieval  # noqa: E402
from vltrim.train import train  # noqa: E402

RESULTS = Path(__file__).parent / "results"

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    teacher, data = load_reference(), datasets(8000)
    rows, out = [], {"target": args.target, "steps": args.steps}
    t0 = time.perf_counter()
    res = get_method("upop").run(
        teacher,
        args.target,
        train_data=data["train"],
        loss_fn=contrastive_loss,
        steps=args.steps,
        interval=10,
        lr=1e-4,
        batch_size=128,
        progress=False,
    )
    search_s = time.perf_counter() - t0
    plain = copy.deepcopy(teacher)
    t0 = time.perf_counter()
    train(plain, data["train"], contrastive_loss, args.steps, lr=1e-4, batch_size=128, progress=False)
    plain_s = time.perf_counter() - t0
    out["teacher"] = evaluate_retrieval(teacher, data["test"])["mean_R@1"]
    subnets = {"upop": vltrim.apply_plan(res.model, res.plan)}
    for m in ("l1", "random"):
        subnets[m] = vltrim.apply_plan(teacher, vltrim.plan(teacher, m, target=args.target))
    for name, sub in subnets.items():
        r1 = evaluate_retrieval(sub, data["test"])["mean_R@1"]
        out[name] = {"mean_R@1": r1, "params": vltrim.count_params(sub)}
        rows.append([name, f"{r1:.3f}", f"{vltrim.count_params(sub):,}"])
    out.update(search_s=search_s, plain_s=plain_s, overhead=search_s / plain_s, machine=machine())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "upop_first_look.json").write_text(json.dumps(out, indent=1))
    md = (
        f"Reference teacher (mean R@1 {out['teacher']:.3f}), {args.target:.0%} of prunable params removed, subnets evaluated "
        f"with no retraining (upop after a {args.steps}-step search):\n\n"
        + markdown_table(["method", "mean R@1, no retraining", "params"], rows)
        + f"\n\nUPop search: {search_s:.1f} s for {args.steps} steps vs {plain_s:.1f} s of plain training on the same batches "
        f"(overhead {out['overhead']:.2f}x, including the copy and the plan's MAC count). Measured on: {machine_line()}.\n"
    )
    (RESULTS / "upop_first_look.md").write_text(md)
    print(md)
