"""Chains: ``compress(model, method=["distill", "heads", "lowrank"])`` runs one compress stage per method, each on
the model the previous stage made, and returns one model that records every stage's plan (so `save` / `load`
rebuild it in one call).

A stage is a method name or ``(name, {options})``: the options in `STAGE_OPTIONS` (target, retrain_steps, kd_*, ...)
override the ones given to compress for that stage; any other key is a setting of the stage's method (like
``method_settings``). Options in `METHOD_OPTIONS` belong to one method, so a chain takes them per stage only.
Every stage's options are checked against the original model before the first stage starts; an error names the
stage (counted from 1) and its method. Stages keep, then factorize, then sparsify (`STEP_ORDER`): a later plan cannot
slice a factorised or sparsified Linear, so another order is refused up front.

The teacher: the original model is the teacher of every stage (its logits / similarities, hidden states and
attention maps), not the previous stage's output: distilling from an already compressed model would compound the
errors of the stages, and the original is what the chain must stay close to. Hidden-state and attention-map
distillation map each student layer to the teacher layer it came from through every plan of the chain.

With ``work_dir``: work_dir/run.json records the whole chain (a resume with another chain is refused), stage i works in
work_dir/stage-i-<method>/ (its own run.json, search/ and retrain/ logs and checkpoints), and a finished stage
saves its model there (result/), so ``resume=True`` continues after the last finished stage from its exact weights."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from torch import nn

from vltrim.arch.apply import plans_of
from vltrim.checks import kept_modes, text
from vltrim.measure import count_params
from vltrim.methods import get_method
from vltrim.run.options import CompressOptions
from vltrim.run.runner import (
    HALF,
    _run,
    costs_of,
    data_fingerprints,
    data_summary,
    evaluate,
    finished,
    keep_result,
    run_settings,
    shared_checked,
    stage_checked,
    try_data,
)
from vltrim.structure.plan import Plan
from vltrim.structure.result import CompressResult
from vltrim.train.run_record import check_resume, model_fingerprint

STAGE_OPTIONS = CompressOptions.of_scope("stage", "method")  # a stage's own options: override the shared ones
METHOD_OPTIONS = CompressOptions.of_scope("method")  # settings of one method: per stage only in a chain
SHARED_OPTIONS = frozenset(CompressOptions.of_scope("shared"))  # options of the whole chain, refused in a stage
STEP_ORDER = (
    "keep",
    "factorize",
    "sparsify",
)  # the plan step each method makes (its descriptor's ``step``)


def run_chain(o: dict[str, Any]) -> CompressResult:
    """`compress` with a list of methods: check every stage, then run them in order (see the module docstring)."""
    shared, stages = checked_chain(o)
    model = o["model"]
    with kept_modes(model):
        model.eval()
        return _run_chain(model, shared, stages)


# ---- checks -------------------------------------------------------------------------------------------------
def checked_chain(o: dict[str, Any]) -> tuple[SimpleNamespace, list[SimpleNamespace]]:
    """The shared options and every stage's options, validated and normalised before any work."""
    chain = o["method"]
    if not chain:
        raise ValueError("method: an empty chain; give one method name or a list of at least one stage")
    for k in reversed(METHOD_OPTIONS):  # method_settings, then depth_share: the first one given is named
        if o[k] not in (None, {}):
            raise ValueError(
                f"{k}: a chain takes it per stage (it is a setting of one method), e.g. "
                f'method=[("distill", {{"layers": 2}}), ("mope", {{"depth_share": 0.5}})]'
            )
    if o["plan"] is not None:
        raise ValueError(
            "plan: a chain searches one plan per stage; apply a single plan without a chain (method=<name>), "
            "or reload a saved chain with vltrim.load"
        )
    specs = [stage_spec(s, i, SHARED_OPTIONS) for i, s in enumerate(chain, 1)]
    check_order(specs, plans_of(o["model"]))
    shared_checked(o)
    stages = []
    for i, (name, given) in enumerate(specs, 1):
        s = {**o, "method": name, **given}
        with in_stage(i, name):
            stage_checked(s)
        stages.append(s)
    try_data(o["model"], o, stages)
    return SimpleNamespace(**o), [SimpleNamespace(**s) for s in stages]


def stage_spec(stage: Any, i: int, shared: frozenset[str]) -> tuple[str, dict[str, Any]]:
    """Chain entry ``i`` (from 1) as (method name, its own options with ``method_settings`` holding every key that is
    no compress option); a key in ``shared``, an option of the whole chain (data, work_dir, ...), is refused."""
    if isinstance(stage, str):
        return stage, {"method_settings": {}}
    if not (
        isinstance(stage, (tuple, list))
        and len(stage) == 2
        and isinstance(stage[0], str)
        and isinstance(stage[1], dict)
    ):
        raise TypeError(f"method[{i - 1}]: a chain stage is a method name or (name, {{options}}), got {stage!r}")
    name, given = stage
    where = f"stage {i} ({name})"
    settings = given.get("method_settings") or {}
    if not isinstance(settings, dict):
        raise TypeError(f"{where}: method_settings must be a dict of method options, got {type(settings).__name__}")
    options, settings = {}, dict(settings)
    for k, v in given.items():
        if k == "method_settings":
            continue
        if k == "method":
            raise ValueError(f"{where}: the stage's method is its name; drop the 'method' key")
        if k in STAGE_OPTIONS:
            options[k] = v
        elif k in shared:
            raise ValueError(f"{where}: {k} is an option of the whole chain, not of one stage: pass it to compress")
        elif k in settings:
            raise ValueError(f"{where}: {k} is given twice (as a stage option and in its method_settings)")
        else:
            settings[k] = v
    return name, {**options, "method_settings": settings}


