"""`vltrim.compress`: search a plan, extract the subnet, retrain it with distillation, report before/after."""
from __future__ import annotations

import copy
import inspect
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from .adapters import get_adapter
from .api import apply_plan
from .checks import choice, flag, integer, kept_modes, number, path, text, usable_model
from .data.inputs import as_dataset
from .measure import compare
from .methods import get_method
from .methods.common import prunable_groups
from .structure.plan import Plan
from .structure.sparsify import freeze_zeros, sparsified
from .structure.select import ALLOCATION, MAX_RATIO, Budget
from .tasks import Task, get_task
from .train import train
from .train.distill import hidden_kd, layer_outputs
from .train.loop import SCHEDULES
from .train.run_record import check_resume, model_fingerprint


MODEL_KEYS = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")


def task_loss(task: Task, teacher: nn.Module | None, kd_weight: float = 1.0, kd_hidden: float = 0.0, kd_embed: float = 0.0,
              task_weight: float = 1.0) -> Callable[[nn.Module, Any], torch.Tensor]:
    """The training loss of a compressed model: ``task_weight`` x the task loss (0: distillation only, e.g. MoPE's
    pre-training stage on unlabelled pairs) + ``kd_weight`` x the task's distillation from ``teacher`` (logits /
    similarity KL, + ``kd_embed`` x each tower's final-embedding distance where the task has towers) + ``kd_hidden`` x uni-modal
    hidden-state MSE of every block to its teacher block (mapped across dropped layers)."""
    extra = {"embed_weight": kd_embed} if kd_embed and task.embed_kd else {}

    def kd(student: nn.Module, batch: Any) -> torch.Tensor:
        value = task_weight * task.loss(student, batch) if task_weight else 0.0
        if kd_weight and teacher is not None and task.kd is not None:
            value = value + kd_weight * task.kd(student, teacher, batch, **extra)
        return value

    def with_hidden(student: nn.Module, batch: Any) -> torch.Tensor:
        net = getattr(student, "module", student)  # under DDP the hooks sit on the wrapped model
        with layer_outputs(net) as s, layer_outputs(teacher) as t:
            value = kd(student, batch)
            if not t:  # the task's own distillation did not run the teacher
                with torch.no_grad():
                    get_adapter(teacher).forward(teacher, {k: v for k, v in batch.items() if k in MODEL_KEYS})
        return value + kd_hidden * hidden_kd(net, teacher, s, t)

    return with_hidden if kd_hidden and teacher is not None else kd


def _takes(fn: Callable) -> Callable[[str], bool]:
    """Whether ``fn`` accepts a keyword (everything, when it has **kwargs)."""
    params = inspect.signature(fn).parameters
    anything = any(p.kind == p.VAR_KEYWORD for p in params.values())
    return lambda k: anything or k in params


def _search_inputs(method: Any, data: Dataset | None, loss: Callable, batch_size: int, seed: int, task: str,
                   progress: bool) -> dict[str, Any]:
    """What a one-shot method takes besides the budget: calibration data and loss (required by ``needs_data``,
    else passed when the method takes data, e.g. lowrank's data-aware SVD), and the seed, task and progress flag."""
    takes = _takes(method.search)
    if getattr(method, "needs_data", False) and data is None:
        raise ValueError(f"{method.name} scores units on calibration data: pass train_data (or calib_data)")
    given = dict(seed=seed, task=task, progress=progress)
    if data is not None and (getattr(method, "needs_data", False) or takes("data")):
        given.update(data=data, loss_fn=loss, batch_size=batch_size)
    return {k: v for k, v in given.items() if takes(k)}


def _budget_options(method: Any, o: Any, searches: bool) -> dict[str, Any]:
    """metric, align, units, allocation and max_ratio for the method, only those it takes; one set away from its
    default that the method does not take (magnitude has no metric, lowrank no allocation) is refused."""
    takes = _takes(method.run if searches else method.search)
    given = dict(metric=o["metric"], align=o["align"], units=o["units"], allocation=o["allocation"], max_ratio=o["max_ratio"])
    unused = [k for k, v in given.items() if not takes(k) and v not in (None, "params", 8) and k != "units"]
    if unused:
        raise ValueError(f"{', '.join(unused)}: {method.name} does not take {'it' if len(unused) == 1 else 'them'} "
                         f"(it would be ignored); leave {'it' if len(unused) == 1 else 'them'} at the default")
    return {k: v for k, v in given.items() if takes(k) and v is not None}


