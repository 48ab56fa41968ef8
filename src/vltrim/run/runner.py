"""`vltrim.compress`: search a plan, extract the subnet, retrain it with distillation, report before/after."""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vltrim.arch import class_name, get_adapter
from vltrim.arch.apply import apply_plan, plans_of
from vltrim.arch.registry import usable_model
from vltrim.checks import choice, flag, integer, number, path, text
from vltrim.data.fingerprint import fingerprint
from vltrim.data.inputs import as_dataset
from vltrim.io import load, save
from vltrim.measure import compare, cost_split, count_params, machine
from vltrim.methods import Method, get_method
from vltrim.methods.common import prunable_groups
from vltrim.progress import phase
from vltrim.structure.plan import Plan
from vltrim.structure.result import CompressResult
from vltrim.structure.select import ALLOCATION, MAX_RATIO, Budget, modality_split
from vltrim.structure.sparsify import freeze_zeros, sparsified
from vltrim.tasks import get_task
from vltrim.tasks.loss import kd_defaults, task_loss
from vltrim.train import train
from vltrim.train.loop import SCHEDULES, CheckpointError
from vltrim.train.run_record import check_resume, model_fingerprint


def _search_inputs(
    method: Method, data: Dataset | None, loss: Callable, batch_size: int, seed: int, task: str, progress: bool
) -> dict[str, Any]:
    """What a one-shot method takes besides the budget (its descriptor's ``runtime``): calibration data and loss
    (required when its ``data`` is "required", passed when "optional", e.g. lowrank's data-aware SVD), and the seed,
    task and progress flag."""
    d = method.descriptor
    if d.data == "required" and data is None:
        raise ValueError(f"{method.name} scores units on calibration data: pass train_data (or calib_data)")
    given = dict(seed=seed, task=task, progress=progress)
    if data is not None and d.data != "none":
        given.update(data=data, loss_fn=loss, batch_size=batch_size)
    return {k: v for k, v in given.items() if k in d.runtime}


def _budget_options(method: Method, o: Any) -> dict[str, Any]:
    """metric, align, units, allocation and max_ratio for the method, only those its Config takes; one set away
    from its default that the method does not take (magnitude has no metric, lowrank no allocation) is refused."""
    budget = method.Config.budget()
    takes = budget.__contains__
    given = dict(
        metric=o["metric"], align=o["align"], units=o["units"], allocation=o["allocation"], max_ratio=o["max_ratio"]
    )
    unused = [k for k, v in given.items() if not takes(k) and v not in (None, "params", 8) and k != "units"]
    if unused:
        raise ValueError(
            f"{', '.join(unused)}: {method.name} does not take {'it' if len(unused) == 1 else 'them'} "
            f"(it would be ignored); leave {'it' if len(unused) == 1 else 'them'} at the default"
        )
    return {k: v for k, v in given.items() if takes(k) and v is not None}


def _checked(o: dict[str, Any]) -> SimpleNamespace:
    """All of compress's options, validated (each error names its option) and normalised, before any work."""
    shared_checked(o)
    stage_checked(o)
    try_data(o["model"], o, [o])
    return SimpleNamespace(**o)


