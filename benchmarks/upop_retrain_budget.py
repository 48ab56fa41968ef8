"""UPop vs l1 vs random at one target as the retraining budget grows: where does the search pay off?

    python benchmarks/upop_retrain_budget.py [--target 0.5] [--search-steps 100] [--budgets 0 10 25 50 100]
    # writes benchmarks/results/upop_retrain_budget.{md,json,png}

Each method's plan is found once (upop: a `--search-steps` search that trains while it prunes; l1 and
random: one shot from the teacher), then the subnet is retrained from the same start for every budget
(task loss + similarity KD, the loss `vltrim.compress` uses) and evaluated on the built-in test split.
upop's search is training too: its row at budget B spent search + B steps, so l1 at B + search steps
is the equal-total-steps comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import line_plot, machine, machine_line  # noqa: E402

import vltrim  # noqa: E402
from vltrim.methods import get_method  # noqa: E402
from vltrim.reference import datasets, load_reference  # noqa: E402
from vltrim.report import markdown_table  # noqa: E402
from vltrim.tasks import get_task  # noqa: E402
from vltrim.tasks.loss import task_loss  # noqa: E402
from vltrim.train import train  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = ("upop", "l1", "random")


def searched(teacher, method: str, target: float, data, loss, steps: int):
    """(plan, model the subnet is cut from): upop's searched weights, or the teacher for one-shot methods."""
    if method == "upop":
        res = get_method("upop").run(
            teacher, target, train_data=data, loss_fn=loss, steps=steps, batch_size=128, progress=False
        )
        return res.plan, res.model
    return vltrim.plan(teacher, method, target=target), teacher


def plot(curves: dict[str, list[tuple[int, float]]], teacher: float, search_steps: int, path: Path) -> None:
    series = {m: [(b + (search_steps if m == "upop" else 0), v) for b, v in pts] for m, pts in curves.items()}
    line_plot(
        series, (teacher, "teacher"), "total training steps (upop: search + retrain)", "mean R@1 (built-in test)", path
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--search-steps", type=int, default=100)
    ap.add_argument("--budgets", type=int, nargs="+", default=[0, 10, 25, 50, 100])
    args = ap.parse_args()
    teacher, data, task = load_reference(), datasets(8000), get_task("retrieval")
    loss = task_loss(task, teacher)
    score = lambda m: task.evaluate(m, data["test"])["mean_R@1"]  # noqa: E731
    teacher_score, curves, params = score(teacher), {}, {}
    for method in METHODS:
        plan, base = searched(teacher, method, args.target, data["train"], loss, args.search_steps)
        curves[method] = []
        for budget in args.budgets:
            small = vltrim.apply_plan(base, plan)
            if budget:
                train(small, data["train"], loss, budget, lr=2e-4, batch_size=128, seed=1, progress=False)
            curves[method].append((budget, score(small)))
            params[method] = vltrim.count_params(small)
            print(method, budget, curves[method][-1][1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "upop_retrain_budget.json").write_text(
        json.dumps(
            {"args": vars(args), "teacher": teacher_score, "curves": curves, "params": params, "machine": machine()},
            indent=1,
        )
    )
    plot(curves, teacher_score, args.search_steps, RESULTS / "upop_retrain_budget.png")
    table = markdown_table(
        ["retrain steps", *METHODS], [[b, *(f"{dict(curves[m])[b]:.3f}" for m in METHODS)] for b in args.budgets]
    )
    md = (
        f"Target {args.target:.0%} of prunable params (params: "
        + ", ".join(f"{m} {params[m]:,}" for m in METHODS)
        + f"; teacher {vltrim.count_params(teacher):,}, mean R@1 {teacher_score:.3f}). upop searched {args.search_steps} steps "
        f"first, so its total training is {args.search_steps} + retrain steps. Mean R@1 on the built-in test split:\n\n{table}\n\n"
        f"Plot: benchmarks/results/upop_retrain_budget.png. Measured on: {machine_line()}.\n"
    )
    (RESULTS / "upop_retrain_budget.md").write_text(md)
    print(md)