@dataclass
class CompressResult:
    model: nn.Module  # the compressed, retrained model
    plan: Plan
    report: dict[str, Any] = field(default_factory=dict)  # metric before/after, params, MACs, latency


def compress(
    model: nn.Module,
    method: str = "upop",
    target: float = 0.5,
    task: str = "retrieval",
    train_data: Any = None,
    eval_data: Any = None,
    calib_data: Any = None,
    search_steps: int = 300,
    retrain_steps: int = 300,
    kd_weight: float = 1.0,
    kd_hidden: float | None = None,
    kd_embed: float | None = None,
    task_weight: float = 1.0,
    lr: float = 1e-4,
    retrain_lr: float = 2e-4,
    batch_size: int | None = None,
    metric: str = "params",
    align: int = 8,
    units: str | None = None,
    allocation: str | None = None,
    max_ratio: float | None = None,
    depth_share: float | None = None,
    retrain_schedule: str = "cosine",
    eval_every: int = 0,
    latency_batch: int = 8,
    progress: bool = True,
    seed: int = 0,
    grad_accum: int = 1,
    mixed_precision: str = "no",
    work_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    override: bool = False,
    plan: Plan | None = None,
    method_settings: dict[str, Any] | None = None,
    evaluate_before: bool = True,
) -> CompressResult:
    """Compress ``model`` with ``method`` to remove ``target`` of its prunable ``metric``; ``model`` is not changed
    (not even its train/eval mode), and every option is checked before any work starts.

    Training-based searches (upop) train a copy on ``train_data`` while they decide; then the subnet is
    retrained ``retrain_steps`` with the task loss + ``kd_weight`` x distillation from the original (+ ``kd_hidden``
    x hidden-state MSE per block, mapped across dropped layers; + ``kd_weight`` x ``kd_embed`` x each tower's final
    embedding distance (retrieval); None: the method's default, 1 for mope, else 0). ``task_weight`` 0 retrains by
    distillation alone (MoPE's pre-training stage: both towers, unlabelled image-text pairs).
    Methods that score on data (taylor, mope) use ``calib_data`` when given, else ``train_data``.
    ``depth_share`` (mope): the part of the cut that comes from whole layers (0: width only, 1: depth only).
    ``train_data`` / ``eval_data``: a map-style dataset of dict items, a torch DataLoader (its dataset, batch size
    and collate_fn are used) or a Hugging Face ``datasets.Dataset``; ``batch_size`` None: the DataLoader's, else 64.
    With ``work_dir``, search and retrain log to work_dir/{search,retrain}/log.jsonl, checkpoint every
    ``checkpoint_every`` steps, and ``resume=True`` continues a killed run to the same result; a resume with other
    options, data or model than work_dir/run.json records is refused (``override=True`` resumes anyway).
    With ``plan`` (e.g. `Plan.load(path)`), no search runs: that plan is applied to ``model`` and retrained.
    ``allocation`` / ``max_ratio``: where the cut may fall (see `Budget`; None: the method's default). ``eval_every`` > 0 evaluates the
    subnet every that many retrain steps into ``report["curve"]`` (metric vs total training steps).
    ``seed`` seeds the search (random scores, calibration and batch order) and the retraining.
    ``latency_batch`` 0 skips the latency measurement (``report["speed"]`` is None); ``evaluate_before=False``
    skips evaluating the original (when its metric is known already).
    ``method_settings`` go to the method as they are (e.g. upop's ``interval``, ``schedule``, ``saliency_decay``).
    A float16 / bfloat16 model is searched and retrained as a float32 copy and returned in its own dtype."""
    o = _checked(locals())
    with kept_modes(model):
        model.eval()
        return _run(model, o)


