"""`vltrim demo`: compress the reference CLIP teacher 2x, fine-tune briefly, measure, save, reload, verify."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import api, io
from .measure import compare
from .adapters import get_adapter
from .progress import console
from .reference import datasets, load_reference
from .tasks.retrieval import contrastive_loss, evaluate_retrieval, similarity_kd_loss
from .train import train


def prunable_params(model: torch.nn.Module, units: tuple[str, ...] = ("head_dims", "neurons")) -> int:
    return sum(g.size * g.params_per_unit for g in api.inspect(model) if g.kind.value in units)


def run_demo(
    out: str | Path = "vltrim-demo",
    method: str = "l1",
    target: float = 0.5,
    steps: int = 200,
    kd_weight: float = 1.0,
    train_size: int = 8000,
    latency_batch: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole path and return (and save as results.json) every number the table shows."""
    out = Path(out)
    teacher = load_reference(progress=progress)
    data = datasets(train_size)
    with console.status("evaluating the teacher"):
        before = evaluate_retrieval(teacher, data["test"])
    plan = api.plan(teacher, method, target=target)
    student = api.apply_plan(teacher, plan)
    with console.status("evaluating the pruned model before fine-tuning"):
        pruned = evaluate_retrieval(student, data["test"])

    def loss(model, batch):
        value = contrastive_loss(model, batch)
        return value + kd_weight * similarity_kd_loss(model, teacher, batch) if kd_weight else value

    train(student, data["train"], loss, steps, lr=2e-4, batch_size=128, desc="fine-tune compressed", progress=progress)
    after = evaluate_retrieval(student, data["test"])
    with console.status(f"timing teacher vs compressed (CPU, batch {latency_batch}, interleaved)"):
        speed = compare(teacher, student, batch_size=latency_batch)
    io.save(student, out, card_extra=f"Built-in test retrieval after fine-tuning: mean R@1 {after['mean_R@1']:.3f}")
    again = io.load(out)
    ref = get_adapter(student).reference_inputs(student, 4)
    with torch.no_grad():
        same = torch.equal(student(**ref).logits_per_image, again(**ref).logits_per_image)
    results = {
        "method": method,
        "target": target,
        "fine_tune_steps": steps,
        "teacher": {**before, "params": speed["a"]["params"], "prunable_params": prunable_params(teacher), "macs": speed["a"]["macs"], "latency_ms": speed["a"]["latency_ms"]},
        "pruned_before_fine_tune": pruned,
        "compressed": {**after, "params": speed["b"]["params"], "prunable_params": prunable_params(student), "macs": speed["b"]["macs"], "latency_ms": speed["b"]["latency_ms"]},
        "speedup": speed["speedup"],
        "params_ratio": speed["params_ratio"],
        "macs_ratio": speed["macs_ratio"],
        "latency": {k: speed[k] for k in ("device", "threads", "batch_size", "rounds")},
        "plan": plan.achieved,
        "reload_bit_exact": same,
        "saved_to": str(out),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def results_table(r: dict[str, Any]):
    """The demo's one table: teacher vs compressed, side by side, from one run."""
    from rich.table import Table

    t, c = r["teacher"], r["compressed"]
    tab = Table(title=f"vltrim demo: {r['method']} at target {r['target']:.0%} of prunable params, {r['fine_tune_steps']} fine-tune steps")
    for col in ("", "teacher", "compressed", "ratio"):
        tab.add_column(col, justify="right" if col else "left")
    tab.add_row("mean R@1 (built-in test)", f"{t['mean_R@1']:.3f}", f"{c['mean_R@1']:.3f}", f"{c['mean_R@1'] / t['mean_R@1']:.1%} kept")
    tab.add_row("image->text R@1", f"{t['i2t_R@1']:.3f}", f"{c['i2t_R@1']:.3f}", "")
    tab.add_row("text->image R@1", f"{t['t2i_R@1']:.3f}", f"{c['t2i_R@1']:.3f}", "")
    tab.add_row("prunable params", f"{t['prunable_params']:,}", f"{c['prunable_params']:,}", f"{t['prunable_params'] / c['prunable_params']:.2f}x fewer")
    tab.add_row("all params", f"{t['params']:,}", f"{c['params']:,}", f"{r['params_ratio']:.2f}x fewer")
    tab.add_row("MACs (reference batch)", f"{t['macs']:,}", f"{c['macs']:,}", f"{r['macs_ratio']:.2f}x fewer")
    lat = r["latency"]
    tab.add_row(f"latency ms ({lat['device']}, {lat['threads']} thr, batch {lat['batch_size']})", f"{t['latency_ms']:.2f}", f"{c['latency_ms']:.2f}", f"{r['speedup']:.2f}x faster")
    tab.add_row("reloaded from disk", "", "bit-exact" if r["reload_bit_exact"] else "MISMATCH", "")
    return tab