def shared_checked(o: dict[str, Any]) -> None:
    """The options of the whole run, which every stage of a chain shares (model, task, data, counts, flags, work_dir),
    validated and normalised in ``o``."""
    model = o["model"]
    usable_model(model)
    o["task"] = get_task(text("task", o["task"]))
    if o["train_data"] is not None or o["eval_data"] is not None:  # the task trains or evaluates the model
        o["task"].check(model)
    o["train_data"], hint = as_dataset(o["train_data"], "train_data") if o["train_data"] is not None else (None, None)
    o["eval_data"], _ = as_dataset(o["eval_data"], "eval_data") if o["eval_data"] is not None else (None, None)
    o["calib_data"], _ = as_dataset(o["calib_data"], "calib_data") if o["calib_data"] is not None else (None, None)
    o["batch_size"] = integer("batch_size", o["batch_size"] if o["batch_size"] is not None else hint or 64, 1)
    for k in ("eval_every", "latency_batch", "checkpoint_every"):
        o[k] = integer(k, o[k])
    o["seed"] = integer("seed", o["seed"], maximum=MAX_SEED)
    o["grad_accum"] = integer("grad_accum", o["grad_accum"], 1)
    for k in ("resume", "override", "progress", "evaluate_before"):
        flag(k, o[k])
    choice("mixed_precision", o["mixed_precision"], ("no", "fp16", "bf16"))
    if (o["checkpoint_every"] or o["resume"]) and o["work_dir"] is None:
        raise ValueError("checkpoint_every and resume need work_dir (CLI: --work-dir): checkpoints are written there")
    o["work_dir"] = path("work_dir", o["work_dir"]) if o["work_dir"] is not None else None
    if o["work_dir"] is not None and o["work_dir"].exists() and not o["work_dir"].is_dir():
        raise ValueError(f"work_dir {o['work_dir']} exists and is not a directory")
    if o["plan"] is not None and not isinstance(o["plan"], Plan):
        raise TypeError(f"plan must be a vltrim.Plan (e.g. Plan.load(path)), got {type(o['plan']).__name__}")


def stage_checked(o: dict[str, Any]) -> None:
    """The options of one compress stage (method, budget, steps, rates, loss weights, method settings, rounds),
    validated and normalised in ``o``; ``shared_checked`` ran on ``o`` first."""
    model = o["model"]
    for k in ("search_steps", "retrain_steps"):
        o[k] = integer(k, o[k])
    o["align"] = integer("align", o["align"], 1)
    text("metric", o["metric"])
    if o["allocation"] is not None:
        text("allocation", o["allocation"])
    if o["units"] is not None and not isinstance(o["units"], (str, list, tuple)):
        raise ValueError(
            f"units must be a string like 'head_dims,neurons', got {o['units']!r} ({type(o['units']).__name__})"
        )
    for k in ("lr", "retrain_lr"):
        o[k] = number(k, o[k])
    o["kd_weight"] = number("kd_weight", o["kd_weight"], low_open=False)
    choice("retrain_schedule", o["retrain_schedule"], SCHEDULES)
    if o["method_settings"] is not None and not isinstance(o["method_settings"], dict):
        raise TypeError(f"method_settings must be a dict of method options, got {type(o['method_settings']).__name__}")
    o["method_settings"] = dict(o["method_settings"] or {})
    o["m"] = get_method(text("method", o["method"])) if o["plan"] is None else None
    defaults = kd_defaults(o["task"], o["m"].descriptor.kd if o["m"] is not None else None)
    for k in ("kd_hidden", "kd_attention"):  # None: the method's default
        o[k] = number(k, defaults[k] if o[k] is None else o[k], low_open=False)
    _check_loss_weights(o)
    if o["depth_share"] is not None:
        o["method_settings"]["depth_share"] = o["depth_share"]
    o["searches"] = o["m"] is not None and o["m"].descriptor.trains
    if (o["searches"] or o["retrain_steps"] > 0) and o["train_data"] is None:
        raise ValueError(f"{o['method']} with retrain_steps={o['retrain_steps']} needs train_data")
    if _needs_data(o["m"]) and o["train_data"] is None and o["calib_data"] is None:
        raise ValueError(f"{o['method']} scores units on data: pass calib_data or train_data")
    _check_budget_and_method(model, o)
    o["rounds"] = _rounds(o)


def _rounds(o: dict[str, Any]) -> int:
    """Prune-retrain rounds: ``method_settings["rounds"]`` of a method that prunes in rounds through compress (its
    descriptor says ``rounds``: it has a ``round_target``), else 1."""
    if o["m"] is None or not o["m"].descriptor.rounds:
        return 1
    return integer("rounds", o["method_settings"].get("rounds", 1), 1)


