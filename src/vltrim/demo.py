"""`vltrim demo`: compress the reference CLIP teacher 2x with UPop through `vltrim.compress`, save, reload, verify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vltrim import api, io
from vltrim.arch import get_adapter
from vltrim.measure import speedup_text
from vltrim.progress import phase
from vltrim.reference import datasets, load_reference
from vltrim.run.artifacts import save as save_result
from vltrim.run.compress import compress


def prunable_params(model: torch.nn.Module, units: tuple[str, ...] = ("head_dims", "neurons")) -> int:
    return sum(g.size * g.params_per_unit for g in api.inspect(model) if g.kind.value in units)


def run_demo(
    out: str | Path = "vltrim-demo",
    method: str = "upop",
    target: float = 0.5,
    search_steps: int = 100,
    retrain_steps: int = 50,
    kd_weight: float = 1.0,
    train_size: int = 8000,
    latency_batch: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole path through ``vltrim.compress`` and return (and save as results.json) every number shown."""
    out = Path(out)
    with phase("loading the built-in CLIP teacher", progress):
        teacher = load_reference(progress=progress)
    with phase(f"rendering the built-in data ({train_size} training image-caption pairs and the test split)", progress):
        data = datasets(train_size)
    res = compress(
        teacher,
        method,
        target,
        task="retrieval",
        train_data=data["train"],
        eval_data=data["test"],
        search_steps=search_steps,
        retrain_steps=retrain_steps,
        kd_weight=kd_weight,
        batch_size=128,
        latency_batch=latency_batch,
        progress=progress,
    )
    student, speed, rep = res.model, res.report["speed"], res.report
    rep["source_model"] = "reference (vltrim's built-in CLIP teacher)"
    save_result(
        res, out, card_extra=f"Built-in test retrieval after fine-tuning: mean R@1 {rep['after']['mean_R@1']:.3f}"
    )
    again = io.load(out)
    ref = get_adapter(student).reference_inputs(student, 4)
    with torch.no_grad():
        same = torch.equal(student(**ref).logits_per_image, again(**ref).logits_per_image)
    results = {
        "method": method,
        "target": target,
        "search_steps": rep["search_steps"],
        "fine_tune_steps": rep["retrain_steps"],
        "teacher": {
            **rep["before"],
            "params": speed["a"]["params"],
            "prunable_params": prunable_params(teacher),
            "macs": speed["a"]["macs"],
            "latency_ms": speed["a"]["latency_ms"],
        },
        "pruned_before_fine_tune": rep["after_search"],
        "compressed": {
            **rep["after"],
            "params": speed["b"]["params"],
            "prunable_params": prunable_params(student),
            "macs": speed["b"]["macs"],
            "latency_ms": speed["b"]["latency_ms"],
        },
        "speedup": speed["speedup"],
        "speedup_text": speedup_text(speed) + (" faster" if speed["speedup_conclusive"] else ""),
        "params_ratio": speed["params_ratio"],
        "macs_ratio": speed["macs_ratio"],
        "latency": {k: speed[k] for k in ("device", "threads", "batch_size", "rounds")},
        "plan": res.plan.achieved,
        "reload_bit_exact": same,
        "saved_to": str(out),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def results_table(r: dict[str, Any]):
    """The demo's one table: teacher vs compressed, side by side, from one run."""
    from rich.table import Table

    t, c = r["teacher"], r["compressed"]
    search = f"{r['search_steps']} search + " if r.get("search_steps") else ""
    tab = Table(
        title=f"vltrim demo: {r['method']} at target {r['target']:.0%} of prunable params, {search}{r['fine_tune_steps']} fine-tune steps"
    )
    for col in ("", "teacher", "compressed", "ratio"):
        tab.add_column(col, justify="right" if col else "left")
    tab.add_row(
        "mean R@1 (built-in test)",
        f"{t['mean_R@1']:.3f}",
        f"{c['mean_R@1']:.3f}",
        f"{c['mean_R@1'] / t['mean_R@1']:.1%} kept",
    )
    tab.add_row("image->text R@1", f"{t['i2t_R@1']:.3f}", f"{c['i2t_R@1']:.3f}", "")
    tab.add_row("text->image R@1", f"{t['t2i_R@1']:.3f}", f"{c['t2i_R@1']:.3f}", "")
    tab.add_row(
        "prunable params",
        f"{t['prunable_params']:,}",
        f"{c['prunable_params']:,}",
        f"{t['prunable_params'] / c['prunable_params']:.2f}x fewer",
    )
    tab.add_row("all params", f"{t['params']:,}", f"{c['params']:,}", f"{r['params_ratio']:.2f}x fewer")
    tab.add_row("MACs (reference batch)", f"{t['macs']:,}", f"{c['macs']:,}", f"{r['macs_ratio']:.2f}x fewer")
    lat = r["latency"]
    tab.add_row(
        f"latency ms ({lat['device']}, {lat['threads']} thr, batch {lat['batch_size']})",
        f"{t['latency_ms']:.2f}",
        f"{c['latency_ms']:.2f}",
        r.get("speedup_text", f"{r['speedup']:.2f}x faster"),
    )
    tab.add_row("reloaded from disk", "", "bit-exact" if r["reload_bit_exact"] else "MISMATCH", "")
    return tab
