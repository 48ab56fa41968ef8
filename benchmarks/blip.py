"""BLIP on its three tasks: upop vs taylor vs mope vs l1 vs random at 2x and 4x fewer prunable params.

    python benchmarks/train_blip_teachers.py     # once: the three teachers (~/.cache/vltrim/blip_teachers/)
    python benchmarks/blip.py                    # writes benchmarks/results/blip_<task>.md, blip.json, blip.png

Each teacher (benchmarks/train_blip_teachers.py: BlipForImageTextRetrieval, BlipForQuestionAnswering,
BlipForConditionalGeneration, trained from scratch on the built-in scenes) is pruned by every method to the same share
of prunable params through `vltrim.compress` with the task's loss + its default distillation from the teacher, and
retrained for the rest of one total budget of training steps per task: upop's search steps count as training, the
others retrain for the whole budget (mope's scoring and taylor's calibration are not training). Seeds 0 1 2 (search,
calibration and batch order); the task metric on held-out test items after retraining;
the plans' params and MACs; each method's seed-0 plan timed against the teacher in one interleaved CPU run (forward,
and for vqa and captioning `generate` with a fixed number of new tokens); and the share of each modality's
prunable params every method removed (`report["modality_split"]`). Runs go in ``--jobs`` processes of one torch
thread each; each run's result is cached as JSON (~/.cache/vltrim/harness/blip-<task>-<settings>/), so a killed benchmark
continues where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_blip_teachers as teachers  # noqa: E402
from harness import (  # noqa: E402
    CACHE,
    CHAIN,
    RESULTS,
    chain_achieved,
    chain_stages,
    mean_sd,
    method_notes,
    plans,
    run_jobs,
)
from machine import machine, machine_line  # noqa: E402

TASKS = list(teachers.CLASSES)
METRICS = {  # headline metric and a second one, per task
    "itm-retrieval": ("mean_R@1", "itc_mean_R@1"),
    "vqa": ("accuracy", None),
    "captioning": ("CIDEr", "BLEU-4"),
}
METRIC_TEXT = {
    "mean_R@1": "mean R@1 after ITM re-ranking",
    "itc_mean_R@1": "mean R@1 of ITC alone",
    "accuracy": "exact-match accuracy of greedy answers",
    "CIDEr": "CIDEr of greedy captions",
    "BLEU-4": "BLEU-4",
}
GENERATE_TOKENS = {"vqa": 3, "captioning": 16}  # new tokens generated per timed call (min = max: same work each)
PAPER = (
    "the issue's reading of UPop (Shi et al., ICML 2023) for BLIP on NLVR2: "
    '"cross-attention and language FFN cut first; vision attention mostly kept"'
)
PARTS = {
    "itm-retrieval": "vision, text and fusion (the text encoder's cross-attention to the image)",
    "vqa": "vision, text (the question encoder), fusion (its cross-attention to the image) and decoder (the answer "
    "decoder, cross-attending to the question)",
    "captioning": "vision, fusion (the decoder's cross-attention to the image) and decoder",
}
STATE: dict[str, Any] = {}  # set in the parent before the workers fork: models, datasets, teachers' metrics, args


OWN = {  # the options of one task only: (total steps, search steps, mope calibration items)
    "itm-retrieval": ("itm_total_steps", "itm_search_steps", "itm_calib_size"),
    "vqa": ("vqa_total_steps", "vqa_search_steps", "vqa_calib_size"),
    "captioning": ("total_steps", "search_steps", "calib_size"),
}


def settings_key(a, task: str) -> str:
    """A short hash of every option that changes a run of ``task`` (the other tasks' own options left out), so
    cached runs of other settings are not reused."""
    other = [k for t, keys in OWN.items() if t != task for k in keys]
    skip = (
        "methods",
        "targets",
        "seeds",
        "jobs",
        "tasks",
        "latency",
        "rounds",
        "timing_threads",
        "tag",
        "cached_only",
        *other,
    )
    shared = {k: v for k, v in vars(a).items() if k not in skip}
    return hashlib.sha1(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:10]


def cache_file(j: dict) -> Path:
    return CACHE / "harness" / f"blip-{j['task']}-{settings_key(STATE['args'], j['task'])}" / f"{job_key(j)}.json"


def job_key(j: dict) -> str:
    return f"{j['task']}-{j['method']}-t{j['target']}-s{j['seed']}"


def steps_of(a, task: str) -> tuple[int, int]:
    """(total training steps, upop's search steps) of a task."""
    total, search, _ = OWN[task]
    return getattr(a, total), getattr(a, search)


def method_settings(a, task: str, method: str) -> dict:
    return {"calib_size": getattr(a, OWN[task][2])} if method == "mope" else {}


def run_job(j: dict) -> dict:
    """One task, method, target and seed through vltrim.compress (cached as JSON)."""
    import vltrim
    from vltrim.methods import get_method

    torch.set_num_threads(1)
    out = cache_file(j)
    if out.exists():
        return json.loads(out.read_text())
    a, task = STATE["args"], j["task"]
    total, search = steps_of(a, task)
    method, settings = j["method"], method_settings(a, task, j["method"]) or None
    t0 = time.time()
    if CHAIN in method:  # distill>modal-adaptive: stages and steps as benchmarks/harness.py runs them
        method = chain_stages(STATE["model"][task], method, j["target"], total, settings or {})
        search, settings = method[1][1]["search_steps"], None
    elif not get_method(method).descriptor.trains:
        search = 0
    res = vltrim.compress(
        STATE["model"][task],
        method,
        j["target"],
        task=task,
        train_data=STATE["train"][task],
        eval_data=None,  # evaluated once below, after retraining (no evaluation right after pruning: time)
        search_steps=search,
        retrain_steps=total - search,
        lr=a.lr,
        retrain_lr=a.lr,
        batch_size=a.batch_size,
        retrain_schedule="constant",
        latency_batch=0,
        progress=False,
        seed=j["seed"],
        method_settings=settings,
        evaluate_before=False,
    )
    chain = res.report.get("stages")
    from vltrim.tasks import get_task

    r = {
        **j,
        "after": get_task(task).evaluate(res.model, STATE["eval"][task]),
        "achieved": chain_achieved(STATE["model"][task], res.model) if chain else res.plan.achieved,
        "modality_split": res.report["modality_split"],
        "seconds": round(time.time() - t0),
        "search_seconds": sum(s["search_seconds"] or 0 for s in chain) if chain else res.report.get("search_seconds"),
        "plan": None if chain else res.plan.to_dict(),
        **({"plans": [p.to_dict() for p in vltrim.plans_of(res.model)]} if chain else {}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r))
    key = METRICS[task][0]
    print(f"{job_key(j)}: {key} {r['after'][key]:.3f} ({r['seconds']} s)", flush=True)
    return r


# ---------------------------------------------------------------- tables


def ratio(t: float) -> str:
    return f"{1 / (1 - t):.0f}x"


def metric_table(rows: list[dict], a, task: str, teacher: dict) -> str:
    from vltrim.report import markdown_table

    key, second = METRICS[task]
    header = ["method"]
    for t in a.targets:
        header += [f"{ratio(t)}: {key}"] + ([f"{ratio(t)}: {second}"] if second else [])
    table = [
        ["teacher"]
        + sum(([f"{teacher[key]:.3f}"] + ([f"{teacher[second]:.3f}"] if second else []) for _ in a.targets), [])
    ]
    for m in a.methods:
        cells = [m]
        for t in a.targets:
            rs = [r for r in rows if r["task"] == task and r["method"] == m and r["target"] == t]
            few = f" (n={len(rs)})" if 0 < len(rs) < len(a.seeds) else ""  # a partial run: fewer seeds finished
            cells.append(mean_sd([r["after"][key] for r in rs]) + few)
            if second:
                cells.append(mean_sd([r["after"][second] for r in rs]) + few)
        table.append(cells)
    return markdown_table(header, table)


def speed_table(rows: list[dict], a, task: str, speed: dict | None) -> str:
    """Plan params and MACs (mean over seeds) and the seed-0 plan's measured speedup."""
    from vltrim.report import markdown_table

    header = ["plan", "prunable params removed", "model params", "MACs (x teacher)"]
    if speed:
        header += [f"{kind} speedup, batch {b}" for kind, b in speed["columns"]]
    table = []
    if speed:
        t = speed["models"]["teacher"]
        table.append(["teacher", "-", f"{t['params']:,}", "1.000"] + ["1.00x"] * len(speed["columns"]))
    for t in a.targets:
        for m in a.methods:
            rs = [r for r in rows if r["task"] == task and r["method"] == m and r["target"] == t]
            if not rs:
                continue
            ach = [r["achieved"] for r in rs]
            mean = lambda k: statistics.mean(x[k] for x in ach)  # noqa: E731, B023
            cells = [
                f"{m}, {ratio(t)}",
                f"{mean('params_removed'):.1%}",
                f"{mean('model_params_after'):,.0f}",
                f"{mean('model_macs_after') / ach[0]['model_macs_before']:.3f}",
            ]
            if speed:
                s = speed["models"].get(f"{m}, {ratio(t)}")
                cells += [f"{s['speedup'][c]:.2f}x" if s else "-" for c in speed["keys"]]
            table.append(cells)
    return markdown_table(header, table)


def split_table(rows: list[dict], a, task: str) -> str:
    """Share of each modality's prunable params removed (mean over seeds), and of its attention / FFN."""
    from vltrim.report import markdown_table

    mods = sorted({m for r in rows if r["task"] == task and r["modality_split"] for m in r["modality_split"]["params"]})
    order = ["vision", "text", "fusion", "decoder"]
    mods = sorted(mods, key=lambda m: order.index(m) if m in order else 99)
    table = []
    for t in a.targets:
        for m in a.methods:
            rs = [r for r in rows if r["task"] == task and r["method"] == m and r["target"] == t]
            if not rs:
                continue
            cells = [f"{m}, {ratio(t)}"]
            for mod in mods:
                parts = [r["modality_split"]["params"][mod] for r in rs]
                text = f"{statistics.mean(p['removed'] for p in parts):.0%}"
                kinds = [k for k in ("attention", "ffn") if k in parts[0]]
                if len(kinds) > 1:
                    text += (
                        " ("
                        + ", ".join(
                            f"{k.replace('attention', 'attn')} {statistics.mean(p[k] for p in parts):.0%}"
                            for k in kinds
                        )
                        + ")"
                    )
                cells.append(text)
            table.append(cells)
    return markdown_table(["plan"] + [f"{m} removed (attn, ffn)" for m in mods], table)


def time_table(rows: list[dict], a, task: str) -> str:
    from vltrim.report import markdown_table

    table = []
    for m in a.methods:
        rs = [r for r in rows if r["task"] == task and r["method"] == m]
        if rs:
            search = [r["search_seconds"] for r in rs if r.get("search_seconds") is not None]
            table.append(
                [
                    m,
                    f"{statistics.mean(r['seconds'] for r in rs):.0f}",
                    f"{statistics.mean(search):.0f}" if search else "-",
                ]
            )
    return markdown_table(["method", "s per run", "of which search / scoring / calibration s"], table)


def describe(a, task: str) -> str:
    total, search = steps_of(a, task)
    key, second = METRICS[task]
    mope = method_settings(a, task, "mope")["calib_size"]
    what = METRIC_TEXT[key] + (f" (and {METRIC_TEXT[second]})" if second else "")
    return (
        f"**BLIP {task}** ({teachers.CLASSES[task]}, the teacher of benchmarks/train_blip_teachers.py): every method "
        f"prunes {PARTS[task]} in one ranking to 2x and 4x fewer prunable params "
        f"and retrains with the task loss + its default distillation from the teacher on {a.train_size:,} training "
        f"items, batch {a.batch_size}, LR {a.lr:g} constant after warm-up, {total} total training steps; upop searches "
        f"{search} of them and retrains {total - search}, the others retrain {total}; taylor calibrates on its default "
        f"8 batches; mope scores every head, FFN neuron group (1/8 of a layer) and cross-attention head by the drop of "
        f"the task's probe on {mope} training items (itm-retrieval: re-ranked mean R@1; vqa, captioning: minus the "
        f"gold answer's / caption's mean loss), one whole-model evaluation per module (time below), and adds "
        f"hidden-state distillation. Metric: {what} on {a.eval_size} test items (scene descriptions never seen in "
        f"training).{method_notes(a.methods, search, total)} Mean ± sd over seeds {', '.join(map(str, a.seeds))}."
    )


def task_markdown(rows: list[dict], a, task: str, teacher: dict, speed: dict | None) -> str:
    parts = [describe(a, task), metric_table(rows, a, task, teacher)]
    missing = [k for k in STATE.get("missing", []) if k.startswith(f"{task}-")]
    if missing:
        parts.insert(
            1,
            f"**Partial: {len(missing)} of {len(a.methods) * len(a.targets) * len(a.seeds)} runs did not finish** "
            f"before the deadline and are left out (n = seeds finished where fewer than {len(a.seeds)}): "
            + ", ".join(m[len(task) + 1 :] for m in missing)
            + ".",
        )
    parts.append(
        "**What each plan removes and how fast it runs** (params and MACs: mean over seeds, MACs at the adapter's "
        "reference input; speedup: the seed-0 plan vs the teacher, median of per-round paired ratios, "
        + (
            f"{speed['rounds']} interleaved rounds, {a.timing_threads} torch thread(s), {speed['note']}"
            if speed
            else "not measured in this run (--latency)"
        )
        + "):\n\n"
        + speed_table(rows, a, task, speed)
    )
    parts.append(
        "**Where each method cut** (share of each modality's prunable params removed, mean over seeds; in brackets "
        f"the share of its attention and of its FFN params removed; fusion = cross-attention to the image). Compare "
        f"{PAPER}.\n\n" + split_table(rows, a, task)
    )
    parts.append("**Wall-clock per run** (1 thread, mean over targets and seeds):\n\n" + time_table(rows, a, task))
    return "\n\n".join(parts) + (
        f"\n\nMeasured on: {machine_line()}; runs in processes of 1 thread, two at a time (beside other jobs on the "
        "shared machine: the run times are indicative).\n"
    )


# ---------------------------------------------------------------- latency


def latency(rows: list[dict], a, task: str, model) -> dict:
    """The teacher and every method's seed-0 plan at each target, timed in one interleaved run (2 threads): the
    forward at batch 1 and ``--batch-size`` (the adapter's reference inputs) and, for vqa and captioning, greedy
    ``generate`` of a fixed number of new tokens on test items."""
    import vltrim
    from vltrim.measure import _runner, _time_rounds, count_macs
    from vltrim.structure.plan import Plan

    torch.set_num_threads(a.timing_threads)
    models = {"teacher": model}
    for t in a.targets:
        for m in a.methods:
            r = next(
                (r for r in rows if r["task"] == task and r["method"] == m and r["target"] == t and r["seed"] == 0),
                None,
            )
            if r is not None:
                small = model
                for p in plans(r):  # a chain row: every stage's plan
                    small = vltrim.apply_plan(small, Plan.from_dict(p))
                models[f"{m}, {ratio(t)}"] = small.eval()
    adapter = vltrim.get_adapter(model)
    columns, times = [], {}
    for b in (1, a.batch_size):
        columns.append(("forward", b))
        inputs = adapter.reference_inputs(model, b)
        times[("forward", b)] = _time_rounds([_runner(m, inputs) for m in models.values()], a.rounds, 3, 0.1)
    if task in GENERATE_TOKENS:
        data = STATE["eval"][task]
        for b in (1, a.batch_size):
            columns.append(("generate", b))
            batch = torch.utils.data.default_collate([data[i] for i in range(b)])
            times[("generate", b)] = _time_rounds(
                [_generator(m, task, batch) for m in models.values()], a.rounds, 2, 0.1
            )
    ref = adapter.reference_inputs(model, 1)
    keys = [f"{k} b{b}" for k, b in columns]
    out = {
        n: {
            "params": vltrim.count_params(m),
            "macs": count_macs(m, ref) / count_macs(model, ref),
            "speedup": {
                key: statistics.median(x / y for x, y in zip(times[c][0], times[c][i])) for key, c in zip(keys, columns)
            },
            "ms": {key: statistics.median(times[c][i]) * 1e3 for key, c in zip(keys, columns)},
        }
        for i, (n, m) in enumerate(models.items())
    }
    note = f"generate: {GENERATE_TOKENS[task]} new tokens per call, " if task in GENERATE_TOKENS else ""
    torch.set_num_threads(1)
    return {
        "models": out,
        "columns": columns,
        "keys": keys,
        "rounds": a.rounds,
        "note": note + machine_line(),
    }


def _generator(model, task: str, batch: dict):
    n = GENERATE_TOKENS[task]
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1)
    if task == "vqa":
        kw |= dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def run() -> None:
        with torch.inference_mode():
            model.generate(pixel_values=batch["pixel_values"], **kw)

    return run


# ---------------------------------------------------------------- plot and main


def plot(rows: list[dict], a, teacher: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in a.tasks if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    xs = [1 / (1 - t) for t in a.targets]
    for ax, task in zip(axes[0], tasks):
        key = METRICS[task][0]
        for i, m in enumerate(a.methods):
            ys = [
                [r["after"][key] for r in rows if r["task"] == task and r["method"] == m and r["target"] == t]
                for t in a.targets
            ]
            mean = [statistics.mean(y) if y else float("nan") for y in ys]
            sd = [statistics.stdev(y) if len(y) > 1 else 0.0 for y in ys]
            ax.errorbar([x * (1 + 0.03 * (i - 2)) for x in xs], mean, yerr=sd, marker="o", capsize=3, label=m)
        ax.axhline(teacher[task][key], color="grey", ls="--", label="teacher")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:.0f}x" for x in xs])
        ax.set_xlabel("fewer prunable params")
        ax.set_ylabel(key)
        ax.set_title(f"BLIP {task}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(a) -> None:
    from vltrim.tasks import get_task

    torch.set_num_threads(1)
    STATE.update(args=a, model={}, train={}, eval={})
    teacher, records = {}, {}
    for task in a.tasks:
        if not teachers.finished(task):
            raise SystemExit(f"no {task} teacher: run python benchmarks/train_blip_teachers.py first")
        model, records[task] = teachers.load_teacher(task)
        STATE["model"][task] = model
        STATE["train"][task], STATE["eval"][task] = teachers.datasets(task, a.train_size, a.eval_size)
        teacher[task] = (
            records[task]["metrics"]
            if a.eval_size == records[task]["test_size"]
            else get_task(task).evaluate(model, STATE["eval"][task])
        )
    jobs = [
        {"task": task, "method": m, "target": t, "seed": s}
        for task in a.tasks
        for t in a.targets
        for s in a.seeds
        for m in a.methods
    ]
    cost = {"itm-retrieval": 0, "vqa": 1, "captioning": 2}
    if a.cached_only:  # a partial report: the runs that finished
        missing = [job_key(j) for j in jobs if not cache_file(j).exists()]
        jobs = [j for j in jobs if cache_file(j).exists()]
        print(f"--cached-only: {len(jobs)} runs cached, {len(missing)} not run: {', '.join(missing)}", flush=True)
        STATE["missing"] = missing
    jobs.sort(key=lambda j: (cost[j["task"]], j["target"], j["seed"]))  # 2x first, then seed by seed
    t0 = time.time()
    rows = run_jobs(run_job, jobs, a.jobs)
    runs_s = round(time.time() - t0)
    speed = {}
    if a.latency:
        t1 = time.time()
        for task in a.tasks:
            probe = {"task": task, "method": "latency", "target": 0, "seed": 0}
            saved = cache_file(probe).with_name(
                f"latency-{'-'.join(a.methods)}-{'-'.join(map(str, a.targets))}-r{a.rounds}-t{a.timing_threads}.json"
            )
            if saved.exists():  # timed already (by an earlier invocation with these runs)
                speed[task] = json.loads(saved.read_text())
                speed[task]["columns"] = [tuple(c) for c in speed[task]["columns"]]
            else:
                speed[task] = latency(rows, a, task, STATE["model"][task])
                if all(f"{m}, {ratio(t)}" in speed[task]["models"] for m in a.methods for t in a.targets):
                    saved.write_text(json.dumps(speed[task]))
            print(
                f"latency {task}: {json.dumps({n: d['speedup'] for n, d in speed[task]['models'].items()})}", flush=True
            )
        latency_s = round(time.time() - t1)
    else:
        latency_s = 0
    RESULTS.mkdir(exist_ok=True)
    stem = "blip" + (f"_{a.tag}" if a.tag else "")
    for task in a.tasks:
        md = task_markdown(rows, a, task, teacher[task], speed.get(task))
        (RESULTS / f"{stem}_{task}.md").write_text(md)
        print(md)
    plot(rows, a, teacher, RESULTS / f"{stem}.png")
    out = {
        "args": vars(a),
        "teachers": records,
        "teacher_metrics": teacher,
        "rows": rows,
        "latency": speed,
        "machine": machine(),
        "runs_wall_s": runs_s,
        "not_run": STATE.get("missing", []),
        "latency_wall_s": latency_s,
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    print(f"runs: {runs_s} s wall, latency: {latency_s} s wall", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    ap.add_argument("--methods", nargs="+", default=["upop", "taylor", "mope", "l1", "random"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--total-steps", type=int, default=150, help="captioning: training steps of every run")
    ap.add_argument("--search-steps", type=int, default=50, help="captioning: upop's search steps")
    ap.add_argument("--vqa-total-steps", type=int, default=60, help="vqa: training steps of every run")
    ap.add_argument("--vqa-search-steps", type=int, default=20, help="vqa: upop's search steps")
    ap.add_argument("--itm-total-steps", type=int, default=60, help="itm-retrieval: training steps of every run")
    ap.add_argument("--itm-search-steps", type=int, default=24, help="itm-retrieval: upop's search steps")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--train-size", type=int, default=teachers.TRAIN_SIZE)
    ap.add_argument("--eval-size", type=int, default=300)
    ap.add_argument("--calib-size", type=int, default=128, help="mope's calibration items (captioning)")
    ap.add_argument("--vqa-calib-size", type=int, default=64, help="mope's calibration items (vqa)")
    ap.add_argument("--itm-calib-size", type=int, default=64, help="mope's calibration items (itm-retrieval)")
    ap.add_argument("--rounds", type=int, default=11, help="interleaved timing rounds")
    ap.add_argument("--timing-threads", type=int, default=1, help="torch threads of the timing run")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--tag", default="", help="names the results files")
    ap.add_argument("--cached-only", action="store_true", help="report the cached runs only (a partial benchmark)")
    main(ap.parse_args())
