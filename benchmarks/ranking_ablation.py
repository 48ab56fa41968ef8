"""Why does one ranking keep more than another? Swap one piece at a time and measure right after pruning.

    python benchmarks/ranking_ablation.py minilm --seeds 0 1 2      # MiniLM-L6 on R8 (benchmarks/real_text.py's data)
    python benchmarks/ranking_ablation.py fashion --seeds 0 1 2     # the Fashion-MNIST dual encoder
    # writes benchmarks/results/ranking_ablation_<model>.{md,json}

One calibration per seed (8 batches of 16 of the task loss the methods calibrate on: train mode, dropout from the
seed; the batches vltrim's `taylor` and the Torch-Pruning peer draw) records, per prunable unit, several importance
statistics; each is then normalised and ranked in several ways, the plan cut to 2x and 4x fewer prunable params
(align 8), applied, and the model evaluated with no retraining. Rows:

- importance: `abs` = sum over batches of |w * dL_b/dw| over every weight and bias the unit owns (vltrim's taylor);
  `acc` = |w * sum_b dL_b/dw| over the weights (Torch-Pruning's Taylor: gradients accumulated, then |w g|);
  `mask-abs` / `mask-fisher` = sum over batches of |dL_b/dm| / (dL_b/dm)^2 of a unit mask m (UPop's saliency / the
  empirical Fisher of the mask); `sample-fisher` = the same per sample (the 128 calibration items one by one);
  `l1` / `l2` = sum of |w| / w^2 (data-free magnitude).
- normalisation before the one global ranking: `z-kind` = standardised per unit kind and modality (vltrim's
  default before this benchmark), `mean-group` = divided by the mean of its group (one layer's attention or FFN;
  Torch-Pruning's `normalizer="mean"`), `mean-kind` = divided by the mean per unit kind and modality, `uniform` =
  rank inside the group only (every group loses the same share), `none`.
- ranking: `unit` = aligned chunks ranked by their mean score (cost only counts toward the budget), `per-param` =
  by score per parameter the chunk removes.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, machine_line  # noqa: E402

import vltrim  # noqa: E402
from vltrim.methods.common import plan_from_keep, prunable_groups, seeded, unit_sums  # noqa: E402
from vltrim.report import markdown_table  # noqa: E402
from vltrim.structure.groups import UnitKind  # noqa: E402
from vltrim.structure.select import Budget, _cut, normalize_scores, rank_quantiles  # noqa: E402
from vltrim.tasks import get_task  # noqa: E402
from vltrim.tasks.loss import task_loss  # noqa: E402
from vltrim.train.loop import batches  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STATS = ("abs", "acc", "mask-abs", "mask-fisher", "sample-fisher", "l1", "l2")
EXTRA = ("abs-weights-only", "abs-32-batches", "abs-eval-mode")  # --extra: the calibration's own choices
NORMS = ("z-kind", "mean-group", "mean-kind", "uniform", "none")
RANKS = ("unit", "per-param")


def build(name: str):
    """(model, train data, eval data, task, metric key) of one benchmark model."""
    if name in ("minilm", "minilm-l3"):
        import real_text

        a = argparse.Namespace(
            corpus="r8" if name == "minilm" else "20ng",
            train_size=0,
            eval_size=800,
            max_length=64,
            model="l6" if name == "minilm" else "l3",
        )
        model, train, evald = real_text.build(a)
        return model, train, evald, "sentence-embedding", "cosine_to_teacher"
    import fashion_dual_encoder as fde

    a = argparse.Namespace(limit=0, teacher_steps=300)
    model, train, evald = fde.build(a)
    return model, train, evald, "retrieval", "zero_shot_top1"


def per_channel(group, model, value) -> torch.Tensor:
    """Sum of ``value(param)`` (a tensor shaped like the param, or None) over each unit's coupled weights."""
    return unit_sums(model, group, value)


