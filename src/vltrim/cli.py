"""`vltrim` command line: demo, inspect, measure, compress."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Make vision-language and unimodal Transformers smaller and really faster.")
out_console = Console()

MODEL_HELP = "a vltrim model directory, a Hugging Face model directory, 'reference' (the built-in CLIP teacher) or 'tiny:<Class>'"


def load_any(spec: str):
    """Model from a vltrim directory, an HF directory, 'reference' or 'tiny:<Class>' (random init)."""
    from . import io
    from .adapters import model_class

    if spec == "reference":
        from .reference import load_reference

        return load_reference()
    if spec.startswith("tiny:"):
        from .zoo import tiny_model

        return tiny_model(spec[5:])
    path = Path(spec)
    if (path / "plan.json").exists():
        return io.load(path)
    if (path / "config.json").exists():
        arch = (json.loads((path / "config.json").read_text()).get("architectures") or [None])[0]
        if arch is None:
            raise typer.BadParameter(f"{path}/config.json names no 'architectures'; load the model in Python and use the API")
        return model_class(arch).from_pretrained(path).eval()
    raise typer.BadParameter(f"{spec!r} is not {MODEL_HELP}")


def _fail(e: Exception) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {e}")
    raise typer.Exit(2)


@app.command()
def demo(
    out: Path = typer.Option(Path("vltrim-demo"), help="where the compressed model and results.json go"),
    method: str = typer.Option("l1", help="compression method"),
    target: float = typer.Option(0.5, help="fraction of prunable params to remove"),
    steps: int = typer.Option(200, help="fine-tuning steps after pruning"),
    train_size: int = typer.Option(8000, help="built-in training pairs for fine-tuning"),
) -> None:
    """Compress the built-in CLIP teacher, fine-tune briefly, and print teacher vs compressed."""
    from .demo import results_table, run_demo

    try:
        r = run_demo(out, method=method, target=target, steps=steps, train_size=train_size)
    except ValueError as e:
        _fail(e)
    out_console.print(results_table(r))
    out_console.print(f"saved to {out}/ (config.json, plan.json, model.safetensors, README.md, results.json)")


@app.command()
def inspect(model: str = typer.Argument(..., help=MODEL_HELP), all_groups: bool = typer.Option(False, "--all", help="one row per group")) -> None:
    """List the prunable groups: modality, unit kind, sizes and exact per-unit costs."""
    from . import api

    try:
        m = load_any(model)
        groups = api.inspect(m)
    except Exception as e:  # noqa: BLE001 - shown to the user as one clear line
        _fail(e)
    tab = Table(title=f"{type(m).__name__}: prunable groups (costs for one reference input)")
    if all_groups:
        for col in ("group", "size", "params/unit", "MACs/unit"):
            tab.add_column(col, justify="left" if col == "group" else "right")
        for g in groups:
            tab.add_row(g.name, str(g.size), f"{g.params_per_unit:,}", f"{g.macs_per_unit:,}")
    else:
        for col in ("modality", "kind", "groups", "units", "params/unit", "MACs/unit"):
            tab.add_column(col, justify="left" if col in ("modality", "kind") else "right")
        agg: dict = defaultdict(list)
        for g in groups:
            agg[(g.modality, g.kind.value)].append(g)
        span = lambda vals: f"{min(vals):,}" if min(vals) == max(vals) else f"{min(vals):,}-{max(vals):,}"  # noqa: E731
        for (mod, kind), gs in agg.items():
            tab.add_row(mod, kind, str(len(gs)), str(sum(g.size for g in gs)), span([g.params_per_unit for g in gs]), span([g.macs_per_unit for g in gs]))
    out_console.print(tab)


@app.command("measure")
def measure_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    batch_size: int = typer.Option(1, help="batch of the reference input"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    rounds: int = typer.Option(15, help="timing rounds (median reported)"),
) -> None:
    """Params, MACs and median latency on the model's reference input."""
    from .measure import measure

    try:
        m = load_any(model).to(device)
        r = measure(m, batch_size=batch_size, rounds=rounds)
    except Exception as e:  # noqa: BLE001
        _fail(e)
    out_console.print_json(json.dumps(r))


@app.command()
def compress(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., help="output directory for the compressed model"),
    method: str = typer.Option("l1", help="compression method (l1, random)"),
    target: float = typer.Option(0.5, help="fraction of prunable cost to remove, in (0, 1)"),
    metric: str = typer.Option("params", help="params or macs"),
    align: int = typer.Option(8, help="kept widths are multiples of this (1 = any width)"),
    units: str = typer.Option("head_dims,neurons", help="unit kinds: head_dims or heads, and neurons"),
    plan_file: Optional[Path] = typer.Option(None, "--plan", help="apply this plan.json instead of searching"),
    latency_batch: int = typer.Option(1, help="batch size for the before/after latency comparison"),
) -> None:
    """Search a plan (or read one), apply it, save the smaller model and compare it with the original."""
    from . import api, io
    from .measure import compare
    from .structure.plan import Plan

    try:
        m = load_any(model)
        plan = Plan.load(plan_file) if plan_file else api.plan(m, method, target=target, metric=metric, align=align, units=units)
        small = api.apply_plan(m, plan)
        io.save(small, out)
        c = compare(m, small, batch_size=latency_batch)
    except Exception as e:  # noqa: BLE001
        _fail(e)
    tab = Table(title=plan.summary())
    for col in ("", "original", "compressed", "ratio"):
        tab.add_column(col)
    tab.add_row("params", f"{c['a']['params']:,}", f"{c['b']['params']:,}", f"{c['params_ratio']:.2f}x")
    tab.add_row("MACs", f"{c['a']['macs']:,}", f"{c['b']['macs']:,}", f"{c['macs_ratio']:.2f}x")
    tab.add_row(f"latency ms ({c['device']}, {c['threads']} thr, batch {c['batch_size']})", f"{c['a']['latency_ms']:.3f}", f"{c['b']['latency_ms']:.3f}", f"{c['speedup']:.2f}x")
    out_console.print(tab)
    out_console.print(f"saved to {out}/; reload with vltrim.load('{out}')")


if __name__ == "__main__":
    app()