def _checked(o: dict[str, Any]) -> SimpleNamespace:
    """All of compress's options, validated (each error names its option) and normalised, before any work."""
    model = o["model"]
    usable_model(model)
    o["task"] = get_task(text("task", o["task"]))
    if o["train_data"] is not None or o["eval_data"] is not None:  # the task trains or evaluates the model
        o["task"].check(model)
    o["train_data"], hint = as_dataset(o["train_data"], "train_data") if o["train_data"] is not None else (None, None)
    o["eval_data"], _ = as_dataset(o["eval_data"], "eval_data") if o["eval_data"] is not None else (None, None)
    o["calib_data"], _ = as_dataset(o["calib_data"], "calib_data") if o["calib_data"] is not None else (None, None)
    o["batch_size"] = integer("batch_size", o["batch_size"] if o["batch_size"] is not None else hint or 64, 1)
    for k in ("search_steps", "retrain_steps", "eval_every", "latency_batch", "checkpoint_every"):
        o[k] = integer(k, o[k])
    o["seed"] = integer("seed", o["seed"], maximum=MAX_SEED)
    o["align"] = integer("align", o["align"], 1)
    text("metric", o["metric"])
    if o["allocation"] is not None:
        text("allocation", o["allocation"])
    if o["units"] is not None and not isinstance(o["units"], (str, list, tuple)):
        raise ValueError(f"units must be a string like 'head_dims,neurons', got {o['units']!r} ({type(o['units']).__name__})")
    for k in ("lr", "retrain_lr"):
        o[k] = number(k, o[k])
    o["kd_weight"] = number("kd_weight", o["kd_weight"], low_open=False)
    o["grad_accum"] = integer("grad_accum", o["grad_accum"], 1)
    for k in ("resume", "override", "progress", "evaluate_before"):
        flag(k, o[k])
    choice("mixed_precision", o["mixed_precision"], ("no", "fp16", "bf16"))
    choice("retrain_schedule", o["retrain_schedule"], SCHEDULES)
    if (o["checkpoint_every"] or o["resume"]) and o["work_dir"] is None:
        raise ValueError("checkpoint_every and resume need work_dir (CLI: --work-dir): checkpoints are written there")
    o["work_dir"] = path("work_dir", o["work_dir"]) if o["work_dir"] is not None else None
    if o["work_dir"] is not None and o["work_dir"].exists() and not o["work_dir"].is_dir():
        raise ValueError(f"work_dir {o['work_dir']} exists and is not a directory")
    if o["method_settings"] is not None and not isinstance(o["method_settings"], dict):
        raise TypeError(f"method_settings must be a dict of method options, got {type(o['method_settings']).__name__}")
    o["method_settings"] = dict(o["method_settings"] or {})
    if o["plan"] is not None and not isinstance(o["plan"], Plan):
        raise TypeError(f"plan must be a vltrim.Plan (e.g. Plan.load(path)), got {type(o['plan']).__name__}")
    o["m"] = get_method(text("method", o["method"])) if o["plan"] is None else None
    o["kd_hidden"] = number("kd_hidden", getattr(o["m"], "kd_hidden", 0.0) if o["kd_hidden"] is None else o["kd_hidden"], low_open=False)
    _check_loss_weights(o)
    if o["depth_share"] is not None:
        o["method_settings"]["depth_share"] = o["depth_share"]
    o["searches"] = o["m"] is not None and getattr(o["m"], "needs_training", False)
    if (o["searches"] or o["retrain_steps"] > 0) and o["train_data"] is None:
        raise ValueError(f"{o['method']} with retrain_steps={o['retrain_steps']} needs train_data")
    if getattr(o["m"], "needs_data", False) and o["train_data"] is None and o["calib_data"] is None:
        raise ValueError(f"{o['method']} scores units on data: pass calib_data or train_data")
    _check_budget_and_method(model, o)
    _try_data(model, o)
    return SimpleNamespace(**o)