def _extra(work, groups, data, loss_fn, seed: int, num_batches: int, batch_size: int, out: dict) -> None:
    """abs over 32 batches (the 8 of the others first), and abs in eval mode (no dropout: a distillation from the model
    itself then has zero gradient, so every score is 0 and the cut falls on the first indices)."""
    for mode, n, key in (("train", 4 * num_batches, "abs-32-batches"), ("eval", num_batches, "abs-eval-mode")):
        work.train(mode == "train")
        it = batches(data, batch_size, seed)
        with seeded(seed):
            for _ in range(n):
                work.zero_grad(set_to_none=True)
                loss_fn(work, next(it)).backward()
                for g in groups:
                    out[key][g.name] += per_channel(
                        g, work, lambda p: (p * p.grad).abs() if p.grad is not None else None
                    )
    work.train()


def statistics_of(
    model,
    groups,
    data,
    loss_fn,
    seed: int,
    per_sample: bool,
    num_batches: int = 8,
    batch_size: int = 16,
    extra: bool = False,
    keep: dict | None = None,
) -> dict[str, dict]:
    """Every importance statistic per unit, from one calibration of ``num_batches`` batches (``per_sample``: also the
    per-sample Fisher; a contrastive loss of one pair is constant, so retrieval has none)."""
    from vltrim.arch import get_adapter, masks

    work = copy.deepcopy(model).float().train()
    adapter = get_adapter(work)
    params = dict(work.named_parameters())
    out = {s: {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups} for s in STATS + EXTRA}
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    items = []
    it = batches(data, batch_size, seed)
    with seeded(seed):
        for _ in range(num_batches):
            batch = next(it)
            items.append(batch)
            m = {g.name: _ones(g, keep) for g in groups}
            handles = masks.attach(adapter, work, m)
            work.zero_grad(set_to_none=True)
            loss_fn(work, batch).backward()
            handles.remove()
            for g in groups:
                out["abs"][g.name] += per_channel(g, work, lambda p: (p * p.grad).abs() if p.grad is not None else None)
                out["abs-weights-only"][g.name] += per_channel(
                    g, work, lambda p: (p * p.grad).abs() if p.grad is not None and p.dim() > 1 else None
                )
                gm = m[g.name].grad.double()
                out["mask-abs"][g.name] += gm.abs()
                out["mask-fisher"][g.name] += gm**2
            for n, p in params.items():
                if p.grad is not None:
                    acc[n] += p.grad
        for batch in items if per_sample else []:  # the same items one by one
            for i in range(len(next(iter(batch.values())))):
                one = {k: v[i : i + 1] for k, v in batch.items()}
                m = {g.name: torch.ones(g.size, requires_grad=True) for g in groups}
                handles = masks.attach(adapter, work, m)
                loss_fn(work, one).backward()
                handles.remove()
                for g in groups:
                    out["sample-fisher"][g.name] += m[g.name].grad.double() ** 2
    if extra:
        _extra(work, groups, data, loss_fn, seed, num_batches, batch_size, out)
    grads = {id(p): acc[n] for n, p in params.items()}
    for g in groups:
        out["acc"][g.name] = per_channel(g, work, lambda p: (p * grads[id(p)]).abs() if p.dim() > 1 else None)
        out["l1"][g.name] = per_channel(g, work, lambda p: p.abs())
        out["l2"][g.name] = per_channel(g, work, lambda p: p**2 if p.dim() > 1 else None)
    return out


def _ones(g, keep: dict | None) -> torch.Tensor:
    """A mask of ones (zeros on the units ``keep`` removes), with a gradient."""
    m = torch.ones(g.size)
    if keep and g.name in keep:
        m[sorted(set(range(g.size)) - set(keep[g.name]))] = 0
    return m.requires_grad_()


