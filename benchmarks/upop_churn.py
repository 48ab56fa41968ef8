"""How much UPop's pruned set changes between mask updates, re-ranked (public code, vltrim default) vs monotone.

    python benchmarks/upop_churn.py [--target 0.6667] [--steps 100]   # writes benchmarks/results/upop_churn.{md,json}

The same search twice on the reference teacher (task loss + similarity KD, batch 128, constant LR, the
paper's mask-gradient saliency), once re-ranking all units at every update and once keeping every
pruned unit pruned. Per update: units newly pruned
(their mask jumps from 1 to the current fade) and units restored; then the extracted subnet's mean R@1
on the built-in test split with no retraining.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, machine_line  # noqa: E402

import vltrim  # noqa: E402
from vltrim.methods import get_method  # noqa: E402
from vltrim.reference import datasets, load_reference  # noqa: E402
from vltrim.report import markdown_table  # noqa: E402
from vltrim.run.runner import task_loss  # noqa: E402
from vltrim.tasks import get_task  # noqa: E402

RESULTS = Path(__file__).parent / "results"

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=2 / 3)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    teacher, data, task = load_reference(), datasets(8000), get_task("retrieval")
    runs = {}
    for monotone in (False, True):
        res = get_method("upop").run(
            teacher,
            args.target,
            train_data=data["train"],
            loss_fn=task_loss(task, teacher),
            steps=args.steps,
            batch_size=128,
            monotone=monotone,
            saliency="abs",
            progress=False,
        )
        score = task.evaluate(vltrim.apply_plan(res.model, res.plan), data["test"])["mean_R@1"]
        runs["monotone" if monotone else "re-ranked"] = {"log": res.log, "mean_R@1": score}
        print(monotone, score, flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "upop_churn.json").write_text(
        json.dumps({"args": vars(args), "runs": runs, "machine": machine()}, indent=1)
    )
    rr, mo = runs["re-ranked"]["log"], runs["monotone"]["log"]
    table = markdown_table(
        [
            "step",
            "pruned share",
            "mask of pruned units",
            "re-ranked: newly pruned / restored",
            "monotone: newly pruned",
        ],
        [
            [
                a["step"],
                f"{a['share']:.3f}",
                f"{a['fade']:.3f}",
                f"{a['newly_pruned']} / {a['restored']}",
                b["newly_pruned"],
            ]
            for a, b in zip(rr, mo)
        ],
    )
    md = (
        f"UPop search to {args.target:.0%} of prunable params, {args.steps} steps, mask update every 10. Mean R@1 of the extracted "
        f"subnet, no retraining: re-ranked {runs['re-ranked']['mean_R@1']:.3f}, monotone {runs['monotone']['mean_R@1']:.3f} "
        f"(teacher {task.evaluate(teacher, data['test'])['mean_R@1']:.3f}).\n\n{table}\n\nMeasured on: {machine_line()}.\n"
    )
    (RESULTS / "upop_churn.md").write_text(md)
    print(md)