def _check_loss_weights(o: dict[str, Any]) -> None:
    """kd_embed (None: the method's default where the task has tower embeddings) and task_weight; refuse a loss
    that is zero (distillation only on a task whose loss is its distillation) or a kd_embed the task cannot use."""
    task = o["task"]
    if o["kd_embed"] is not None:
        o["kd_embed"] = number("kd_embed", o["kd_embed"], low_open=False)
        if o["kd_embed"] and not task.embed_kd:
            raise ValueError(f"kd_embed: the {task.name} task has no tower embeddings to distil apart from its own "
                             f"distillation ({'its loss already matches the teacher embedding' if task.kd is None else 'logits KL'}); use 0")
    else:
        o["kd_embed"] = getattr(o["m"], "kd_embed", 0.0) if task.embed_kd else 0.0
    o["task_weight"] = number("task_weight", o["task_weight"], low_open=False)
    if o["task_weight"] == 0 and (task.kd is None or o["kd_weight"] == 0) and o["kd_hidden"] == 0:
        hint = "its loss is the distillation: keep task_weight > 0 or set kd_hidden > 0" if task.kd is None else "set kd_weight or kd_hidden > 0"
        raise ValueError(f"task_weight=0 leaves no training loss for {task.name} ({hint})")


def _try_data(model: nn.Module, o: dict[str, Any]) -> None:
    """Run the task on the first and last items of train_data (its loss) and eval_data (its evaluation) now:
    a field the model cannot take fails before the search, not after it."""
    if o["train_data"] is not None and (o["searches"] or o["retrain_steps"] > 0 or getattr(o["m"], "needs_data", False)):
        o["task"].try_data(model, o["train_data"], "train_data")
    if o["eval_data"] is not None:
        o["task"].try_data(model, o["eval_data"], "eval_data", evaluate=True)


MAX_SEED = 2**32 - 1  # numpy's seed range; larger seeds overflow torch's generators mid-run

PASSED_BY_COMPRESS = {"model", "target", "task", "train_data", "data", "loss_fn", "steps", "lr", "batch_size", "seed", "progress", "metric",
                      "align", "units", "allocation", "max_ratio", "grad_accum", "mixed_precision", "output_dir", "checkpoint_every", "resume"}


def _check_budget_and_method(model: nn.Module, o: dict[str, Any]) -> None:
    """The budget and unit options, and the method's own settings (a typo would only fail after a long search)."""
    o["budget_options"] = {}
    if o["plan"] is not None:
        o["plan"].validate(type(model).__name__, get_adapter(model).groups(model))
        return
    o["target"] = number("target", o["target"], high=1.0)  # the type here; Budget says why 1 or 0 is no target
    o["max_ratio"] = number("max_ratio", o["max_ratio"], high=1.0) if o["max_ratio"] is not None else None
    Budget(o["target"], o["metric"], o["align"], o["allocation"] or ALLOCATION,
           MAX_RATIO if o["max_ratio"] is None else o["max_ratio"])
    params = inspect.signature(o["m"].run if o["searches"] else o["m"].search).parameters
    if o["units"] is None:  # the method's own unit kinds (upop & co: head_dims,neurons; mope: heads,neurons)
        o["units"] = params["units"].default if "units" in params else "head_dims,neurons"
    prunable_groups(model, o["units"])
    known = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - PASSED_BY_COMPRESS
    unknown = sorted(set(o["method_settings"]) - known)
    if unknown:
        raise ValueError(f"method_settings {unknown} are not settings of {o['method']} (or are compress options); "
                         f"it takes {', '.join(sorted(known)) or 'none'}")
    if hasattr(o["m"], "check_settings"):
        o["m"].check_settings(**({"steps": o["search_steps"]} if o["searches"] else {}), **o["method_settings"])
    o["budget_options"] = _budget_options(o["m"], o, o["searches"])