def iterative_plan(
    model,
    groups,
    data,
    loss_fn,
    seed: int,
    stat: str,
    norm: str,
    rank: str,
    target: float,
    steps: int,
    cap: float = 1.0,
):
    """Cut to target*k/steps for k = 1..steps, re-scoring the masked model before each cut (no training in between)."""
    keep = None
    for k in range(1, steps + 1):
        stats = statistics_of(model, groups, data, loss_fn, seed + k - 1, per_sample=False, keep=keep)
        sc = {n: v.clone() for n, v in stats[stat].items()}
        if keep:
            for g in groups:
                gone = sorted(set(range(g.size)) - set(keep.get(g.name, range(g.size))))
                sc[g.name][gone] = -1.0  # cut already: stays cut
        plan = plan_for(model, groups, sc, norm, rank, target * k / steps, stat, cap)
        keep = plan.keep
    return plan


def normalised(groups, scores: dict, norm: str) -> dict:
    if norm == "z-kind":
        return normalize_scores(groups, scores)
    if norm == "uniform":
        return rank_quantiles(groups, scores)
    if norm == "none":
        return {n: s.double() for n, s in scores.items()}
    out = {}
    for g in groups:
        same = [h for h in groups if (h.kind, h.modality) == (g.kind, g.modality)] if norm == "mean-kind" else [g]
        mean = torch.cat([scores[h.name] for h in same]).double().mean()
        out[g.name] = scores[g.name].double() / (mean if mean > 0 else 1.0)
    return out


def plan_for(model, groups, scores, norm: str, rank: str, target: float, name: str, cap: float = 1.0):
    s = normalised(groups, scores, norm)
    if rank == "per-param":
        s = {g.name: s[g.name] / g.params_per_unit for g in groups}
    keep = _cut(groups, s, Budget(target, "params", 8, "global", cap))
    return plan_from_keep(model, groups, keep, Budget(target), name, {})


