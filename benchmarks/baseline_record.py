"""The bit-identical gate of the core redesign (issue 19): every method's plan JSON and the SHA-256 of its saved
weights on the reference CLIP (seeded, a few steps) and l1 / taylor on tiny configs, recorded before the change and checked
after it.

    python benchmarks/baseline_record.py            # writes benchmarks/results/baseline_core.json
    python benchmarks/baseline_record.py --check    # recomputes and lists every case that differs (exit 1 if any)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "baseline_core.json"


def reference_cases() -> dict[str, dict[str, Any]]:
    """compress options per case on the reference CLIP; all seeded, few steps."""
    return {
        "upop": dict(method="upop", target=0.5, search_steps=4),
        "mope-width+depth": dict(method="mope", target=0.5, depth_share=0.3),
        "taylor": dict(method="taylor", target=0.5),
        "l1": dict(method="l1", target=0.5),
        "random": dict(method="random", target=0.5),
        "heads": dict(method="heads", target=0.4),
        "magnitude": dict(method="magnitude", target=0.5),
        "2:4": dict(method="magnitude", target=0.5, method_settings={"pattern": "2:4"}),
        "lowrank": dict(method="lowrank", target=0.5),
        "distill": dict(method="distill", target=0.5),
        "chain-l1-taylor-magnitude": dict(method=["l1", "taylor", "magnitude"], target=0.3),
    }


def digest(model: Any, plan: Any) -> dict[str, str]:
    """The plan as JSON and the SHA-256 of the saved weights file."""
    import vltrim

    with tempfile.TemporaryDirectory() as d:
        vltrim.save(model, d)
        weights = hashlib.sha256((Path(d) / "model.safetensors").read_bytes()).hexdigest()
    return {"plan": json.dumps(plan.to_dict(), sort_keys=True) if plan is not None else None, "weights_sha256": weights}


def run_reference(name: str, opts: dict[str, Any]) -> dict[str, str]:
    import vltrim
    from vltrim.data import SyntheticCaptions
    from vltrim.reference import load_reference

    model = load_reference(progress=False)
    given = dict(
        task="retrieval",
        train_data=SyntheticCaptions("train", 64),
        eval_data=SyntheticCaptions("test", 32),
        calib_data=SyntheticCaptions("train", 32),
        retrain_steps=3,
        batch_size=16,
        latency_batch=0,
        progress=False,
        seed=0,
        evaluate_before=False,
    )
    res = vltrim.compress(model, **{**given, **opts})
    return digest(res.model, res.plan)


def run_tiny(name: str) -> dict[str, str]:
    import vltrim
    from vltrim.zoo import tiny_model

    model = tiny_model(name)
    plan = vltrim.plan(model, method="l1", target=0.5, align=8)
    return digest(vltrim.apply_plan(model, plan), plan)


TEXTS = [
    "a red circle",
    "a big blue square in the top left",
    "two green triangles",
    "a small yellow cube",
    "a purple star next to a circle",
    "three red squares",
    "a blue circle below a green square",
    "an orange ring",
]


def tiny_task(name: str) -> tuple[Any, str, Any]:
    """A tiny model of class ``name``, its task and a little data of that task (built-in, offline)."""
    import torch

    from vltrim.data import SyntheticCaptions
    from vltrim.data.synthetic import tokenizer
    from vltrim.tasks import SentenceDistillData
    from vltrim.zoo import tiny_model

    model = tiny_model(name)
    if name == "BertModel":
        return (
            model,
            "sentence-embedding",
            SentenceDistillData(TEXTS * 4, tokenizer(16), tiny_model(name, seed=1), max_length=16),
        )
    if name == "ViTForImageClassification":
        d = SyntheticCaptions("train", 32)
        return (
            model,
            "classification",
            [{"pixel_values": d.pixel_values[i], "label": torch.tensor(int(d.labels[i]) % 5)} for i in range(32)],
        )
    return model, "retrieval", SyntheticCaptions("train", 32)


def run_tiny_taylor(name: str) -> dict[str, str]:
    import vltrim

    model, task, data = tiny_task(name)
    res = vltrim.compress(
        model,
        "taylor",
        0.5,
        task=task,
        train_data=data,
        retrain_steps=2,
        batch_size=8,
        latency_batch=0,
        progress=False,
        seed=0,
        evaluate_before=False,
    )
    return digest(res.model, res.plan)


def cases() -> dict[str, Callable[[], dict[str, str]]]:
    out: dict[str, Callable[[], dict[str, str]]] = {
        f"reference/{n}": (lambda n=n, o=o: run_reference(n, o)) for n, o in reference_cases().items()
    }
    for cls in ("BertModel", "ViTModel", "SiglipModel", "VisionTextDualEncoderModel"):
        out[f"tiny {cls}/l1"] = lambda cls=cls: run_tiny(cls)
    for cls in ("BertModel", "ViTForImageClassification", "SiglipModel", "VisionTextDualEncoderModel"):
        out[f"tiny {cls}/taylor"] = lambda cls=cls: run_tiny_taylor(cls)
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the recorded file instead of writing it")
    a = ap.parse_args()
    torch.set_num_threads(1)
    got, seconds = {}, {}
    for name, fn in cases().items():
        t0 = time.time()
        got[name] = fn()
        seconds[name] = round(time.time() - t0, 1)
        print(f"{name}: {got[name]['weights_sha256'][:16]} ({seconds[name]} s)", flush=True)
    if not a.check:
        OUT.write_text(json.dumps({"cases": got, "torch": torch.__version__, "seconds": seconds}, indent=1))
        print(f"wrote {OUT}")
        return
    want = json.loads(OUT.read_text())["cases"]
    differ = [n for n in sorted(set(want) | set(got)) if want.get(n) != got.get(n)]
    for n in differ:
        print(f"DIFFERS: {n}")
    print("all identical" if not differ else f"{len(differ)} of {len(want)} cases differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