def _check_loss_weights(o: dict[str, Any]) -> None:
    """kd_embed (None: the method's default where the task has tower embeddings) and task_weight; refuse a loss
    that is zero (distillation only on a task whose loss is its distillation) or a kd_embed the task cannot use."""
    task = o["task"]
    if o["kd_embed"] is not None:
        o["kd_embed"] = number("kd_embed", o["kd_embed"], low_open=False)
        if o["kd_embed"] and not task.embed_kd:
            raise ValueError(
                f"kd_embed: the {task.name} task has no tower embeddings to distil apart from its own "
                f"distillation ({'its loss already matches the teacher embedding' if task.kd is None else 'logits KL'}); use 0"
            )
    else:
        o["kd_embed"] = kd_defaults(task, o["m"].descriptor.kd if o["m"] is not None else None)["kd_embed"]
    o["task_weight"] = number("task_weight", o["task_weight"], low_open=False)
    if (
        o["task_weight"] == 0
        and (task.kd is None or o["kd_weight"] == 0)
        and o["kd_hidden"] == 0
        and o["kd_attention"] == 0
    ):
        hint = (
            "its loss is the distillation: keep task_weight > 0 or set kd_hidden / kd_attention > 0"
            if task.kd is None
            else "set kd_weight, kd_hidden or kd_attention > 0"
        )
        raise ValueError(f"task_weight=0 leaves no training loss for {task.name} ({hint})")


def _uses_train_data(o: dict[str, Any]) -> bool:
    """Whether a stage trains on train_data or scores on it."""
    return o["searches"] or o["retrain_steps"] > 0 or _needs_data(o["m"])


def _needs_data(m: Method | None) -> bool:
    return m is not None and m.descriptor.data == "required"


def try_data(model: nn.Module, o: dict[str, Any], stages: list[dict[str, Any]]) -> None:
    """Run the task on the first and last items of train_data (its loss; when a stage uses it) and eval_data (its
    evaluation) now: a field the model cannot take fails before the search, not after it."""
    if o["train_data"] is not None and any(_uses_train_data(s) for s in stages):
        o["task"].try_data(model, o["train_data"], "train_data")
    if o["eval_data"] is not None:
        o["task"].try_data(model, o["eval_data"], "eval_data", evaluate=True)


MAX_SEED = 2**32 - 1  # numpy's seed range; larger seeds overflow torch's generators mid-run


def _check_budget_and_method(model: nn.Module, o: dict[str, Any]) -> None:
    """The budget and unit options, and the method's own settings (a typo would only fail after a long search)."""
    o["budget_options"] = {}
    if o["plan"] is not None:
        o["plan"].validate(class_name(model), get_adapter(model).groups(model))
        return
    o["target"] = number("target", o["target"], high=1.0)  # the type here; Budget says why 1 or 0 is no target
    o["max_ratio"] = number("max_ratio", o["max_ratio"], high=1.0) if o["max_ratio"] is not None else None
    Budget(
        o["target"],
        o["metric"],
        o["align"],
        o["allocation"] or ALLOCATION,
        MAX_RATIO if o["max_ratio"] is None else o["max_ratio"],
    )
    config = o["m"].Config
    if o["units"] is None:  # the method's own unit kinds (upop & co: head_dims,neurons; mope: heads,neurons)
        o["units"] = config.defaults().get("units", "head_dims,neurons")
    prunable_groups(model, o["units"])
    known = config.settings()
    unknown = sorted(set(o["method_settings"]) - known)
    if unknown:
        raise ValueError(
            f"method_settings {unknown} are not settings of {o['method']} (or are compress options); "
            f"it takes {', '.join(sorted(known)) or 'none'}"
        )
    if o["searches"]:  # a search that trains takes at least one step
        integer("steps", o["search_steps"], 1)
    config(**o["method_settings"])  # the settings validate themselves, before any work
    _refuse_round_settings(o["m"], o["method_settings"])
    o["budget_options"] = _budget_options(o["m"], o)


