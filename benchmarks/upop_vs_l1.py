"""UPop vs l1 vs random on the reference teacher at 2x / 3x / 4x fewer prunable params, equal retraining.

    python benchmarks/upop_vs_l1.py [--search-steps 100] [--retrain-steps 50] [--only 2x:upop ...]
    # writes benchmarks/results/upop_vs_l1.{md,json,png}

Every method's subnet is retrained the same number of steps (task loss + similarity KD from the
teacher); upop additionally trains during its search, as in the paper. So that the search's extra
training is not what wins, one more row gives l1 search + retrain steps of retraining (equal total
steps). Mean R@1 on the built-in test split, params, MACs and CPU latency (batch 32, interleaved with
the teacher) for each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import line_plot, machine, machine_line  # noqa: E402

import vltrim  # noqa: E402
from vltrim.reference import datasets, load_reference  # noqa: E402
from vltrim.report import markdown_table  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TARGETS = {"2x": 0.5, "3x": 2 / 3, "4x": 0.75}
METHODS = ("upop", "l1", "l1, equal total steps", "random")


def plot(rows: list[dict], teacher: dict, path: Path) -> None:
    series = {m: [(r["params"], r["after"]) for r in rows if r["method"] == m] for m in METHODS}
    line_plot(
        series,
        (teacher["mean_R@1"], f"teacher ({teacher['params']:,} params)"),
        "parameters",
        "mean R@1 (built-in test)",
        path,
        "reference CLIP: equal retraining budget",
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--search-steps", type=int, default=100)
    ap.add_argument("--retrain-steps", type=int, default=50)
    ap.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="LABEL:METHOD",
        help="rerun just these rows (e.g. 2x:upop) and keep the others from the last results file",
    )
    args = ap.parse_args()
    teacher_model, data = load_reference(), datasets(8000)
    old = (
        {(r["label"], r["method"]): r for r in json.loads((RESULTS / "upop_vs_l1.json").read_text())["rows"]}
        if args.only
        else {}
    )
    rows = []
    for label, target in TARGETS.items():
        for method in METHODS:
            if args.only and f"{label}:{method}" not in args.only:
                rows.append(old[(label, method)])
                continue
            steps = args.retrain_steps + (args.search_steps if method.endswith("equal total steps") else 0)
            res = vltrim.compress(
                teacher_model,
                method.split(",")[0],
                target,
                task="retrieval",
                train_data=data["train"],
                eval_data=data["test"],
                search_steps=args.search_steps,
                retrain_steps=steps,
                batch_size=128,
                latency_batch=32,
                progress=False,
            )
            r, s = res.report, res.report["speed"]
            rows.append(
                {
                    "label": label,
                    "target": target,
                    "method": method,
                    "retrain_steps": steps,
                    "before": r["before"]["mean_R@1"],
                    "after_search": r["after_search"]["mean_R@1"],
                    "after": r["after"]["mean_R@1"],
                    "i2t": r["after"]["i2t_R@1"],
                    "t2i": r["after"]["t2i_R@1"],
                    "params": s["b"]["params"],
                    "macs": s["b"]["macs"],
                    "params_ratio": s["params_ratio"],
                    "macs_ratio": s["macs_ratio"],
                    "speedup": s["speedup"],
                    "rerun": bool(args.only),
                }
            )
            print(rows[-1], flush=True)
    teacher = {"mean_R@1": rows[0]["before"], "params": vltrim.count_params(teacher_model)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "upop_vs_l1.json").write_text(
        json.dumps({"rows": rows, "teacher": teacher, "args": vars(args), "machine": machine()}, indent=1)
    )
    plot(rows, teacher, RESULTS / "upop_vs_l1.png")
    table = markdown_table(
        [
            "fewer prunable params",
            "method",
            "retrain steps",
            "mean R@1 before retrain",
            "mean R@1 after",
            "i2t / t2i R@1",
            "params",
            "MACs",
            "CPU speedup",
        ],
        [
            [
                r["label"],
                r["method"] + (" *" if r.get("rerun") else ""),
                r["retrain_steps"],
                f"{r['after_search']:.3f}",
                f"{r['after']:.3f}",
                f"{r['i2t']:.3f} / {r['t2i']:.3f}",
                f"{r['params']:,} ({r['params_ratio']:.2f}x fewer)",
                f"{r['macs_ratio']:.2f}x fewer",
                f"{r['speedup']:.2f}x",
            ]
            for r in rows
        ],
    )
    md = (
        f"Reference teacher: mean R@1 {teacher['mean_R@1']:.3f}, {teacher['params']:,} params. upop searches {args.search_steps} steps; "
        f"every subnet is then retrained {args.retrain_steps} steps (contrastive + similarity KD, batch 128), "
        f"except the 'equal total steps' row, which gives l1 {args.search_steps + args.retrain_steps}.\n\n{table}\n\n"
        + (
            "Rows marked * were rerun on their own with `--only` (same seeds, so the same model; latency re-measured).\n\n"
            if any(r.get("rerun") for r in rows)
            else ""
        )
        + f"Plot: benchmarks/results/upop_vs_l1.png. Measured on: {machine_line()}.\n"
    )
    (RESULTS / "upop_vs_l1.md").write_text(md)
    print(md)
