"""`vltrim.study`: the compression landscape of one model in one call.

Every method x ratio is one *cell*, run through `vltrim.compress` with the same retraining budget, seed and
data; the original model is the baseline row. Each finished cell writes its row atomically to
``out/cells/<cell>.json`` (with the settings it was made with) and its model to ``out/models/<cell>/``
(`vltrim.save`), so a killed study reruns only the cells it had not finished. After all cells, every cell's
model is reloaded (`vltrim.load`) and all of them and the original are timed in ONE interleaved run per latency
batch (median of rounds; speedups are paired per round against the original): ratios from one run are
comparable, absolute times across runs are not. Outputs: ``results.csv``, ``results.md``, ``results.json`` and
PNG plots of the metric against params, MACs and latency, with the Pareto front (cells no other row beats on
both the metric and the cost) drawn as a line and marked in the tables.

What a ratio means per method: ``magnitude`` the share of block-Linear weights zeroed (params and MACs stay
dense); ``2:4`` is magnitude with the 2:4 pattern, one cell at its fixed 50% whatever the ratios; ``distill`` a
student keeping round((1 - ratio) x layers) layers of every tower (at least 1; `vltrim.student`); every other
method (heads, lowrank, l1, upop, taylor, random, mope) removes that share of its prunable params."""

from __future__ import annotations

import csv
import hashlib
import io as _io
import json
import math
import os
import secrets
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vltrim import io as vio
from vltrim.arch import class_name, get_adapter
from vltrim.arch.registry import usable_model
from vltrim.checks import flag, integer, kept_modes, number, path, text
from vltrim.data.fingerprint import data_change, fingerprint
from vltrim.data.inputs import as_dataset
from vltrim.measure import _latency_stats, _runner, _time_rounds, count_macs, count_params, machine, paired_speedup
from vltrim.methods import BUDGET_OPTIONS, Method, available, get_method
from vltrim.methods.common import prunable_groups
from vltrim.methods.lowrank import Layer, global_ranks
from vltrim.progress import bar, console
from vltrim.run.compress import compress
from vltrim.run.options import CompressOptions
from vltrim.run.runner import _checked
from vltrim.structure.select import ALLOCATION, MAX_RATIO, Budget, select
from vltrim.structure.sparsify import check_semi_shape
from vltrim.tasks import get_task
from vltrim.train.run_record import _plain, model_fingerprint

SEMI = "2:4"  # alias: magnitude with pattern 2:4 (fixed 50% sparsity)
DEFAULT_METHODS = ("magnitude", SEMI, "heads", "lowrank", "distill", "l1", "upop")
DEFAULT_RATIOS = (0.25, 0.5, 0.75)
STUDY_FILE, CELLS, MODELS, ORIGINAL = "study.json", "cells", "models", "original"
FORMAT, VERSION = "vltrim.study", 1
# compress options the study sets itself (per cell or for all cells); the rest may go through compress_options
OWN_OPTIONS = {
    "model",
    "method",
    "target",
    "task",
    "train_data",
    "eval_data",
    "retrain_steps",
    "search_steps",
    "seed",
    "batch_size",
    "method_settings",
    "plan",
    "work_dir",
    "resume",
    "override",
    "checkpoint_every",
    "latency_batch",
    "evaluate_before",
    "progress",
}


class StudyError(ValueError):
    """A study that cannot start as asked: its out directory holds another study, or a file that is not one."""


class StudyCellError(RuntimeError):
    """A cell failed; the cells finished before it are kept, a rerun continues after them."""


@dataclass(frozen=True)
class Cell:
    method: str  # as asked: a compress method or the alias "2:4"
    ratio: float

    @property
    def name(self) -> str:
        return f"{'2of4' if self.method == SEMI else self.method}-{self.ratio:.6g}"

    def compress_args(self, settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """method, target and method_settings of this cell for `compress`."""
        own = dict(settings.get(self.method, {}))
        if self.method == SEMI:
            return {"method": "magnitude", "target": 0.5, "method_settings": {**own, "pattern": "2:4"}}
        return {"method": self.method, "target": self.ratio, "method_settings": own}


@dataclass
class StudyResult:
    rows: list[dict[str, Any]]  # the original first, then one row per cell (what results.csv holds)
    out: Path
    files: dict[str, Path]  # results.csv, results.md, results.json and the plots
    machine: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)  # what the cells depend on (study.json)


# ---- option checks (pure; ``name`` is the option as the caller spells it: 'ratios' or '--ratios') ------------------
def known_methods() -> list[str]:
    return sorted([*available(), SEMI])