def _refuse_round_settings(m: Method, settings: dict[str, Any]) -> None:
    """With rounds > 1 compress sets a round-based method's ``descriptor.round_settings`` each round itself."""
    if not m.descriptor.round_settings or settings.get("rounds", 1) <= 1:
        return
    for k in m.descriptor.round_settings:
        if settings.get(k) is not None:
            raise ValueError(
                f"{k}: compress runs all the rounds itself (prune, retrain, prune more); leave {k} unset "
                f"(vltrim.plan takes {k}, to plan one round by hand)"
            )


RUN_KEYS = (
    "method",
    "target",
    "metric",
    "align",
    "units",
    "allocation",
    "max_ratio",
    "search_steps",
    "retrain_steps",
    "kd_weight",
    "kd_hidden",
    "kd_embed",
    "kd_attention",
    "task_weight",
    "lr",
    "retrain_lr",
    "batch_size",
    "grad_accum",
    "mixed_precision",
    "seed",
    "retrain_schedule",
    "method_settings",
)


def report_settings(o: SimpleNamespace) -> dict[str, Any]:
    """The options of a run that its report records (method, target and step counts are recorded on their own)."""
    skip = ("method", "target", "search_steps", "retrain_steps")
    return {k: getattr(o, k) for k in RUN_KEYS if k not in skip}


def data_summary(o: SimpleNamespace) -> dict[str, Any]:
    """What the run trained, calibrated and evaluated on: each dataset's type, size and file or folder if it has one."""

    def one(ds: Any) -> dict[str, Any]:
        if ds is None:
            return {"type": None, "items": None}
        inner = getattr(ds, "dataset", ds)  # a DataLoader's or a wrapper's dataset
        where = next(
            (getattr(x, a) for x in (ds, inner) for a in ("path", "root", "source") if getattr(x, a, None)), None
        )
        return {"type": type(inner).__name__, "items": len(ds), **({"source": str(where)} if where is not None else {})}

    return {
        "train": one(o.train_data),
        "eval": one(o.eval_data),
        **({"calib": one(o.calib_data)} if o.calib_data is not None else {}),
    }


def run_settings(o: SimpleNamespace, fingerprint: str | None) -> dict[str, Any]:
    """What a checkpoint in work_dir depends on (``fingerprint``: of the model compressed): resuming with any of it
    changed mixes two runs."""
    out = {k: getattr(o, k) for k in RUN_KEYS}
    out.update(task=o.task.name, model=fingerprint, plan=o.plan.to_dict() if o.plan is not None else None)
    return out


DATA_OPTIONS = ("train_data", "eval_data", "calib_data")


def data_fingerprints(o: SimpleNamespace) -> dict[str, Any]:
    """The content fingerprint of each dataset of the run (`vltrim.data.fingerprint`; None: not given), computed once
    per run and kept on ``o``: what run.json records, so a resume with other data is refused naming it."""
    if getattr(o, "fingerprints", None) is None:
        with phase("fingerprinting the data (for resume)", o.progress):
            o.fingerprints = {
                k: fingerprint(getattr(o, k)) if getattr(o, k) is not None else None for k in DATA_OPTIONS
            }
    return o.fingerprints


# ---- the run: rounds of search -> apply -> retrain ----------------------------------------------------------
HALF = (torch.float16, torch.bfloat16)
RESULT, RESULT_REPORT = "result", "result.json"  # a finished round's or chain stage's model and report, in its work dir


def _run(model: nn.Module, o: SimpleNamespace, teacher: nn.Module | None = None) -> CompressResult:
    """One compress run (or one stage of a chain): ``o.rounds`` rounds of search (or ``o.plan``) -> apply -> retrain,
    distilling from ``teacher`` (None: ``model`` itself, as float32)."""
    overridden = []
    if o.work_dir is not None:
        overridden = check_resume(
            o.work_dir, run_settings(o, model_fingerprint(model)), o.resume, o.override, data_fingerprints(o)
        )
    with _naming(overridden):
        return _run_checked(model, o, teacher)