def _run_settings(model: nn.Module, o: SimpleNamespace) -> dict[str, Any]:
    """What a checkpoint in work_dir depends on: resuming with any of it changed mixes two runs."""
    keys = ("method", "target", "metric", "align", "units", "allocation", "max_ratio", "search_steps", "retrain_steps",
            "kd_weight", "kd_hidden", "kd_embed", "task_weight", "lr", "retrain_lr", "batch_size", "grad_accum", "mixed_precision", "seed", "retrain_schedule",
            "method_settings")
    out = {k: getattr(o, k) for k in keys}
    out.update(task=o.task.name, model=model_fingerprint(model), train_data_size=len(o.train_data) if o.train_data is not None else 0,
               calib_data_size=len(o.calib_data) if o.calib_data is not None else 0,
               plan=o.plan.to_dict() if o.plan is not None else None)
    return out


def _run(model: nn.Module, o: SimpleNamespace) -> CompressResult:
    t, m, train_data, eval_data = o.task, o.m, o.train_data, o.eval_data
    if o.work_dir is not None:
        check_resume(o.work_dir, _run_settings(model, o), o.resume, o.override)
    dtype = next(model.parameters()).dtype
    half = dtype in (torch.float16, torch.bfloat16)
    teacher = copy.deepcopy(model).float() if half else model  # training needs fp32 weights
    loss = task_loss(t, teacher, o.kd_weight, o.kd_hidden, o.kd_embed, o.task_weight)

    def loop(stage: str) -> dict[str, Any]:
        d = o.work_dir / stage if o.work_dir is not None else None
        return dict(grad_accum=o.grad_accum, mixed_precision=o.mixed_precision, output_dir=d,
                    checkpoint_every=o.checkpoint_every if d is not None else 0, resume=o.resume and d is not None)

    plan = o.plan
    report: dict[str, Any] = {"method": o.method if plan is None else plan.method, "target": o.target if plan is None else plan.target.get("target"),
                              "metric": o.metric, "task": t.name, "search_steps": o.search_steps if o.searches else 0,
                              "retrain_steps": o.retrain_steps}
    if eval_data is not None and o.evaluate_before:
        report["before"] = t.evaluate(model, eval_data)
    common = {**o.budget_options, **o.method_settings}
    started = time.perf_counter()
    if plan is not None:
        base = teacher
    elif o.searches:
        res = m.run(teacher, o.target, train_data=train_data, loss_fn=loss, steps=o.search_steps, lr=o.lr, batch_size=o.batch_size,
                    seed=o.seed, progress=o.progress, **common, **loop("search"))
        plan, base = res.plan, res.model
    else:
        plan, base = m.search(teacher, o.target, **common, **_search_inputs(m, o.calib_data if o.calib_data is not None else train_data, loss,
                                                                     o.batch_size, o.seed, t.name, o.progress)), teacher
        if getattr(m, "last_table", None) is not None:
            report["scores_table"] = m.last_table
    report["search_seconds"] = round(time.perf_counter() - started, 2)  # search, scoring or calibration: wall-clock
    small = apply_plan(base, plan)
    if eval_data is not None:
        report["after_search"] = t.evaluate(small, eval_data)
        report["curve"] = [{"retrain_step": 0, "total_steps": report["search_steps"], **report["after_search"]}]

    def point(done: int, net: nn.Module) -> None:
        if o.eval_every and eval_data is not None and (done % o.eval_every == 0 or done == o.retrain_steps):
            report["curve"].append({"retrain_step": done, "total_steps": report["search_steps"] + done, **t.evaluate(net, eval_data)})

    with freeze_zeros(small) if sparsified(small) else nullcontext():  # sparse weights keep their zeros while retraining
        train(small, train_data, loss, o.retrain_steps, lr=o.retrain_lr, batch_size=o.batch_size, seed=o.seed + 1, desc="retrain",
              progress=o.progress, schedule=o.retrain_schedule, after_step=point, **loop("retrain"))
    small = small.to(dtype).eval()
    if eval_data is not None:
        report["after"] = t.evaluate(small, eval_data)
    report["plan"] = plan.achieved
    report["speed"] = compare(model, small, batch_size=o.latency_batch) if o.latency_batch > 0 else None
    return CompressResult(small, plan, report)
