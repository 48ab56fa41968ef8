"""The README's demo numbers: run `vltrim demo` with its defaults and write benchmarks/results/demo.{json,md}.

python benchmarks/demo.py [--method upop] [--search-steps 100] [--retrain-steps 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, machine_line  # noqa: E402

from vltrim.demo import run_demo  # noqa: E402
from vltrim.report import markdown_table  # noqa: E402

RESULTS = Path(__file__).parent / "results"

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="upop")
    ap.add_argument("--search-steps", type=int, default=100)
    ap.add_argument("--retrain-steps", type=int, default=50)
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        r = run_demo(
            Path(d) / "out", method=args.method, search_steps=args.search_steps, retrain_steps=args.retrain_steps
        )
    r["wall_s"] = round(time.time() - t0, 1)
    r["machine"] = machine()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo.json").write_text(json.dumps(r, indent=1))
    t, c, lat = r["teacher"], r["compressed"], r["latency"]
    rows = [
        [
            "mean R@1 (built-in test, 1000 pairs)",
            f"{t['mean_R@1']:.3f}",
            f"{c['mean_R@1']:.3f}",
            f"{c['mean_R@1'] / t['mean_R@1']:.1%} kept",
        ],
        ["image->text R@1", f"{t['i2t_R@1']:.3f}", f"{c['i2t_R@1']:.3f}", ""],
        ["text->image R@1", f"{t['t2i_R@1']:.3f}", f"{c['t2i_R@1']:.3f}", ""],
        [
            "prunable params (head_dims + FFN)",
            f"{t['prunable_params']:,}",
            f"{c['prunable_params']:,}",
            f"{t['prunable_params'] / c['prunable_params']:.2f}x fewer",
        ],
        ["all params", f"{t['params']:,}", f"{c['params']:,}", f"{r['params_ratio']:.2f}x fewer"],
        [f"MACs (batch {lat['batch_size']})", f"{t['macs']:,}", f"{c['macs']:,}", f"{r['macs_ratio']:.2f}x fewer"],
        [
            f"CPU latency, median ms (batch {lat['batch_size']}, {lat['threads']} threads)",
            f"{t['latency_ms']:.1f}",
            f"{c['latency_ms']:.1f}",
            r.get("speedup_text", f"{r['speedup']:.2f}x faster"),
        ],
    ]
    md = (
        f"`vltrim demo` ({args.method}, target 50% of prunable params, {r['search_steps']} search steps, then {r['fine_tune_steps']} "
        f"fine-tune steps; mean R@1 of the extracted subnet before fine-tuning: {r['pruned_before_fine_tune']['mean_R@1']:.3f}; "
        f"reload bit-exact: {r['reload_bit_exact']}; whole run {r['wall_s']:.0f} s)\n\n"
        + markdown_table(["", "teacher", "compressed", ""], rows)
        + f"\n\nMeasured on: {machine_line()}. Latencies of both models come from one interleaved run.\n"
    )
    (RESULTS / "demo.md").write_text(md)
    print(md)