@contextmanager
def _naming(overridden: list[str]) -> Iterator[None]:
    """A checkpoint that does not fit the run, in a resume that overrode differences: the error names them."""
    try:
        yield
    except CheckpointError as e:
        if not overridden:
            raise
        raise CheckpointError(
            f"{e}\nthis resume was forced (override=True) although:\n  " + "\n  ".join(overridden)
        ) from None


def _run_checked(model: nn.Module, o: SimpleNamespace, teacher: nn.Module | None) -> CompressResult:
    """`_run` after the work dir's checks: the rounds and the report."""
    t = o.task
    dtype = next(model.parameters()).dtype
    net = copy.deepcopy(model).float() if dtype in HALF else model  # training needs fp32 weights
    loss = task_loss(
        t, net if teacher is None else teacher, o.kd_weight, o.kd_hidden, o.kd_embed, o.task_weight, o.kd_attention
    )
    report: dict[str, Any] = {
        "method": o.method if o.plan is None else o.plan.method,
        "target": o.target if o.plan is None else o.plan.target.get("target"),
        "metric": o.metric,
        "task": t.name,
        "search_steps": o.search_steps if o.searches else 0,
        "retrain_steps": o.retrain_steps,
        "settings": report_settings(o),
        "data": data_summary(o),
    }
    if o.eval_data is not None and o.evaluate_before:
        report["before"] = evaluate(o, model, "before compression")
    small, plans, rows = net, [], []
    for r in range(1, o.rounds + 1):
        small, plan, row = _round(start=net, net=small, o=o, loss=loss, r=r, report=report)
        plans += [plan] if plan is not None else []
        rows.append(row)
    small = small.to(dtype).eval()
    if o.eval_data is not None:
        rows[-1]["after"] = evaluate(o, small, "after retraining")
    _summarise(report, rows, o.eval_data is not None)
    report.update(costs_of(o, model, small, plans))
    return CompressResult(plans[-1], small, {"report": report}, plans)


def _round(
    start: nn.Module, net: nn.Module, o: SimpleNamespace, loss: Callable, r: int, report: dict[str, Any]
) -> tuple[nn.Module, Plan | None, dict[str, Any]]:
    """Round ``r`` of ``o.rounds`` on ``net`` (``start``: the model of round 1): plan, apply, retrain this round's share
    of retrain_steps; the model, its plan (None: an earlier round's cut already reached this round's) and its report row."""
    d, last = _round_dir(o, r), r == o.rounds
    done = None if last else finished(d, o.resume, next(net.parameters()).device)
    if done is not None:
        small, row = done
        return small, (plans_of(small)[-1] if row["plan"] is not None else None), row
    started = time.perf_counter()
    plan, base = _plan(start, net, o, loss, r, report)
    row: dict[str, Any] = {
        "round": r,
        "target": plan.target if plan is not None else None,  # as the plan records it
        "search_seconds": round(time.perf_counter() - started, 2),
    }
    small = apply_plan(base, plan) if plan is not None else net
    before, steps = _split(o.retrain_steps, o.rounds, r)
    tag = {"round": r} if o.rounds > 1 else {}
    if o.eval_data is not None:
        row["after_search"] = evaluate(o, small, "after search" if o.searches else "after pruning")
        row["curve"] = [
            {**tag, "retrain_step": before, "total_steps": report["search_steps"] + before, **row["after_search"]}
        ]

    def point(done: int, m: nn.Module) -> None:
        if o.eval_every and o.eval_data is not None and ((before + done) % o.eval_every == 0 or done == steps):
            row["curve"].append(
                {
                    **tag,
                    "retrain_step": before + done,
                    "total_steps": report["search_steps"] + before + done,
                    **o.task.evaluate(m, o.eval_data),
                }
            )

    with (
        freeze_zeros(small) if sparsified(small) else nullcontext()
    ):  # sparse weights keep their zeros while retraining
        train(
            small,
            o.train_data,
            loss,
            steps,
            lr=o.retrain_lr,
            batch_size=o.batch_size,
            seed=o.seed + r,
            desc="retrain" if o.rounds == 1 else f"retrain {r}/{o.rounds}",
            progress=o.progress,
            schedule=o.retrain_schedule,
            after_step=point,
            **_loop(o, d, "retrain"),
        )
    row.update(retrain_steps=steps, plan=plan.achieved if plan is not None else None, params=count_params(small))
    if not last:
        if o.eval_data is not None:
            row["after"] = evaluate(o, small.eval(), f"after round {r}")
        keep_result(d, small, row)
    return small, plan, row