def widths(plan, groups) -> str:
    """Kept attention / FFN share per layer, e.g. 'a 1.0 .75 ... | f .5 .25 ...'."""
    att = [len(plan.keep.get(g.name, range(g.size))) / g.size for g in groups if g.kind != UnitKind.NEURONS]
    ffn = [len(plan.keep.get(g.name, range(g.size))) / g.size for g in groups if g.kind == UnitKind.NEURONS]
    return "a " + " ".join(f"{x:.2f}" for x in att) + " | f " + " ".join(f"{x:.2f}" for x in ffn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=("minilm", "minilm-l3", "fashion"))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peer", action="store_true", help="also Torch-Pruning's own plans (benchmarks/peer.py)")
    ap.add_argument(
        "--extra",
        action="store_true",
        help=f"only the calibration choices ({', '.join(EXTRA)}) against abs, "
        "z-kind, unit ranking; results tagged 'calibration'",
    )
    ap.add_argument(
        "--table", action="store_true", help="only rewrite results/ranking_retrain_<model>.md from its JSON"
    )
    ap.add_argument(
        "--retrain",
        nargs="*",
        default=[],
        metavar="UNITS:STAT:NORM:RANK[:CAP[:KD_HIDDEN]]",
        help="instead of the grid: these rows' plans retrained as the harness retrains (150 steps, LR 1e-4 "
        "constant, batch 16, curve every 50 steps), e.g. head_dims:abs:z-kind:unit",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.table:
        key = "zero_shot_top1" if a.model == "fashion" else "cosine_to_teacher"
        retrain_table(a.model, json.loads((RESULTS / f"ranking_retrain_{a.model}.json").read_text()), key)
        return
    if a.retrain:
        retrain(a)
        return
    torch.set_num_threads(a.threads)
    model, train, evald, task_name, key = build(a.model)
    task = get_task(task_name)
    loss = task_loss(task, model)
    teacher = task.evaluate(model, evald)[key]
    rows = []
    for units in (("head_dims", "neurons"), ("heads", "neurons")):
        groups = prunable_groups(model, units)
        for seed in a.seeds:
            t0 = time.time()
            stats = statistics_of(
                model, groups, train, loss, seed, per_sample=task_name != "retrieval" and not a.extra, extra=a.extra
            )
            print(f"{units[0]} seed {seed}: statistics in {time.time() - t0:.0f} s", flush=True)
            combos = [
                (st, nm, rk)
                for st in STATS
                for nm in NORMS
                for rk in RANKS
                if not (rk == "per-param" and nm in ("z-kind", "uniform"))
                and (st != "sample-fisher" or task_name != "retrieval")
            ]
            if a.extra:
                combos = [(st, "z-kind", "unit") for st in ("abs",) + EXTRA]
            elif units[0] == "heads":  # heads: the main contenders only
                combos = [
                    c for c in combos if c[0] in ("abs", "acc", "mask-fisher", "sample-fisher") and c[2] == "unit"
                ]
            for st, nm, rk in combos:
                for target in a.targets:
                    plan = plan_for(model, groups, stats[st], nm, rk, target, st)
                    value = task.evaluate(vltrim.apply_plan(model, plan), evald)[key]
                    rows.append(
                        {
                            "units": units[0],
                            "stat": st,
                            "norm": nm,
                            "rank": rk,
                            "target": target,
                            "seed": seed,
                            "value": value,
                            "widths": widths(plan, groups),
                            "macs": plan.achieved["model_macs_after"] / plan.achieved["model_macs_before"],
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
            if a.peer:
                import peer

                for name in ("taylor-global", "taylor-heads-global") if units[0] == "head_dims" else ():
                    for target in a.targets:
                        try:
                            plan = peer.peer_plan(
                                model, target, peer.PeerConfig(**peer.PEER[name]), train, loss, 16, seed
                            )
                        except RuntimeError:
                            continue
                        value = task.evaluate(vltrim.apply_plan(model, plan), evald)[key]
                        rows.append(
                            {
                                "units": "peer",
                                "stat": name,
                                "norm": "-",
                                "rank": "-",
                                "target": target,
                                "seed": seed,
                                "value": value,
                                "widths": widths(plan, prunable_groups(model, plan.kinds.values())),
                                "macs": plan.achieved["model_macs_after"] / plan.achieved["model_macs_before"],
                            }
                        )
                        print(json.dumps(rows[-1]), flush=True)
    write(rows, a, teacher, key)


def retrain(a) -> None:
    """Each --retrain row's plan per seed and target, retrained; results cached per row in results/ranking_retrain_<model>.json."""
    torch.set_num_threads(a.threads)
    model, train, evald, task_name, key = build(a.model)
    task = get_task(task_name)
    loss = task_loss(task, model)
    out = RESULTS / f"ranking_retrain_{a.model}.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    for combo in a.retrain:
        units, st, nm, rk, *rest = combo.split(":")
        cap, kd = (float(rest[0]) if rest else 1.0), (float(rest[1]) if len(rest) > 1 else 0.0)
        steps = int(rest[2]) if len(rest) > 2 else 1
        groups = prunable_groups(model, (units, "neurons"))
        for seed in a.seeds:
            stats = None
            for target in a.targets:
                k = f"{combo}|{target}|{seed}"
                if k in done:
                    continue
                if steps > 1:
                    plan = iterative_plan(model, groups, train, loss, seed, st, nm, rk, target, steps, cap)
                else:
                    stats = stats or statistics_of(model, groups, train, loss, seed, per_sample=st == "sample-fisher")
                    plan = plan_for(model, groups, stats[st], nm, rk, target, st, cap)
                res = vltrim.compress(
                    model,
                    plan=plan,
                    task=task_name,
                    train_data=train,
                    eval_data=evald,
                    search_steps=0,
                    retrain_steps=150,
                    lr=1e-4,
                    retrain_lr=1e-4,
                    batch_size=32 if a.model == "fashion" else 16,
                    retrain_schedule="constant",
                    eval_every=150 if a.model == "fashion" else 50,
                    latency_batch=0,
                    progress=False,
                    seed=seed,
                    evaluate_before=False,
                    kd_hidden=kd,
                )
                done[k] = {"curve": res.report["curve"], "widths": widths(plan, groups), "achieved": plan.achieved}
                print(k, [round(p[key], 4) for p in res.report["curve"]], done[k]["widths"], flush=True)
                out.write_text(json.dumps(done, indent=1))
    retrain_table(a.model, done, key)


COMBO_NAMES = {
    "z-kind:unit": "standardised per kind, by score (before)",
    "none:per-param": "raw, per param (the new default on a one-tower model; not on two towers)",
    "mean-group:unit": "divided by the group mean (Torch-Pruning's)",
    "mean-kind:unit": "divided by the kind's mean",
    "none:unit": "raw, by score",
}


def describe_combo(combo: str) -> str:
    units, st, nm, rk, *rest = combo.split(":")
    extra = []
    if rest and float(rest[0]) < 1:
        extra.append(f"cap {float(rest[0]):.0%} per group")
    if len(rest) > 1 and float(rest[1]):
        extra.append("+ hidden-state KD in retraining")
    if len(rest) > 2 and int(rest[2]) > 1:
        extra.append(f"{rest[2]} re-scored steps")
    return f"{units}, {st}, {COMBO_NAMES.get(f'{nm}:{rk}', f'{nm}, {rk}')}" + (
        f" ({', '.join(extra)})" if extra else ""
    )


def retrain_table(model: str, done: dict, key: str) -> None:
    """results/ranking_retrain_<model>.md: every retrained row, right after pruning and along retraining."""
    rows = []
    for k, r in sorted(done.items()):
        combo, target, seed = k.split("|")
        pts = {p["total_steps"]: p[key] for p in r["curve"]}
        rows.append(
            [describe_combo(combo), f"{float(target):.0%}", seed]
            + [f"{pts[t]:.3f}" if t in pts else "-" for t in sorted(pts)]
            + [r["widths"]]
        )
    steps = sorted({p["total_steps"] for r in done.values() for p in r["curve"]})
    md = (
        f"Rankings retrained ({model}; {key}; 150 steps at LR 1e-4 constant after warm-up, as benchmarks/harness.py; "
        "widths: kept share per layer, attention then FFN):\n\n"
        + markdown_table(
            ["units, importance, ranking", "removed", "seed"] + [f"{t} steps" for t in steps] + ["widths"], rows
        )
        + f"\n\nMeasured on: {machine_line()}.\n"
    )
    (RESULTS / f"ranking_retrain_{model}.md").write_text(md)


def write(rows: list[dict], a, teacher: float, key: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / (f"ranking_ablation_{a.model}" + ("_calibration" if a.extra else ""))
    stem.with_suffix(".json").write_text(json.dumps({"rows": rows, "machine": machine(), "teacher": teacher}, indent=1))
    parts = []
    for target in a.targets:
        labels = sorted({(r["units"], r["stat"], r["norm"], r["rank"]) for r in rows if r["target"] == target})
        table = []
        for lab in labels:
            rs = [r for r in rows if (r["units"], r["stat"], r["norm"], r["rank"]) == lab and r["target"] == target]
            vals = [r["value"] for r in rs]
            sd = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
            table.append(
                [
                    *lab,
                    f"{statistics.mean(vals):.3f}{sd}",
                    f"{statistics.mean(r['macs'] for r in rs):.3f}",
                    rs[0]["widths"],
                ]
            )
        table.sort(key=lambda row: -float(row[4].split(" ")[0]))
        parts.append(
            f"**{target:.0%} of prunable params removed, {key} right after pruning** (teacher {teacher:.3f}; mean ± sd "
            f"over seeds {', '.join(map(str, a.seeds))}; widths: kept share per layer of seed {a.seeds[0]}'s plan, "
            "attention then FFN):\n\n"
            + markdown_table(
                ["units", "importance", "normalisation", "ranking", key, "MACs (x orig.)", "widths"], table
            )
        )
    md = "\n\n".join(parts) + f"\n\nMeasured on: {machine_line()}.\n"
    stem.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
