"""The real-weights harness shared by benchmarks/real_text.py and benchmarks/fashion_dual_encoder.py.

Every method prunes the same pretrained model to the same share of prunable params through
`vltrim.compress` and retrains with a constant LR (after warm-up) for the rest of one total budget of
training steps; upop's search steps count as training. The learning curve is read along that one
retraining run (``eval_every``), so each point is the metric after that many *total* steps, and the
tables compare methods at equal total steps and at equal retraining steps. Several seeds give a
mean and a spread. Runs go in ``--jobs`` processes of one torch thread each (faster than two threads
on 2 shared cores); each run's result is cached as JSON, so a killed benchmark continues where it stopped.
``--peer`` adds Torch-Pruning's configurations (benchmarks/peer.py) as rows pruned to the same params and retrained
the same way; each results file then also lists what every plan removes (params, MACs), the kept widths per layer
(<stem>_widths.png) and, with ``--latency``, every plan's measured speedup in one interleaved run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from machine import machine, machine_line

RESULTS = Path(__file__).parent / "results"
PEER_NAMES = (
    "taylor-global",
    "magnitude-global",
    "taylor-heads-global",
    "taylor-heads-local",
    "taylor-local",
)  # peer.PEER
CACHE = Path.home() / ".cache" / "vltrim"
STATE: dict[str, Any] = {}  # set in the parent before the workers fork: model, datasets, task, args


def arguments(description: str, **defaults: Any) -> argparse.ArgumentParser:
    """The options every harness benchmark shares; ``defaults`` override per benchmark."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--methods", nargs="*", default=["upop", "l1", "taylor", "random"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='method settings to compare, e.g. cosine-lr=\'{"schedule": "cosine"}\' (default: the method\'s defaults); '
        "METHOD:NAME=JSON adds a variant of that method alone beside its defaults",
    )
    ap.add_argument("--search-steps", type=int, default=100)
    ap.add_argument("--total-steps", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tag", default="", help="names the results files and the cache folder")
    ap.add_argument(
        "--peer",
        nargs="*",
        default=[],
        metavar="CONFIG",
        help=f"Torch-Pruning rows (benchmarks/peer.py; pip install -e '.[peer]'): any of {', '.join(PEER_NAMES)}, "
        "each pruned to the same share of prunable params and retrained like every method",
    )
    ap.add_argument(
        "--latency",
        action="store_true",
        help="after the runs: every row's plan (seed 0) timed in one interleaved "
        "run at batch 1 and the harness batch size, 2 threads, alone on the machine",
    )
    ap.add_argument(
        "--from-results",
        nargs="*",
        metavar="RESULTS_JSON[:METHOD,...]",
        help="first fill the run cache from committed results files run with the same settings (none named: "
        "benchmarks/results/<stem>.json; a run in two files: the first named wins, a variant of no settings counts "
        "as the method's default; ':upop,mope' after a file takes only those methods' runs), so a report, --latency or a "
        "new method beside old rows needs no rerun",
    )
    ap.add_argument(
        "--depth",
        action="store_true",
        help="mope only: width-only vs width+depth (depth_share 0.5) at the "
        "same params, retrained, plus the plans' params, MACs and latency (results tagged 'depth')",
    )
    ap.set_defaults(**defaults)
    return ap


def parse_variants(specs: list[str]) -> list[tuple[str | None, str, dict]]:
    """--variant NAME=JSON (every method) or METHOD:NAME=JSON (that method only)."""
    out = []
    for spec in specs:
        name, _, value = spec.partition("=")
        method, _, name = name.rpartition(":")
        out.append((method or None, name, json.loads(value)))
    return out


def variants_of(variants: list[tuple[str | None, str, dict]], method: str) -> dict[str, dict]:
    """A method's runs: the variants given for every method (else its defaults), plus those given for it alone."""
    shared = {n: s for m, n, s in variants if m is None} or {"default": {}}
    return {**shared, **{n: s for m, n, s in variants if m == method}}


NOT_IN_KEY = (
    "methods",
    "targets",
    "seeds",
    "variant",
    "jobs",
    "tag",
    "depth",
    "calibration",
    "peer",
    "latency",
    "from_results",
)


def settings_key(a) -> str:
    """A short hash of every option that changes a run's result, so cached runs of other settings are not reused."""
    import hashlib

    shared = {k: v for k, v in vars(a).items() if k not in NOT_IN_KEY}
    return hashlib.sha1(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:10]


def restore_cache(path: Path, a, only: list[str] | None = None) -> None:
    """Write the runs saved in a results file (of the methods ``only``, None: all) back into the run cache, if they
    were run with these settings."""
    if not path.exists():
        raise SystemExit(f"--from-results: {path} does not exist")
    saved = json.loads(path.read_text())
    old = argparse.Namespace(**{**vars(a), **saved["args"]})
    if settings_key(old) != settings_key(a):
        differ = sorted(k for k, v in vars(a).items() if k not in NOT_IN_KEY and saved["args"].get(k, v) != v)
        raise SystemExit(
            f"--from-results: {path} was run with other settings ({', '.join(differ) or 'options added since'})"
        )
    restored = 0
    wanted = {(m, t, seed) for m in a.methods for t in a.targets for seed in a.seeds}
    for r in saved["rows"]:
        if not r.get("settings") and r["method"] != "peer":
            r = {**r, "variant": "default"}  # a variant of no settings (e.g. a seeded rerun) is the method's default
        out = STATE["cache"] / f"{job_key(r)}.json"
        if (
            (r["method"], r["target"], r["seed"]) not in wanted
            and r["method"] != "peer"
            or (only and r["method"] not in only)
        ):
            continue
        restored += 1
        if not out.exists():
            out.write_text(json.dumps(r))
    print(f"--from-results: {restored} runs from {path}", flush=True)


def job_key(j: dict) -> str:
    return f"{j['method']}-{j['variant']}-t{j['target']}-s{j['seed']}"


def run_jobs(run: Callable[[dict], dict], jobs: list[dict], processes: int) -> list[dict]:
    """``run`` of every job, in ``processes`` forked workers (they inherit STATE) or in this process."""
    if processes <= 1:
        return [run(j) for j in jobs]
    import multiprocessing as mp

    with mp.get_context("fork").Pool(processes) as pool:
        return pool.map(run, jobs, chunksize=1)


def run_job(j: dict) -> dict:
    """One method, variant, target and seed through vltrim.compress (cached as JSON)."""
    import torch

    from vltrim.methods import get_method

    torch.set_num_threads(1)
    out = STATE["cache"] / f"{job_key(j)}.json"
    if out.exists():
        return json.loads(out.read_text())
    a = STATE["args"]
    options, settings = _split_settings(j["settings"] or {})
    t0 = time.time()
    if CHAIN in j["method"]:
        r = {**j, **_chain_row(j, a, options, settings), "seconds": round(time.time() - t0)}
        out.write_text(json.dumps(r))
        print(f"{job_key(j)}: {r['curve'][-1]} ({r['seconds']} s)", flush=True)
        return r
    search = a.search_steps if get_method(j["method"]).descriptor.trains else 0
    try:
        res = _compress(j, a, search, options, settings)
    except RuntimeError as e:  # the peer cannot reach this target (e.g. its global head-dim ranking at 4x)
        if j["method"] != "peer" or "cannot remove" not in str(e):
            raise
        r = {**j, "unreachable": str(e), "curve": [], "teacher": STATE["teacher"]}
        out.write_text(json.dumps(r))
        print(f"{job_key(j)}: not reachable: {e}", flush=True)
        return r
    r = {
        **j,
        "curve": res.report["curve"],
        "teacher": STATE["teacher"],
        "achieved": res.plan.achieved,
        "widths": {n: len(k) for n, k in res.plan.keep.items()},
        "sizes": res.plan.sizes,
        "seconds": round(time.time() - t0),
        "search_seconds": res.report.get("search_seconds"),
        "plan": res.plan.to_dict(),
        "split": res.report.get("modality_split"),
        "search_end": (res.report.get("search_log") or [None])[-1],
    }
    out.write_text(json.dumps(r))
    print(f"{job_key(j)}: {r['curve'][-1]} ({r['seconds']} s)", flush=True)
    return r


CHAIN = ">"  # a job method "distill>modal-adaptive": EfficientVLM's pipeline, see _chain_row


def chain_stages(model, method: str, target: float, total_steps: int, settings: dict) -> list[tuple[str, dict]]:
    """The stages of ``distill>METHOD`` at ``target``: the distilled student keeps the layers nearest to removing half
    the target, then METHOD (with ``settings``) removes the rest, so the chain ends at the same share of the original's
    prunable params as every other row. The total steps split in three: distillation (the student's retraining),
    METHOD's search, its retraining."""
    import vltrim
    from vltrim.methods import get_method
    from vltrim.structure.select import prunable_cost

    first, second = method.split(CHAIN)
    adapter = vltrim.get_adapter(model)
    student = vltrim.apply_plan(model, get_method(first).search(model, target / 2))
    left = prunable_cost(adapter.groups(student)) / prunable_cost(adapter.groups(model))
    third = total_steps // 3
    return [
        (first, {"target": target / 2, "retrain_steps": third}),
        (
            second,
            {
                "target": 1 - (1 - target) / left,
                "search_steps": third,
                "retrain_steps": total_steps - 2 * third,
                **settings,
            },
        ),
    ]


def chain_achieved(model, small) -> dict:
    """What a chain removed from ``model``: shares of its prunable params and MACs, and the model params / MACs."""
    import torch

    import vltrim
    from vltrim.measure import count_macs
    from vltrim.structure.select import prunable_cost

    adapter = vltrim.get_adapter(model)
    inputs = adapter.reference_inputs(model, 1)
    with torch.no_grad():
        macs = count_macs(model, inputs), count_macs(small, inputs)
    return {
        **{
            f"{m}_removed": 1 - prunable_cost(adapter.groups(small), m) / prunable_cost(adapter.groups(model), m)
            for m in ("params", "macs")
        },
        "model_params_after": vltrim.count_params(small),
        "model_macs_before": macs[0],
        "model_macs_after": macs[1],
    }


def _chain_row(j: dict, a, options: dict, settings: dict) -> dict:
    """A ``distill>METHOD`` row (`chain_stages`): its curve counts every step of the chain; the row records every
    plan and what the chain removed."""
    import vltrim

    stages = chain_stages(STATE["model"], j["method"], j["target"], a.total_steps, settings)
    res = _compress({**j, "method": stages}, a, stages[1][1]["search_steps"], options, {})
    curve, done = [], 0
    for i, row in enumerate(res.report["stages"], 1):  # retrain_step: the last stage's (equal-retraining tables)
        last = i == len(stages)
        curve += [
            {
                **p,
                "stage": i,
                "total_steps": done + p["total_steps"],
                "retrain_step": p["retrain_step"] if last else None,
            }
            for p in row["curve"]
        ]
        done += row["search_steps"] + row["retrain_steps"]
    return {
        "curve": curve,
        "teacher": STATE["teacher"],
        "achieved": chain_achieved(STATE["model"], res.model),
        "stage_targets": [st[1]["target"] for st in stages],
        "search_seconds": sum(row["search_seconds"] or 0 for row in res.report["stages"]),
        "plan": None,
        "plans": [p.to_dict() for p in vltrim.plans_of(res.model)],
        "split": res.report["modality_split"],
        "search_end": (res.report["stages"][-1].get("search_log") or [None])[-1],
    }


def method_notes(methods: list[str], search_steps: int, total_steps: int) -> str:
    """How the rows that a benchmark's own description may not name spend the total steps."""
    notes = []
    if "modal-adaptive" in methods:
        notes.append(
            f"modal-adaptive learns its gates and multipliers for {search_steps} of the steps (task loss, its "
            "distillation and the Lagrangian), then retrains"
        )
    third = total_steps // 3
    notes += [
        f"{m.replace(CHAIN, ' > ')} distils the layer-dropped student (each tower keeps the layers nearest to removing "
        f"half the target) {third} steps, then {m.split(CHAIN)[1]} searches {third} steps on it for the rest of the "
        f"cut and retrains {total_steps - 2 * third}, every stage distilling from the original"
        for m in methods
        if CHAIN in m
    ]
    return "".join(f" {n[0].upper()}{n[1:]}." for n in notes)


def _compress(j: dict, a, search: int, options: dict, settings: dict):
    import vltrim

    given = dict(
        task=STATE["task"],
        train_data=STATE["train"],
        eval_data=STATE["eval"],
        search_steps=search,
        retrain_steps=a.total_steps - search,
        lr=a.lr,
        retrain_lr=a.lr,
        batch_size=a.batch_size,
        retrain_schedule="constant",
        eval_every=a.eval_every,
        latency_batch=0,
        progress=False,
        seed=j["seed"],
        method_settings=settings or None,
        evaluate_before=False,
    )
    return vltrim.compress(STATE["model"], j["method"], j["target"], **{**given, **options})  # a variant may override


def _split_settings(settings: dict) -> tuple[dict, dict]:
    """A variant's settings: those that are compress options (e.g. kd_hidden, kd_embed) and the method's own."""
    import inspect

    import vltrim

    options = set(inspect.signature(vltrim.compress).parameters)
    return {k: v for k, v in settings.items() if k in options}, {k: v for k, v in settings.items() if k not in options}


def at(r: dict, total: int, key: str) -> float | None:
    pts = [p[key] for p in r["curve"] if p["total_steps"] == total]
    return pts[0] if pts else None


def mean_sd(vals: list[float]) -> str:
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def label(r: dict) -> str:
    return r["method"] if r["variant"] == "default" else f"{r['method']} [{r['variant']}]"


def label_order(labels: set[str], methods: list[str]) -> list[str]:
    """Rows in the order of --methods, then the peer's rows."""
    order = {m: i for i, m in enumerate(methods)}
    return sorted(labels, key=lambda s: (order.get(s.split(" ")[0], 99), s))


def cost_table(rows: list[dict], labels: list[str], target: float) -> str:
    """What each row's plan removes at ``target``: prunable params and MACs removed, whole-model params and MACs
    (mean over seeds: plans of other seeds differ by at most one alignment step), or why the peer could not reach it."""
    from vltrim.report import markdown_table

    table = []
    for name in labels:
        rs = [r for r in rows if label(r) == name and r["target"] == target]
        ok = [r for r in rs if "achieved" in r]
        if not ok:
            import re

            most = re.search(r"closest ([0-9.]+)", rs[0].get("unreachable", "")) if rs else None
            table.append(
                [name, "not reachable" + (f" (at most {float(most.group(1)):.1%})" if most else ""), "-", "-", "-"]
            )
            continue
        ach = [r["achieved"] for r in ok]
        mean = lambda k: statistics.mean(x[k] for x in ach)  # noqa: E731, B023
        table.append(
            [
                name,
                f"{mean('params_removed'):.1%}",
                f"{mean('macs_removed'):.1%}",
                f"{mean('model_params_after'):,.0f}",
                f"{mean('model_macs_after') / ach[0]['model_macs_before']:.3f}",
            ]
        )
    return markdown_table(
        ["row", "prunable params removed", "prunable MACs removed", "model params", "MACs (x original)"], table
    )


def summarise(rows: list[dict], a, metrics: list[tuple[str, str]]) -> tuple[str, dict]:
    """Markdown tables, one per target and metric: mean ± sd over seeds at each total step count, and at
    equal retraining steps (the retraining upop gets after its search)."""
    from vltrim.report import markdown_table

    labels = label_order({label(r) for r in rows}, a.methods)
    totals = sorted({p["total_steps"] for r in rows for p in r["curve"]})
    retrain = a.total_steps - a.search_steps
    summary, parts = {}, []
    for target in a.targets:
        for key, title in metrics:
            header = ["method"] + [f"{t} total steps" for t in totals] + [f"after {retrain} retrain steps"]
            table = []
            for name in labels:
                rs = [r for r in rows if label(r) == name and r["target"] == target]
                per_total = {t: [v for r in rs if (v := at(r, t, key)) is not None] for t in totals}
                equal_retrain = [p[key] for r in rs for p in r["curve"] if p["retrain_step"] == retrain]
                if rs and all("unreachable" in r for r in rs):
                    table.append([name, "not reachable (see below)"] + [""] * len(totals))
                    continue
                table.append([name] + [mean_sd(per_total[t]) for t in totals] + [mean_sd(equal_retrain)])
                summary[f"{target}|{name}|{key}"] = {"per_total": per_total, "equal_retrain": equal_retrain}
            teacher = rows[0]["teacher"][key]
            parts.append(
                f"**{1 / (1 - target):.0f}x fewer prunable params ({target:.0%} removed), {title}** "
                f"(teacher {teacher:.3f}):\n\n{markdown_table(header, table)}"
            )
        parts.append(
            f"**What the plans at {target:.0%} remove** (mean over seeds; MACs at the adapter's reference input):\n\n"
            + cost_table(rows, labels, target)
        )
        if any(r.get("split") for r in rows):
            parts.append(
                f"**Where the plans at {target:.0%} cut** (share of each modality's prunable params removed, attention "
                "and FFN in brackets; mean over seeds):\n\n" + split_table(rows, labels, target)
            )
        if any(r.get("search_end") and r["target"] == target for r in rows):
            parts.append(
                f"**Where the gate searches at {target:.0%} ended** (last search step, mean over seeds; the plan then "
                "keeps units by P(gate open) to the exact target):\n\n" + search_table(rows, labels, target)
            )
    parts.append(time_table(rows, labels, a))
    return "\n\n".join(parts), summary


def time_table(rows: list[dict], labels: list[str], a) -> str:
    """Wall-clock per run (1 thread) and the part spent deciding the plan (search, scoring or calibration)."""
    from vltrim.report import markdown_table

    table = []
    for name in labels:
        rs = [r for r in rows if label(r) == name and "seconds" in r]
        if not rs:
            continue
        search = [r["search_seconds"] for r in rs if r.get("search_seconds") is not None]
        table.append(
            [
                name,
                f"{statistics.mean(r['seconds'] for r in rs):.0f}",
                f"{statistics.mean(search):.0f}" if search else "-",
            ]
        )
    return (
        "**Wall-clock per run** (1 thread, mean over targets and seeds; '-': run before this was recorded):\n\n"
        + markdown_table(["method", "s per run", "of which search / scoring s"], table)
    )


def plot(rows: list[dict], a, key: str, ylabel: str, title: str, path: Path) -> None:
    """Metric vs total training steps, one panel per target, mean and sd over seeds per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vltrim.report import readable_axes

    fig, axes = plt.subplots(1, len(a.targets), figsize=(5.5 * len(a.targets), 4), squeeze=False)
    for ax, target in zip(axes[0], a.targets):
        for name in sorted({label(r) for r in rows}):
            rs = [r for r in rows if label(r) == name and r["target"] == target]
            totals = sorted({p["total_steps"] for r in rs for p in r["curve"]})
            ys = [[v for r in rs if (v := at(r, t, key)) is not None] for t in totals]
            mean = [statistics.mean(y) for y in ys]
            sd = [statistics.stdev(y) if len(y) > 1 else 0.0 for y in ys]
            ax.errorbar(totals, mean, yerr=sd, marker="o", capsize=3, label=name)
        ax.axhline(rows[0]["teacher"][key], color="grey", ls="--", label="teacher")
        ax.set_title(f"{title}: {target:.0%} of prunable params removed", fontsize=9)
        readable_axes(ax)
        ax.set_xlabel("total training steps (search + retrain)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(
    a,
    stem: str,
    build: Callable[[Any], tuple[Any, Any, Any]],
    task: str,
    metrics: list[tuple[str, str]],
    describe: Callable[[Any], str],
) -> dict:
    """Build (model, train, eval), run every job, write results/<stem>.{md,json,png}; returns the JSON."""
    import torch

    if a.total_steps < a.search_steps:
        raise SystemExit(f"--total-steps ({a.total_steps}) must be >= --search-steps ({a.search_steps})")
    variants = parse_variants(a.variant)
    torch.set_num_threads(1)
    stem = stem + (f"_{a.tag}" if a.tag else "")
    STATE.update(cache=CACHE / "harness" / f"{stem}-{settings_key(a)}", args=a, task=task)
    STATE["cache"].mkdir(parents=True, exist_ok=True)
    if a.from_results is not None:
        for spec in a.from_results or [str(RESULTS / f"{stem}.json")]:
            path, _, only = spec.partition(":")
            restore_cache(Path(path), a, only.split(",") if only else None)
    jobs = [
        {"method": m, "variant": v, "settings": s, "target": t, "seed": seed}
        for t in a.targets
        for seed in a.seeds
        for m in a.methods
        for v, s in variants_of(variants, m).items()
    ]
    if a.peer:
        import peer  # registers the method 'peer' (Torch-Pruning) in this process and the forked workers

        unknown = sorted(set(a.peer) - set(peer.PEER))
        if unknown:
            raise SystemExit(f"--peer: unknown configuration(s) {unknown}; choose from {', '.join(peer.PEER)}")
        jobs += [
            {"method": "peer", "variant": name, "settings": peer.PEER[name], "target": t, "seed": seed}
            for t in a.targets
            for seed in a.seeds
            for name in a.peer
        ]
    if not all((STATE["cache"] / f"{job_key(j)}.json").exists() for j in jobs):  # all cached: only the report
        from vltrim.tasks import get_task

        STATE["model"], STATE["train"], STATE["eval"] = build(a)
        STATE["teacher"] = get_task(task).evaluate(STATE["model"], STATE["eval"])  # once, not in every run
    jobs.sort(key=lambda j: j["method"] != "upop")  # the longest first
    t0 = time.time()
    rows = run_jobs(run_job, jobs, a.jobs)
    fill_splits(rows, a, build)
    tables, summary = summarise(rows, a, metrics)
    RESULTS.mkdir(exist_ok=True)
    plot(
        [r for r in rows if r["curve"]],
        a,
        metrics[0][0],
        metrics[0][1],
        describe(a).split(":")[0],
        RESULTS / f"{stem}.png",
    )
    widths_plot(rows, a, RESULTS / f"{stem}_widths.png")
    speed = None
    if a.latency:
        latency_md, speed = latency_table(rows, a, build)
        tables += "\n\n" + latency_md
    out = {
        "args": vars(a),
        "rows": rows,
        "summary": summary,
        "machine": machine(),
        "wall_s": round(time.time() - t0),
        "latency": speed,
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    md = (
        f"{describe(a)}{method_notes(a.methods, a.search_steps, a.total_steps)} Mean ± sd over seeds {', '.join(map(str, a.seeds))} (seed: search, calibration and batch order). "
        f"Plot: benchmarks/results/{stem}.png.\n\n{tables}\n\nMeasured on: {machine_line()}, {a.jobs} processes of 1 thread.\n"
    )
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)
    return out


def plans(r: dict) -> list[dict]:
    """A row's plans in the order they apply to the original (a chain row has several)."""
    return r.get("plans") or ([r["plan"]] if r.get("plan") else [])


def fill_splits(rows: list[dict], a, build: Callable[[Any], tuple[Any, Any, Any]]) -> None:
    """``split`` (the report's modality_split) of rows cached before it was recorded, from their plans."""
    import vltrim
    from vltrim.run.runner import split_of
    from vltrim.structure.plan import Plan

    missing = [r for r in rows if plans(r) and not r.get("split")]
    if not missing:
        return
    model = STATE.get("model") or build(a)[0]
    STATE["model"] = model
    for r in missing:
        ps, small = [Plan.from_dict(p) for p in plans(r)], model
        for p in ps:
            small = vltrim.apply_plan(small, p)
        r["split"] = split_of(model, small, ps)


def split_table(rows: list[dict], labels: list[str], target: float) -> str:
    """Share of each modality's prunable params each row removed at ``target`` (attention / FFN in brackets),
    mean over seeds: the split a global ranking or learned gates chose."""
    from vltrim.report import markdown_table

    ok = [r for r in rows if r["target"] == target and r.get("split")]
    modalities = sorted({m for r in ok for m in r["split"]["params"]})
    table = []
    for name in labels:
        rs = [r["split"]["params"] for r in ok if label(r) == name]
        if not rs:
            continue
        cells = []
        for m in modalities:
            mean = lambda k: statistics.mean(s[m].get(k, 0.0) for s in rs)  # noqa: E731, B023
            cells.append(f"{mean('removed'):.0%} (attn {mean('attention'):.0%}, FFN {mean('ffn'):.0%})")
        table.append([name] + cells)
    return markdown_table(["row"] + [f"{m} params removed" for m in modalities], table)


def search_table(rows: list[dict], labels: list[str], target: float) -> str:
    """Where the gate searches ended (mean over seeds): the expected share of the prunable cost their gates remove
    against the target they were driven to, and the multipliers."""
    from vltrim.report import markdown_table

    table = []
    for name in labels:
        ends = [r["search_end"] for r in rows if label(r) == name and r["target"] == target and r.get("search_end")]
        if ends:
            mean = lambda k: statistics.mean(e[k] for e in ends)  # noqa: E731, B023
            table.append(
                [name, f"{mean('target_now'):.3f}", f"{mean('expected_removed'):.3f}"]
                + [f"{mean(k):.3f}" for k in ("lambda_1", "lambda_2")]
            )
    return markdown_table(["row", "target (its stage's)", "expected removed", "lambda_1", "lambda_2"], table)


def widths_plot(rows: list[dict], a, path: Path) -> None:
    """Kept share of each layer's attention (head dims or heads) and FFN neurons, per row (seed 0 plan), per target:
    where each ranking puts its cut."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("plan") and r["seed"] == min(a.seeds)]
    if not rows:
        return
    layers = sorted(
        {n.rsplit(".", 2)[0] for r in rows for n in r["plan"]["groups"]},
        key=lambda n: (n.split(".")[0], int(n.split(".")[2])),
    )
    fig, axes = plt.subplots(len(a.targets), 2, figsize=(11, 3.2 * len(a.targets)), squeeze=False)
    for row_axes, target in zip(axes, a.targets):
        for ax, part in zip(row_axes, ("attn", "mlp")):
            for r in [r for r in rows if r["target"] == target]:
                groups = r["plan"]["groups"]
                kept = []
                for layer in layers:
                    g = next((g for n, g in groups.items() if n.startswith(f"{layer}.{part}.")), None)
                    kept.append(len(g["keep"]) / g["size"] if g else 1.0)
                ax.plot(range(len(layers)), kept, marker="o", label=label(r))
            ax.set_xticks(range(len(layers)), [n.replace(".layers.", " ") for n in layers], rotation=45, fontsize=7)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("kept share")
            ax.set_title(
                f"{target:.0%} removed: {'attention (head dims or heads)' if part == 'attn' else 'FFN neurons'}",
                fontsize=9,
            )
            ax.grid(alpha=0.3)
        row_axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def latency_table(rows: list[dict], a, build: Callable[[Any], tuple[Any, Any, Any]]) -> tuple[str, dict]:
    """Every row's seed-0 plan applied to the original and timed in one interleaved run (2 threads; batch 1 and the
    harness batch at the adapter's reference input length), with params and MACs: ratios, not absolute times, compare.
    Returns the table and, per plan name, its params, MACs ratio and speedup per batch size."""
    import torch

    import vltrim
    from vltrim.measure import _runner, _time_rounds, count_macs
    from vltrim.report import markdown_table
    from vltrim.structure.plan import Plan

    model = STATE.get("model") or build(a)[0]
    torch.set_num_threads(2)
    models = {"original": model}
    for target in a.targets:
        for name in label_order({label(r) for r in rows}, a.methods):
            r = next(
                (
                    r
                    for r in rows
                    if label(r) == name and r["target"] == target and plans(r) and r["seed"] == min(a.seeds)
                ),
                None,
            )
            if r is not None:
                small = model
                for p in plans(r):
                    small = vltrim.apply_plan(small, Plan.from_dict(p))
                models[f"{name}, {target:.0%}"] = small
    adapter = vltrim.get_adapter(model)
    speed = {}
    for batch in (1, a.batch_size):
        inputs = adapter.reference_inputs(model, batch)
        times = _time_rounds([_runner(m, inputs) for m in models.values()], rounds=21, warmup=3, min_round_s=0.2)
        speed[batch] = [statistics.median(x / y for x, y in zip(times[0], t)) for t in times]
    inputs = adapter.reference_inputs(model, 1)
    data = {
        n: {
            "params": vltrim.count_params(m),
            "macs": count_macs(m, inputs) / count_macs(model, inputs),
            "speedup": {str(b): speed[b][i] for b in speed},
        }
        for i, (n, m) in enumerate(models.items())
    }
    table = [
        [n, f"{d['params']:,}", f"{d['macs']:.3f}"] + [f"{v:.2f}x" for v in d["speedup"].values()]
        for n, d in data.items()
    ]
    return (
        f"**Measured speed of each row's plan** (seed {min(a.seeds)}; speedup = median of per-round paired ratios to the "
        f"original, 21 interleaved rounds, 2 threads, alone on the machine; {machine_line()}):\n\n"
        + markdown_table(["plan", "params", "MACs (x original)"] + [f"speedup, batch {b}" for b in speed], table)
    ), data


DEPTH_SHARES = {"width": 0.0, "width+depth": 0.5}  # MoPE plans at the same params: by width alone, and half by layers


def run_or_depth(
    a,
    stem: str,
    build: Callable[[Any], tuple[Any, Any, Any]],
    task: str,
    metrics: list[tuple[str, str]],
    describe: Callable[[Any], str],
) -> None:
    """`run`; with ``a.depth``, mope only in its width-only and width+depth variants (tag 'depth'), then the plans'
    params, MACs and latency appended to the results."""
    if not a.depth:
        run(a, stem, build, task, metrics, describe)
        return
    a.methods, a.tag = ["mope"], a.tag or "depth"
    a.variant = [f'{n}={{"depth_share": {ds}}}' for n, ds in DEPTH_SHARES.items()]
    run(a, stem, build, task, metrics, describe)
    md = RESULTS / f"{stem}_{a.tag}.md"
    md.write_text(md.read_text() + "\n" + depth_latency(a, build, task))
    print(md.read_text())


def depth_latency(a, build: Callable[[Any], tuple[Any, Any, Any]], task: str) -> str:
    """Params, MACs and CPU latency of MoPE width-only vs width+depth plans at each target, one interleaved run."""
    import torch

    import vltrim
    from vltrim.measure import _latency_stats, _runner, _time_rounds, count_macs
    from vltrim.methods import get_method

    model, train, _ = build(a)
    torch.set_num_threads(2)
    models = {"original": model}
    for t in a.targets:
        for name, ds in DEPTH_SHARES.items():
            plan = get_method("mope").search(model, t, data=train, task=task, depth_share=ds)
            models[f"{1 / (1 - t):.0f}x, {name}"] = vltrim.apply_plan(model, plan)
    inputs = vltrim.get_adapter(model).reference_inputs(model, 8)
    times = _time_rounds([_runner(m, inputs) for m in models.values()], rounds=31, warmup=3, min_round_s=0.2)
    rows = [
        "| plan | layers per tower | prunable params removed | params | MACs | latency ms | speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, m), t in zip(models.items(), times):
        layers = "+".join(str(len(tw.layers)) for tw in vltrim.get_adapter(m).towers(m))
        removed = "-" if name == "original" else f"{vltrim.plans_of(m)[-1].achieved['params_removed']:.1%}"
        speed = statistics.median(x / y for x, y in zip(times[0], t))
        rows.append(
            f"| {name} | {layers} | {removed} | {vltrim.count_params(m):,} | {count_macs(m, inputs):,} | "
            f"{_latency_stats(t)['latency_ms']:.2f} | {speed:.2f}x |"
        )
    return (
        "**Width-only vs width+depth MoPE plans** (timed without retraining: weights do not change speed; batch 8 of the "
        f"reference inputs, 2 threads, median of 31 interleaved rounds; {machine_line()}):\n\n" + "\n".join(rows) + "\n"
    )