def _plan(
    start: nn.Module, net: nn.Module, o: SimpleNamespace, loss: Callable, r: int, report: dict[str, Any]
) -> tuple[Plan | None, nn.Module]:
    """Round ``r``'s plan and the model it applies to: ``o.plan`` as given, a training search's trained copy of
    ``net``, or a one-shot search of ``net``; in rounds, the method's ``round_target`` says what round r asks (None:
    nothing left to prune this round)."""
    m = o.m
    if o.plan is not None:
        return o.plan, net
    common, target = {**o.budget_options, **o.method_settings}, o.target
    if o.rounds > 1:
        common.pop("rounds")
        asked = m.round_target(net, start, o.target, r, o.rounds, **common)
        if asked is None:
            return None, net
        target, common = asked
    if o.searches:
        res = m.run(
            net,
            target,
            train_data=o.train_data,
            loss_fn=loss,
            steps=o.search_steps,
            lr=o.lr,
            batch_size=o.batch_size,
            seed=o.seed,
            progress=o.progress,
            **common,
            **_loop(o, _round_dir(o, r), "search"),
        )
        _report_artifacts(report, res.artifacts)
        return res.plan, res.model
    data = o.calib_data if o.calib_data is not None else o.train_data
    with phase(f"{m.name}: scoring and selecting units (target {target:g})", o.progress):
        found = m.search_result(
            net,
            target,
            **common,
            **_search_inputs(m, data, loss, o.batch_size, o.seed + r - 1, o.task.name, o.progress),
        )
    plan = found.plan
    _report_artifacts(report, found.artifacts)
    if o.rounds > 1:
        plan.settings["prune_round"] = [r, o.rounds]
    return plan, net


#: a search's artefacts that go into the report: MoPE's module table (report.json, mope.csv / mope.png) and
#: modal-adaptive's per-step trace (expected share removed, ramped target, multipliers)
REPORTED_ARTIFACTS = ("scores_table", "search_log")


def _report_artifacts(report: dict[str, Any], artifacts: dict[str, Any]) -> None:
    report.update({k: artifacts[k] for k in REPORTED_ARTIFACTS if k in artifacts})


def evaluate(o: SimpleNamespace, model: nn.Module, when: str) -> dict[str, float]:
    """The task metric on the eval data, with a line saying so (evaluation has no bar of its own)."""
    with phase(f"evaluating {when} on {len(o.eval_data)} items", o.progress):
        return o.task.evaluate(model, o.eval_data)


def costs_of(o: SimpleNamespace, model: nn.Module, small: nn.Module, plans: list[Plan]) -> dict[str, Any]:
    """The report's cost keys: ``modality_split`` (what the plans removed per modality), ``source_split`` (the
    original's front end / Transformer blocks split, `vltrim.measure.cost_split`, for a family with a front end),
    ``speed`` (`measure_speed`) and, when timed, ``machine``."""
    out = {"modality_split": split_of(model, small, plans), "speed": measure_speed(o, model, small)}
    if split := cost_split(model):
        out["source_split"] = split
    if out["speed"] is not None:
        out["machine"] = machine()
    return out