def _listed(value: Any) -> Any:
    """A tuple, numpy array or other iterable (not a string or mapping) as a list; anything else as it is."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        return value
    return list(value.tolist() if hasattr(value, "tolist") else value)


def check_methods(methods: Any, name: str = "methods") -> list[str]:
    """Method names (a list, or one string 'a,b,c'), none unknown, none twice, at least one."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = _listed(methods)
    if not isinstance(methods, list):
        raise ValueError(f"{name} must be a list of method names, got {methods!r} ({type(methods).__name__})")
    if not methods:
        raise ValueError(f"{name} is empty: name at least one of {', '.join(known_methods())}")
    for m in methods:
        if not isinstance(m, str) or m not in known_methods():
            raise ValueError(f"{name}: unknown method {m!r}; known: {', '.join(known_methods())}")
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        raise ValueError(f"{name}: {', '.join(twice)} given more than once")
    return list(methods)


def check_ratios(ratios: Any, name: str = "ratios") -> list[float]:
    """Ratios in (0, 1), none twice (after formatting to 6 digits, as the cell names are), at least one."""
    if isinstance(ratios, (int, float)) and not isinstance(ratios, bool):
        ratios = [ratios]
    ratios = _listed(ratios)
    if not isinstance(ratios, list):
        raise ValueError(f"{name} must be a list of numbers in (0, 1), got {ratios!r} ({type(ratios).__name__})")
    if not ratios:
        raise ValueError(f"{name} is empty: give at least one ratio in (0, 1), e.g. 0.25,0.5,0.75")
    out = []
    for r in ratios:
        try:
            v = number(name, r, high=1.0)
        except ValueError:
            v = math.nan
        if not 0.0 < v < 1.0:
            raise ValueError(f"{name} must be numbers in (0, 1) (the share to remove), got {r!r}")
        out.append(v)
    names = [f"{v:.6g}" for v in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{name}: {', '.join(twice)} given more than once")
    return out


def check_batches(batches: Any, name: str = "latency_batches") -> list[int]:
    """Batch sizes for latency (empty: no timing), integers >= 1, none twice."""
    if isinstance(batches, int) and not isinstance(batches, bool):
        batches = [batches]
    batches = _listed(batches)
    if not isinstance(batches, list):
        raise ValueError(f"{name} must be a list of batch sizes, got {batches!r} ({type(batches).__name__})")
    out = [integer(name, b, 1) for b in batches]
    if len(set(out)) < len(out):
        raise ValueError(f"{name}: a batch size is given more than once: {out}")
    return out


def check_out(out: Any, name: str = "out") -> Path:
    """The study directory: new, empty, or one holding a study (study.json); a file, the file-system root or another
    directory is refused."""
    out = path(name, out)
    if out.resolve() == Path(out.resolve().anchor):
        raise StudyError(f"{name} {out} is the root of the file system; choose a new or empty directory")
    if out.exists() and not out.is_dir():
        raise StudyError(f"{name} {out} is a file, not a directory")
    if out.is_dir() and not (out / STUDY_FILE).exists() and any(out.iterdir()):
        raise StudyError(
            f"{name} {out} holds files but no {STUDY_FILE}: it is not a vltrim study; choose a new or empty directory"
        )
    return out


def cells_of(methods: Sequence[str], ratios: Sequence[float]) -> list[Cell]:
    """One cell per method x ratio; 2:4 is one cell at its fixed 50% whatever the ratios."""
    return [c for m in methods for c in ([Cell(m, 0.5)] if m == SEMI else [Cell(m, r) for r in ratios])]


# ---- Pareto front (pure) ---------------------------------------------------------------------------------------
def pareto_front(costs: Sequence[float], metrics: Sequence[float]) -> list[bool]:
    """For each point, whether it is on the Pareto front: no other point has a cost <= and a metric >= with at
    least one of them strictly better (lower cost, higher metric). Equal points are all on the front."""
    n = len(costs)
    if len(metrics) != n:
        raise ValueError(f"costs and metrics differ in length ({n} vs {len(metrics)})")
    return [
        not any(
            costs[j] <= costs[i] and metrics[j] >= metrics[i] and (costs[j] < costs[i] or metrics[j] > metrics[i])
            for j in range(n)
            if j != i
        )
        for i in range(n)
    ]


# ---- fingerprints, atomic files ---------------------------------------------------------------------------------
def data_digest(data: Any) -> dict[str, Any]:
    """The data's size and content fingerprint: SHA-256 over every item, in order (`vltrim.data.fingerprint`), so a
    rerun with one item changed anywhere recomputes its cells instead of reporting stale metrics."""
    return fingerprint(data)


def _checksum(rec: dict[str, Any]) -> str:
    """SHA-256 of a cell record's canonical JSON without its own "checksum" key."""
    body = json.dumps({k: v for k, v in rec.items() if k != "checksum"}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def _write_cell(file: Path, rec: dict[str, Any]) -> None:
    """A cell record with its checksum (a hand-edited or damaged file is then not reused), written atomically."""
    rec = json.loads(json.dumps(rec, default=str))  # as read back: the checksum covers what the file holds
    _write_atomic(file, json.dumps({**rec, "checksum": _checksum(rec)}, indent=1))


def _read_cell(file: Path) -> dict[str, Any] | None:
    """A cell record whose checksum matches (None: no file, unreadable, no checksum or edited); a record that is
    there but does not match its checksum is recomputed, with a warning saying so."""
    rec = _read(file)
    if rec is None:
        return None
    if rec.get("checksum") != _checksum(rec):
        why = "has no checksum (written by an older vltrim)" if "checksum" not in rec else "does not match its checksum"
        warnings.warn(
            f"{file} {why}: it was edited or damaged since the study wrote it, so it is not reused; recomputing it",
            stacklevel=3,
        )
        return None
    return rec


def _write_atomic(file: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``file``, then rename it over ``file`` (never half written)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.parent / f".{file.name}.tmp-{secrets.token_hex(4)}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)


def _read(file: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


# ---- the study -----------------------------------------------------------------------------------------------------
def study(
    model: nn.Module,
    task: str = "retrieval",
    train_data: Any = None,
    eval_data: Any = None,
    methods: Sequence[str] | str = DEFAULT_METHODS,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    retrain_steps: int = 100,
    search_steps: int | None = None,
    out: str | Path = "study",
    seed: int = 0,
    batch_size: int | None = None,
    latency_batches: Sequence[int] = (1, 32),
    latency_rounds: int = 15,
    latency_warmup: int = 3,
    min_round_s: float = 0.05,
    method_settings: dict[str, dict[str, Any]] | None = None,
    compress_options: dict[str, Any] | None = None,
    override: bool = False,
    progress: bool = True,
) -> StudyResult:
    """Compress ``model`` with every method at every ratio (one `vltrim.compress` per cell, the same
    ``retrain_steps``, ``seed`` and data), evaluate each on ``eval_data`` with the task's metric, then time all
    cells and the original in one interleaved run per batch of ``latency_batches``; write results and plots to ``out``.

    ``methods``: compress methods (see `vltrim.methods.available()`) and ``"2:4"`` (magnitude, 2:4 pattern, one
    cell at 50%). ``ratios`` in (0, 1): magnitude's sparsity; distill's share of layers dropped (keeps
    round((1 - r) x layers), at least 1); every other method's share of prunable params removed. ``search_steps``
    (training-based searches: upop): None = ``retrain_steps``; recorded per row. ``method_settings`` per method
    name (e.g. ``{"lowrank": {"mode": "energy", "energy": 0.9}}``); ``compress_options`` go to every compress call
    (e.g. ``{"kd_weight": 0.5, "align": 1}``; budget options such as align or metric only to the methods that take them). Every option and every cell's compress options are checked before
    any work. A rerun with the same settings skips finished cells (``out/cells/<cell>.json``); an ``out`` holding a
    study of another model, data, task or settings is refused unless ``override`` (its cells are then recomputed).
    The data is compared by content (SHA-256 over every item of train_data and eval_data), so one changed caption
    is a change; a cell file that does not match its checksum (edited by hand) is recomputed, with a warning.
    ``latency_rounds`` / ``latency_warmup`` / ``min_round_s``: timing rounds (median reported), warm-up calls, and
    the least seconds of one round. ``model`` is not changed."""
    o = _check(locals())
    with kept_modes(model):
        model.eval()
        return _run(model, o)


def _check(a: dict[str, Any]) -> dict[str, Any]:
    """Every option, the out directory and each cell's compress options, checked before any work."""
    model = a["model"]
    usable_model(model)
    o: dict[str, Any] = {"task": get_task(text("task", a["task"]))}
    o["methods"], o["ratios"] = check_methods(a["methods"]), check_ratios(a["ratios"])
    o["latency_batches"] = check_batches(a["latency_batches"])
    o["retrain_steps"] = integer("retrain_steps", a["retrain_steps"])
    o["search_steps"] = o["retrain_steps"] if a["search_steps"] is None else integer("search_steps", a["search_steps"])
    o["seed"] = integer("seed", a["seed"])
    o["batch_size"] = None if a["batch_size"] is None else integer("batch_size", a["batch_size"], 1)
    o["latency_rounds"] = integer("latency_rounds", a["latency_rounds"], 1)
    o["latency_warmup"] = integer("latency_warmup", a["latency_warmup"])
    o["min_round_s"] = number("min_round_s", a["min_round_s"], low_open=False)
    o["override"], o["progress"] = flag("override", a["override"]), flag("progress", a["progress"])
    if a["eval_data"] is None:
        raise ValueError(
            f"eval_data is needed: every cell is judged by the {o['task'].name} task's {o['task'].metric} on it"
        )
    o["train_data"], o["eval_data"] = a["train_data"], a["eval_data"]
    train = as_dataset(a["train_data"], "train_data")[0] if a["train_data"] is not None else None
    evald = as_dataset(a["eval_data"], "eval_data")[0]
    o["method_settings"] = _settings_per_method(a["method_settings"], o["methods"])
    o["compress_options"] = _compress_options(a["compress_options"])
    if SEMI in o["methods"]:
        for n, lin in get_adapter(model).linears(model).items():
            if isinstance(lin, nn.Linear):
                try:
                    check_semi_shape(lin.weight, repr(n))
                except ValueError as e:
                    raise ValueError(f"methods: '2:4' cannot run on this {type(model).__name__}: {e}") from None
    o["out"] = check_out(a["out"])
    o["cells"] = cells_of(o["methods"], o["ratios"])
    o["settings"] = {
        "format": FORMAT,
        "version": VERSION,
        "model_class": class_name(model),
        "model": model_fingerprint(model),
        "task": o["task"].name,
        "metric": o["task"].metric,
        "train_data": data_digest(train) if train is not None else None,
        "eval_data": data_digest(evald),
        "retrain_steps": o["retrain_steps"],
        "seed": o["seed"],
        "batch_size": o["batch_size"],
        "compress_options": o["compress_options"],
    }
    _check_existing(o)
    o["unreachable"] = {}
    for cell in o["cells"]:
        try:
            ns = _checked(_compress_call(model, o, cell, progress=False))
        except (ValueError, TypeError) as e:
            raise (TypeError if isinstance(e, TypeError) else ValueError)(
                f"{cell.method} at ratio {cell.ratio:g}: {e}"
            ) from None
        why = unreachable(model, ns)
        if why:
            o["unreachable"][cell.name] = why
    return o


def _default(m: Method, key: str, given: dict[str, Any], fallback: Any) -> Any:
    """A setting as given, else its default in the method's Config, else ``fallback`` (a setting it does not take)."""
    return given[key] if key in given else m.Config.defaults().get(key, fallback)


def unreachable(model: nn.Module, o: Any) -> str | None:
    """Why the cell that compress options ``o`` (`compress._checked`'s) describe cannot reach its target, found from
    shapes alone before any work (None: reachable, or not knowable before the search). Keep-based methods cut
    aligned unit chunks of their groups (`select` with flat scores removes every chunk it may); lowrank's global
    mode stops at rank ``align`` per Linear (`global_ranks` with flat energies)."""
    m = o.m
    if m is None or m.name == "distill":
        return None
    given = {**o.budget_options, **o.method_settings}
    metric, align = _default(m, "metric", given, "params"), _default(m, "align", given, 8)
    try:
        if m.name == "lowrank":
            if _default(m, "mode", given, "global") != "global":
                return None
            adapter = get_adapter(model)
            tokens = adapter.linear_tokens(model)
            layers = [
                Layer(
                    n,
                    lin.out_features,
                    lin.in_features,
                    tokens[n],
                    torch.full(
                        (min(lin.out_features, lin.in_features),),
                        1.0 / min(lin.out_features, lin.in_features),
                        dtype=torch.float64,
                    ),
                )
                for n, lin in adapter.linears(model).items()
                if isinstance(lin, nn.Linear)
            ]
            global_ranks(layers, Budget(o.target, metric, align))
        elif "units" in given and not _default(m, "depth_share", given, 0.0):
            groups = prunable_groups(model, given["units"], _default(m, "modalities", given, None))
            budget = Budget(
                o.target,
                metric,
                align,
                _default(m, "allocation", given, ALLOCATION) or ALLOCATION,
                _default(m, "max_ratio", given, MAX_RATIO),
            )
            select(groups, {g.name: torch.zeros(g.size) for g in groups}, budget)
    except ValueError as e:
        return str(e)
    return None


def _settings_per_method(settings: Any, methods: list[str]) -> dict[str, dict[str, Any]]:
    if settings is None:
        return {}
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise TypeError(f"method_settings must map a method name to a dict of its settings, got {settings!r}")
    extra = sorted(set(settings) - set(methods))
    if extra:
        raise ValueError(
            f"method_settings names {', '.join(map(str, extra))}, not among methods ({', '.join(methods)})"
        )
    return {k: dict(v) for k, v in settings.items()}


def _compress_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"compress_options must be a dict of vltrim.compress options, got {type(options).__name__}")
    allowed = set(CompressOptions.names()) - OWN_OPTIONS
    bad = sorted(set(options) - allowed)
    if bad:
        raise ValueError(
            f"compress_options: {', '.join(map(str, bad))} "
            f"{'is' if len(bad) == 1 else 'are'} set by the study itself or not compress options; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return dict(options)


def _compress_call(model: nn.Module, o: dict[str, Any], cell: Cell, progress: bool) -> dict[str, Any]:
    """compress's arguments for ``cell``, all of them (defaults applied), as `compress._checked` takes them."""
    args = cell.compress_args(o["method_settings"])
    m = get_method(args["method"])
    takes = m.Config.budget()
    # a budget option (align=1, metric='macs') goes to the methods that take it; compress refuses it for the others
    options = {k: v for k, v in o["compress_options"].items() if k not in BUDGET_OPTIONS or k in takes}
    kw = dict(
        task=o["task"].name,
        train_data=o["train_data"],
        eval_data=o["eval_data"],
        retrain_steps=o["retrain_steps"],
        search_steps=o["search_steps"],
        seed=o["seed"],
        batch_size=o["batch_size"],
        latency_batch=0,
        evaluate_before=False,
        progress=progress,
        **options,
        **args,
    )
    return CompressOptions(model, **kw).kwargs()


def _cell_key(o: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """What a finished cell depends on: the study's settings, its method, ratio and settings (and search steps
    for training-based searches)."""
    args = cell.compress_args(o["method_settings"])
    searches = get_method(args["method"]).descriptor.trains
    return _plain(
        {
            **o["settings"],
            "method": cell.method,
            "ratio": cell.ratio,
            "method_settings": args["method_settings"],
            **({"search_steps": o["search_steps"]} if searches else {}),
        }
    )


DATA_SETTINGS = ("train_data", "eval_data")  # compared by content fingerprint, named by `data_change`


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'name: made with A, now B' for every setting that differs (missing on one side included); the data first,
    as 'train data (train_data): other content, same size (32 items)'."""
    data = [c for k in DATA_SETTINGS if (c := data_change(k, saved.get(k), now.get(k))) is not None]
    return data + [
        f"{k}: made with {saved.get(k, '<not recorded>')!r}, now {now.get(k, '<not recorded>')!r}"
        for k in sorted(set(saved) | set(now))
        if k not in DATA_SETTINGS and saved.get(k, "<not recorded>") != now.get(k, "<not recorded>")
    ]


def _check_existing(o: dict[str, Any]) -> None:
    """Refuse (unless override) an out directory whose study or finished cells were made with other settings."""
    out, now = o["out"], _plain(o["settings"])
    diffs: list[str] = []
    rec = _read(out / STUDY_FILE) if (out / STUDY_FILE).exists() else None
    if (out / STUDY_FILE).exists():
        if rec is None or rec.get("format") != FORMAT or not isinstance(rec.get("settings"), dict):
            diffs.append(f"{out / STUDY_FILE} is not a readable vltrim study record")
        else:
            diffs += differences(rec["settings"], now)
    for cell in o["cells"]:
        c = _read(out / CELLS / f"{cell.name}.json")
        if c is not None and isinstance(c.get("key"), dict) and not diffs:
            diffs += [f"cell {cell.name}: {d}" for d in differences(c["key"], _cell_key(o, cell))]
    if diffs and not o["override"]:
        raise StudyError(
            f"{out} holds a study made with other settings:\n  "
            + "\n  ".join(diffs[:20])
            + "\nuse another out directory, rerun with the original settings, or pass override=True "
            "(CLI: --override) to recompute its cells with these"
        )


def _run(model: nn.Module, o: dict[str, Any]) -> StudyResult:
    out = o["out"]
    if o["unreachable"] and o["progress"]:
        for name, why in o["unreachable"].items():
            console.print(f"study: cell {name} is not run: {why}", highlight=False, markup=False)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(
        out / STUDY_FILE,
        json.dumps({"format": FORMAT, "version": VERSION, "settings": _plain(o["settings"])}, indent=1),
    )
    ref1 = get_adapter(model).reference_inputs(model, 1)
    records: dict[str, dict[str, Any]] = {}
    with bar(o["progress"]) as pb:
        job = pb.add_task("study", total=len(o["cells"]) + 1 + len(o["latency_batches"]), info="original")
        records[ORIGINAL] = _original(model, o, ref1)
        pb.update(job, advance=1, info="original")
        for cell in o["cells"]:
            if cell.name in o["unreachable"]:
                records[cell.name] = {
                    "cell": cell.name,
                    "method": cell.method,
                    "ratio": cell.ratio,
                    "metrics": {},
                    "achieved": f"not run: {o['unreachable'][cell.name]}",
                }
                pb.update(job, advance=1, info=f"{cell.name} not reachable")
                continue
            rec = _finished(o, cell)
            if rec is None:
                pb.update(job, advance=0, info=cell.name)
                rec = _run_cell(model, o, cell, ref1)
            records[cell.name] = rec
            pb.update(job, advance=1, info=f"{cell.name} {'(cached)' if rec.get('cached') else 'done'}")
        lat = _latency(model, o, pb, job)
    rows = _rows(o, records, lat)
    mach = machine()
    files = _write_results(o, rows, mach)
    return StudyResult(rows, out, files, mach, o["settings"])


def _original(model: nn.Module, o: dict[str, Any], ref1: dict[str, Any]) -> dict[str, Any]:
    """The baseline's metric, params and MACs (read back from cells/original.json when it matches)."""
    file = o["out"] / CELLS / f"{ORIGINAL}.json"
    key = _plain(o["settings"])
    rec = _read_cell(file) if file.exists() else None
    if rec is not None and rec.get("key") == key:
        return rec
    rec = {
        "cell": ORIGINAL,
        "key": key,
        "metrics": o["task"].evaluate(model, as_dataset(o["eval_data"], "eval_data")[0]),
        "params": count_params(model),
        "nonzero_params": _nonzero(model),
        "macs": count_macs(model, ref1),
    }
    _write_cell(file, rec)
    return rec


def _finished(o: dict[str, Any], cell: Cell) -> dict[str, Any] | None:
    """The cell's record if it was finished with these settings and its model directory is there."""
    file = o["out"] / CELLS / f"{cell.name}.json"
    rec = _read_cell(file) if file.exists() else None
    if rec is None or rec.get("key") != _cell_key(o, cell) or not (o["out"] / MODELS / cell.name / vio.PLAN).exists():
        return None
    return {**rec, "cached": True}


def _nonzero(model: nn.Module) -> int:
    return sum(int(p.count_nonzero()) for p in model.parameters())


def _run_cell(model: nn.Module, o: dict[str, Any], cell: Cell, ref1: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        res = compress(**_compress_call(model, o, cell, progress=o["progress"]))
        vio.save(res.model, o["out"] / MODELS / cell.name)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - the cell is named; finished cells stay
        raise StudyCellError(
            f"cell {cell.name} ({cell.method} at ratio {cell.ratio:g}) failed: {type(e).__name__}: {e}; "
            f"the cells finished before it are kept in {o['out'] / CELLS}, rerun to continue"
        ) from e
    wall = time.perf_counter() - started
    small = res.model
    rec = {
        "cell": cell.name,
        "method": cell.method,
        "ratio": cell.ratio,
        "key": _cell_key(o, cell),
        "metrics": res.report.get("after", {}),
        "params": count_params(small),
        "nonzero_params": _nonzero(small),
        "macs": count_macs(small, ref1),
        "search_steps": res.report.get("search_steps", 0),
        "retrain_steps": res.report.get("retrain_steps", o["retrain_steps"]),
        "wall_s": round(wall, 2),
        "search_s": res.report.get("search_seconds"),
        "achieved": _achieved_text(model, cell, res.plan),
        "plan_achieved": res.plan.achieved,
        "model_dir": f"{MODELS}/{cell.name}",
    }
    _write_cell(o["out"] / CELLS / f"{cell.name}.json", rec)
    return rec


def _achieved_text(model: nn.Module, cell: Cell, plan: Any) -> str:
    """What the cell's plan removed, in a few words (the ratio means different things per method)."""
    a = plan.achieved or {}
    if plan.sparsify:
        return f"{a.get('sparsity', 0):.1%} of block-Linear weights zero ({'2:4' if cell.method == SEMI else 'unstructured'})"
    if cell.method == "distill":
        depth = {t.name: len(t.layers) for t in get_adapter(model).towers(model) if len(t.layers)}
        kept = plan.settings.get("layers", {})
        return "layers kept " + ", ".join(f"{t} {kept.get(t, d)}/{d}" for t, d in depth.items())
    if "params_removed" in a:
        what = (
            "block-Linear params (factorised)"
            if plan.factorize
            else f"prunable params ({', '.join(sorted(set(plan.kinds.values())))})"
        )
        return f"{a['params_removed']:.1%} of {what} removed"
    return ""


def _latency(model: nn.Module, o: dict[str, Any], pb: Any, job: int) -> dict[int, dict[str, dict[str, float]]]:
    """Every cell's model, reloaded from out/models, and the original, timed in one interleaved run per batch size."""
    if not o["latency_batches"]:
        return {}
    dev = next(model.parameters()).device
    models = {ORIGINAL: model}
    for cell in o["cells"]:
        if cell.name in o["unreachable"]:
            continue
        try:
            models[cell.name] = vio.load(o["out"] / MODELS / cell.name, device=dev)
        except vio.ModelDirError as e:
            raise StudyCellError(
                f"cell {cell.name}: its model does not load ({e}); delete {o['out'] / CELLS / cell.name}.json "
                "and rerun to recompute it"
            ) from None
    names = list(models)
    result: dict[int, dict[str, dict[str, float]]] = {}
    for b in o["latency_batches"]:
        pb.update(job, advance=0, info=f"latency, batch {b}")
        inputs = get_adapter(model).reference_inputs(model, b)
        with kept_modes(*models.values()):
            for m in models.values():
                m.eval()
            times = _time_rounds(
                [_runner(models[n], inputs) for n in names], o["latency_rounds"], o["latency_warmup"], o["min_round_s"]
            )
        result[b] = {n: {**_latency_stats(t), **paired_speedup(times[0], t)} for n, t in zip(names, times)}
        pb.update(job, advance=1, info=f"latency, batch {b}")
    return result


# ---- results ------------------------------------------------------------------------------------------------------
def _rows(
    o: dict[str, Any], records: dict[str, dict[str, Any]], lat: dict[int, dict[str, dict[str, float]]]
) -> list[dict[str, Any]]:
    key = o["task"].metric
    teacher = records[ORIGINAL]["metrics"].get(key)
    rows = []
    for name, rec in records.items():
        metric = rec["metrics"].get(key)
        row = {
            "cell": name,
            "method": rec.get("method", ORIGINAL),
            "ratio": rec.get("ratio"),
            "achieved": rec.get("achieved", ""),
            "metric": metric,
            "metric_vs_teacher": metric / teacher if metric is not None and teacher else None,
            "params": rec.get("params"),
            "nonzero_params": rec.get("nonzero_params"),
            "macs": rec.get("macs"),
        }
        for b, per in lat.items():
            t = per.get(name, {})
            row[f"latency_b{b}_ms"], row[f"latency_b{b}_iqr_ms"], row[f"speedup_b{b}"] = (
                t.get("latency_ms"),
                t.get("latency_iqr_ms"),
                t.get("speedup"),
            )
            row[f"speedup_b{b}_conclusive"] = t.get("speedup_conclusive")
        row.update(
            search_steps=rec.get("search_steps"),
            retrain_steps=rec.get("retrain_steps"),
            wall_s=rec.get("wall_s"),
            cached=bool(rec.get("cached")),
        )
        rows.append(row)
    for cost, label in [*((f"latency_b{b}_ms", f"latency b{b}") for b in lat), ("params", "params"), ("macs", "MACs")]:
        ok = [r for r in rows if r["metric"] is not None and r[cost] is not None]
        front = pareto_front([r[cost] for r in ok], [r["metric"] for r in ok])
        for r, on in zip(ok, front):
            r.setdefault("pareto", [])
            if on:
                r["pareto"].append(label)
    for r in rows:
        r["pareto"] = ", ".join(r.get("pareto", []))
    return rows


def _columns(lat_batches: list[int]) -> list[str]:
    cols = ["cell", "method", "ratio", "achieved", "metric", "metric_vs_teacher", "params", "nonzero_params", "macs"]
    for b in lat_batches:
        cols += [f"latency_b{b}_ms", f"latency_b{b}_iqr_ms", f"speedup_b{b}"]
    return cols + ["search_steps", "retrain_steps", "wall_s", "pareto"]


def _write_results(o: dict[str, Any], rows: list[dict[str, Any]], mach: dict[str, Any]) -> dict[str, Path]:
    out, batches = o["out"], o["latency_batches"]
    cols = _columns(batches)
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    files = {"csv": out / "results.csv", "md": out / "results.md", "json": out / "results.json"}
    _write_atomic(files["csv"], buf.getvalue())
    _write_atomic(files["md"], _markdown(o, rows, mach))
    _write_atomic(
        files["json"],
        json.dumps(
            {
                "settings": _plain(o["settings"]),
                "machine": mach,
                "metric": o["task"].metric,
                "latency_batches": batches,
                "rows": rows,
            },
            indent=1,
            default=str,
        ),
    )
    plots = [("params", "params", "metric_vs_params"), ("macs", "MACs (batch 1)", "metric_vs_macs")]
    plots += [
        (f"latency_b{b}_ms", f"latency ms, batch {b} (one interleaved run)", f"metric_vs_latency_b{b}") for b in batches
    ]
    for key, label, stem in plots:
        files[stem] = out / f"{stem}.png"
        _plot(rows, key, label, o["task"].metric, files[stem])
    return files


def _fmt_ratio(r: dict[str, Any]) -> str:
    if r["ratio"] is None:
        return "-"
    return f"{r['ratio']:g} (fixed)" if r["method"] == SEMI else f"{r['ratio']:g}"


def _markdown(o: dict[str, Any], rows: list[dict[str, Any]], mach: dict[str, Any]) -> str:
    s, batches, metric = o["settings"], o["latency_batches"], o["task"].metric
    head = ["method", "ratio", "achieved", metric, "of teacher", "params", "MACs (b1)"]
    for b in batches:
        head += [f"latency b{b} ms", f"speedup b{b}"]
    head += ["search + retrain steps", "cell wall s", "Pareto front"]
    lines = [
        f"# Compression study: {s['model_class']}, task {s['task']}",
        "",
        f"Every cell is one `vltrim.compress` run with {s['retrain_steps']} retraining steps (seed {s['seed']}); "
        f"training-based searches (upop) also search {o['search_steps']} steps. Metric: {metric} on "
        f"{s['eval_data']['items']} evaluation items.",
        "",
        "Ratio: magnitude = share of block-Linear weights zeroed (weights stay dense: params, MACs and CPU time do not "
        "change); 2:4 = magnitude with the 2:4 pattern, one cell at its fixed 50% sparsity whatever the ratios; distill = "
        "share of layers dropped (the student keeps round((1 - ratio) x layers) of every tower, at least 1); every other "
        "method = share of prunable params removed. 'Pareto front': the costs on which no other row has both a lower "
        "or equal cost and a higher or equal metric (one strictly better).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [
            r["method"],
            _fmt_ratio(r),
            r["achieved"] or "-",
            _f(r["metric"], ".4f"),
            _f(r["metric_vs_teacher"], ".1%"),
            _f(r["params"], ","),
            _f(r["macs"], ","),
        ]
        for b in batches:
            conclusive = r.get(f"speedup_b{b}_conclusive") is not False
            cells += [
                _f(r.get(f"latency_b{b}_ms"), ".3f"),
                _f(r.get(f"speedup_b{b}"), ".2f", "x" if conclusive else "x?"),
            ]
        steps = "-" if r["cell"] == ORIGINAL or r["metric"] is None else f"{r['search_steps']} + {r['retrain_steps']}"
        cells += [steps, _f(r["wall_s"], ".1f"), r["pareto"] or "-"]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    where = mach["gpu"] or f"{mach['cpu']}, {mach['cores']} cores, {mach['torch_threads']} torch threads"
    lines += [
        "",
        f"Latency: every model reloaded from `models/<cell>/` and timed with the original in one interleaved run per "
        f"batch ({o['latency_rounds']} rounds, median; speedup = median over rounds of the original's time / the cell's "
        "in the same round; 'x?': not conclusive, the middle half of the paired rounds lies on both sides of 1x or "
        "spreads wide, as on a busy machine). Compare ratios within this table, not absolute times across runs."
        if batches
        else "Latency: not measured (latency_batches empty).",
        "",
        f"Measured on: {where}; {mach['platform']}; torch {mach['torch']}, transformers {mach['transformers']}, "
        f"Python {mach['python']}.",
        "",
    ]
    return "\n".join(lines)


def _f(v: Any, spec: str, suffix: str = "") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec) + suffix


def _point_labels(rows: list[dict[str, Any]], key: str) -> dict[tuple[float, float], str]:
    """One annotation per plotted position: its cells' ratios, with the methods named where several cells share it."""
    at: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for r in rows:
        at.setdefault((r[key], r["metric"]), []).append(r)
    return {
        xy: f"{rs[0]['ratio']:g}" if len(rs) == 1 else ", ".join(f"{r['method']} {r['ratio']:g}" for r in rs)
        for xy, rs in at.items()
    }


def _plot(rows: list[dict[str, Any]], key: str, xlabel: str, metric: str, file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, MaxNLocator

    pts = [r for r in rows if r.get(key) is not None and r["metric"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = "osD^vP<>Xhp"
    colours = plt.get_cmap("tab10").colors
    methods = list(dict.fromkeys(r["method"] for r in pts if r["cell"] != ORIGINAL))
    for i, m in enumerate(methods):  # hollow markers shrinking per method: cells at the same point stay visible
        mine = [r for r in pts if r["method"] == m and r["cell"] != ORIGINAL]
        ax.scatter(
            [r[key] for r in mine],
            [r["metric"] for r in mine],
            marker=markers[i % len(markers)],
            facecolors="none",
            edgecolors=colours[i % len(colours)],
            linewidths=1.6,
            s=max(25, 110 - 18 * i),
            label=m,
            zorder=3,
        )
    for (x, y), label in _point_labels([r for r in pts if r["cell"] != ORIGINAL], key).items():
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color="0.3")
    for r in pts:
        if r["cell"] == ORIGINAL:
            ax.scatter([r[key]], [r["metric"]], marker="*", s=220, color="black", label="original", zorder=4)
    front = sorted(
        (r for r in pts if _front_label(key) in r["pareto"].split(", ")), key=lambda r: (r[key], r["metric"])
    )
    if front:  # the front's points ringed (a one-point front has no line to draw), joined when there are several
        ax.scatter(
            [r[key] for r in front], [r["metric"] for r in front], s=260, facecolors="none", edgecolors="0.45",
            linestyle="--", linewidths=1.0, zorder=2, label=f"Pareto front ({len(front)} point{'s' * (len(front) > 1)})",
        )  # fmt: skip
        if len(front) > 1:
            ax.plot([r[key] for r in front], [r["metric"] for r in front], drawstyle="steps-post", ls="--",
                    color="0.45", lw=1.2, zorder=2)  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    if not key.startswith("latency"):
        ax.xaxis.set_major_formatter(EngFormatter(places=1, sep=""))
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    ax.set_title(f"{metric} vs {xlabel.split(' (')[0]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _front_label(key: str) -> str:
    if key.startswith("latency_b"):
        return f"latency b{key[len('latency_b') : -len('_ms')]}"
    return {"params": "params", "macs": "MACs"}[key]