@contextmanager
def in_stage(i: int, name: str) -> Iterator[None]:
    """Prefix a ValueError / TypeError raised inside with 'stage i (name): ' (same exception type where it allows)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        msg = f"stage {i} ({name}): {e}"
        try:
            new = type(e)(msg)
        except Exception:  # an exception type with another constructor
            new = ValueError(msg)
        raise new from None


def plan_step(plan: Plan) -> str:
    """The last step kind a plan makes: sparsify, factorize or keep."""
    return "sparsify" if plan.sparsify else "factorize" if plan.factorize else "keep"


def check_order(specs: list[tuple[str, dict[str, Any]]], done: list[Plan]) -> None:
    """ValueError unless the stages (after the plans the model already has) keep, then factorize, then sparsify."""
    prev = max(
        ((f"the model's own plan {j}", plan_step(p)) for j, p in enumerate(done, 1)),
        key=lambda x: STEP_ORDER.index(x[1]),
        default=None,
    )
    for i, (name, _) in enumerate(specs, 1):
        with in_stage(i, name):
            step = get_method(text("method", name)).descriptor.step
        if prev is not None and STEP_ORDER.index(step) < STEP_ORDER.index(prev[1]):
            raise ValueError(
                f"method: stage {i} ({name}) makes a {step} plan after {prev[0]} made a {prev[1]} plan, "
                "whose Linears it could not slice or factorise: order a chain keep (distill, heads, l1, ...), "
                "then factorize (lowrank), then sparsify (magnitude)"
            )
        prev = (f"stage {i} ({name})", step)


# ---- the run --------------------------------------------------------------------------------------------------
def _run_chain(model: nn.Module, o: SimpleNamespace, stages: list[SimpleNamespace]) -> CompressResult:
    """Every stage on the previous stage's model, distilling from ``model``; one result with every plan."""
    if o.work_dir is not None:
        fingerprints = data_fingerprints(o)  # once for the chain; every stage records the same
        for s in stages:
            s.fingerprints = fingerprints
        check_resume(o.work_dir, chain_settings(model, stages), o.resume, o.override, fingerprints)
    dtype = next(model.parameters()).dtype
    teacher = copy.deepcopy(model).float() if dtype in HALF else model  # every stage trains in fp32
    report: dict[str, Any] = {
        "method": [s.method for s in stages],
        "target": [s.target for s in stages],
        "task": o.task.name,
        "data": data_summary(o),
    }
    if o.eval_data is not None and o.evaluate_before:
        report["before"] = evaluate(o, model, "before compression")
    net, rows = teacher, []
    for i, s in enumerate(stages, 1):
        net, row = _stage(net, teacher, s, i, last=i == len(stages))
        rows.append({"stage": i, **row})
    small = net.to(dtype).eval()
    plans = plans_of(small)[len(plans_of(model)) :]
    report["stages"] = rows
    if o.eval_data is not None:
        report["after"] = evaluate(o, small, "after the chain") if dtype in HALF else rows[-1]["after"]
    report.update(plan=[p.achieved for p in plans], params=count_params(small), **costs_of(o, model, small, plans))
    return CompressResult(plans[-1], small, {"report": report}, plans)


def chain_settings(model: nn.Module, stages: list[SimpleNamespace]) -> dict[str, Any]:
    """What work_dir/run.json records for a chain: the model, the methods, and each stage's settings under
    'stage i <option>' (so a refused resume names the stage and option that changed)."""
    out: dict[str, Any] = {"model": model_fingerprint(model), "chain": [s.method for s in stages]}
    for i, s in enumerate(stages, 1):
        out.update({f"stage {i} {k}": v for k, v in run_settings(s, None).items() if k != "model"})
    return out


def _stage(
    net: nn.Module, teacher: nn.Module, s: SimpleNamespace, i: int, last: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """Stage ``i`` on ``net``: its model and report row (loaded from its work dir when a resumed run finished it)."""
    s.work_dir = s.work_dir / f"stage-{i}-{s.method}" if s.work_dir is not None else None
    s.evaluate_before, s.latency_batch = False, 0  # the chain evaluates the original once and times the end result
    done = None if last else finished(s.work_dir, s.resume, next(net.parameters()).device)
    if done is not None:
        return done
    with in_stage(i, s.method):
        res = _run(net, s, teacher)
    row = {k: v for k, v in res.report.items() if k not in ("speed", "task", "data", "machine")}
    if not last:
        keep_result(s.work_dir, res.model, row)
    return res.model, row