def measure_speed(o: SimpleNamespace, model: nn.Module, small: nn.Module) -> dict[str, Any] | None:
    """`compare` of the original and the compressed model at ``latency_batch`` (None when it is 0), announced."""
    if o.latency_batch <= 0:
        return None
    with phase(f"measuring latency (batch {o.latency_batch}, original and compressed interleaved)", o.progress):
        return compare(model, small, batch_size=o.latency_batch)


def _split(steps: int, rounds: int, r: int) -> tuple[int, int]:
    """Retrain steps of the rounds before round ``r``, and of round ``r``: ``steps`` split evenly, the last rounds
    taking the remainder."""
    before = steps * (r - 1) // rounds
    return before, steps * r // rounds - before


def _round_dir(o: SimpleNamespace, r: int) -> Path | None:
    """Where round ``r`` logs and checkpoints: work_dir itself for a one-round run, else work_dir/round-r."""
    if o.work_dir is None or o.rounds == 1:
        return o.work_dir
    return o.work_dir / f"round-{r}"


def _loop(o: SimpleNamespace, d: Path | None, stage: str) -> dict[str, Any]:
    """The training loop's options for ``stage`` ('search' or 'retrain') logging into ``d`` / stage."""
    d = d / stage if d is not None else None
    return dict(
        grad_accum=o.grad_accum,
        mixed_precision=o.mixed_precision,
        output_dir=d,
        checkpoint_every=o.checkpoint_every if d is not None else 0,
        resume=o.resume and d is not None,
    )


def split_of(model: nn.Module, small: nn.Module, plans: list[Plan]) -> dict[str, Any] | None:
    """The report's ``modality_split``: the share of each modality's (and its attention's and FFN's) params and MACs
    that ``plans`` removed from ``model`` (`vltrim.structure.select.modality_split`); None when a plan factorises or
    sparsifies (what it removes is not units of a width group)."""
    if any(p.factorize or p.sparsify for p in plans):
        return None
    return modality_split(get_adapter(model).groups(model), get_adapter(small).groups(small))


def _summarise(report: dict[str, Any], rows: list[dict[str, Any]], evaluated: bool) -> None:
    """The run's report from its rounds' rows: a one-round run keeps the flat keys (search_seconds, after_search,
    curve, after, plan); rounds add ``rounds`` (one row per round) and report the last round's plan and metric."""
    curve = [p for row in rows for p in row.pop("curve", [])]
    last = rows[-1]
    if len(rows) == 1:
        report["search_seconds"] = last["search_seconds"]  # search, scoring or calibration: wall-clock
        if evaluated:
            report.update(after_search=last["after_search"], curve=curve, after=last["after"])
    else:
        report.update(search_seconds=round(sum(row["search_seconds"] for row in rows), 2), rounds=rows)
        if evaluated:
            report.update(curve=curve, after=last["after"])
    report.update(plan=last["plan"], params=last["params"])


def finished(d: Path | None, resume: bool, device: torch.device) -> tuple[nn.Module, dict[str, Any]] | None:
    """The model and report row a finished round or chain stage left in ``d`` when resuming (None if it has not
    finished); a fresh run removes any an earlier run left, so a later resume cannot pick them up."""
    if d is None:
        return None
    if not resume:
        shutil.rmtree(d / RESULT, ignore_errors=True)
        (d / RESULT_REPORT).unlink(missing_ok=True)
        return None
    if not (d / RESULT_REPORT).is_file():
        return None
    return load(d / RESULT, device=device), json.loads((d / RESULT_REPORT).read_text(encoding="utf-8"))


def keep_result(d: Path | None, model: nn.Module, row: dict[str, Any]) -> None:
    """Save a finished round's or chain stage's model and report row in ``d`` (with work_dir): a resume continues from
    them bit-exactly instead of redoing the work. The row is written last, so its presence means both are complete."""
    if d is None:
        return
    save(model, d / RESULT)
    tmp = d / (RESULT_REPORT + ".tmp")
    tmp.write_text(json.dumps(row, default=str), encoding="utf-8")
    tmp.replace(d / RESULT_REPORT)
