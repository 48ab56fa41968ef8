"""Human-readable output: model cards, report.json beside a saved model, its kept-widths plot, markdown tables.

A saved model's report (``build_report``) is the run's own report from `vltrim.compress` (method, target, steps,
metric before / after search / after retraining, speed, ...; a chain's per-stage rows under ``stages``) plus what a
reader of the directory alone needs: the source model, every plan's method and settings, the data, the model's
params and MACs, the machine the latency was measured on, the kept widths per layer and tower, and warnings (loud
when a pruned model was not retrained). ``sections`` turns it into titled tables, rendered as markdown in the model
card (README.md) and with rich by `vltrim report`."""

from __future__ import annotations

import csv
import datetime
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vltrim._version import __version__
from vltrim.arch.apply import base_config
from vltrim.arch.base import block_linears
from vltrim.arch.registry import class_name, get_adapter
from vltrim.measure import cost_split, count_macs, count_params, machine, speedup_text
from vltrim.structure.factorize import FactorizedLinear
from vltrim.structure.groups import UnitKind

REPORT, WIDTHS_PNG = "report.json", "widths.png"
REPORT_FORMAT, REPORT_VERSION = "vltrim.report", 1
NOT_RETRAINED = "PRUNED WITHOUT RETRAINING"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _num(v: Any, spec: str) -> str:
    """``v`` formatted with ``spec`` if it is a number; as text otherwise (a plan's metadata may hold anything)."""
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def model_card(model: nn.Module, plans: Sequence, extra: str = "", report: dict[str, Any] | None = None) -> str:
    """README.md written next to a saved model: what it is, how it was made (``report``: report.json's content, see
    ``build_report``), how it was pruned, how to load it."""

    pruned = any(not p.empty for p in plans)
    lines = [f"# {class_name(model)} {'compressed' if pruned else 'saved'} with vltrim", ""]
    if report is not None:
        lines += [
            sections_markdown(report),
            f"The whole report: `{REPORT}` (print it with `vltrim report <this directory>`).",
            "",
        ]
    elif pruned:
        lines += [
            "> Note: saved without a compression report (no report.json): the source model, data, metrics and "
            "whether the model was retrained after pruning are not recorded. Save a `vltrim.compress` result "
            "(`vltrim.save(result, out)`) to record them.",
            "",
        ]
    lines += [
        f"Parameters now: **{count_params(model):,}**.",
        "",
        "Load it with:",
        "```python",
        "import vltrim",
        "model = vltrim.load('<this directory>')",
        "```",
        "",
        "or with transformers (vltrim must be installed: modeling_vltrim.py loads the model with vltrim.load):",
        "```python",
        "from transformers import AutoModel",
        "model = AutoModel.from_pretrained('<this directory>', trust_remote_code=True)",
        "```",
        "",
        "Without `trust_remote_code=True` transformers builds the unpruned architecture of config.json instead: sliced "
        "widths raise an error, while dropped layers and factorised Linears load with those weights re-initialised "
        "(a MISSING warning only). Use `trust_remote_code=True` or `vltrim.load`.",
        "",
        "`vltrim.json` records the SHA-256 of config.json, plan.json and model.safetensors; `vltrim.load` checks "
        "them and refuses edited files (pass `verify=False` to load files changed on purpose).",
        "",
    ]
    for i, p in enumerate(plans, 1):
        if p.empty:
            lines.append("Not pruned.")
            continue
        a, t = p.achieved, p.target
        lines += [f"## Plan {i}: `{p.method}`", ""]
        if "sparsity" in t and "target" not in t:
            how = f"{t.get('pattern')}, scope {t['scope']}" if "scope" in t else f"{t.get('pattern')}"
            lines.append(
                f"Target: zero {_num(t['sparsity'], '.1%')} of block-Linear weights ({how}); zeros are stored, "
                "so params and MACs stay dense."
            )
        elif "energy" in t and "target" not in t:
            lines.append(
                f"Target: keep {_num(t['energy'], '.1%')} of each Linear's squared singular values, align={t.get('align')}."
            )
        elif t:
            lines.append(
                f"Target: remove {_num(t.get('target', 0), '.1%')} of prunable {t.get('metric', 'params')}, align={t.get('align')}."
            )
        rows = []
        if "params_removed" in a:
            rows.append(["prunable params removed", _num(a["params_removed"], ".1%")])
            rows.append(["prunable MACs removed", _num(a.get("macs_removed"), ".1%")])
        if "model_params_before" in a:
            rows.append(
                ["model params", f"{_num(a['model_params_before'], ',')} -> {_num(a.get('model_params_after'), ',')}"]
            )
            rows.append(
                [
                    "model MACs (reference input)",
                    f"{_num(a.get('model_macs_before'), ',')} -> {_num(a.get('model_macs_after'), ',')}",
                ]
            )
        kinds = Counter(p.kinds.values())
        if kinds:
            rows.append(["groups pruned", ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))])
        if p.sparsify:
            pats = Counter(e["pattern"] for e in p.sparsify.values())
            rows.append(["Linears sparsified", ", ".join(f"{n} {k}" for k, n in sorted(pats.items()))])
            if "sparsity" in a:
                rows.append(["block-Linear weights zero", _num(a["sparsity"], ".1%")])
            if "nonzero_params" in a:
                rows.append(["nonzero params", _num(a["nonzero_params"], ",")])
        if p.factorize:
            rows.append(
                [
                    "Linears factorised",
                    f"{len(p.factorize)} (ranks {min(p.factorize.values())}-{max(p.factorize.values())})",
                ]
            )
        lines += [markdown_table(["", ""], rows), ""]
    if extra:
        lines += [extra, ""]
    return "\n".join(lines)


# ---- the report of a saved model ------------------------------------------------------------------------------
def build_report(
    model: nn.Module, plans: Sequence, run: dict[str, Any], source: str | Path | None = None
) -> dict[str, Any]:
    """report.json's content: the run's report (``run``: `CompressResult.report`) and what the directory alone must tell."""

    rep = {k: v for k, v in run.items() if k != "scores_table"}  # mope's table goes to mope.csv / mope.png
    rep.update(
        format=REPORT_FORMAT,
        version=REPORT_VERSION,
        written_by=f"vltrim {__version__}",
        saved_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        source=_source(model, plans, run, source),
        model=_costs_now(model),
        plans=[_plan_entry(p) for p in plans],
        widths=layer_widths(model, plans),
    )
    rep.setdefault("machine", machine())
    rep["warnings"] = report_warnings(rep)
    return rep


def report_text(rep: dict[str, Any]) -> str:
    """report.json's text (values JSON cannot hold, like paths, as strings)."""
    return json.dumps(rep, indent=1, default=str)


def _source(model: nn.Module, plans: Sequence, run: dict[str, Any], source: str | Path | None) -> dict[str, Any]:
    """The model it was compressed from: its name (the CLI's MODEL, the source directory, or config's _name_or_path),
    class, params and MACs (reference input, batch 1) as the first plan recorded them."""

    first = plans[0].achieved if plans else {}
    speed = run.get("speed") or {}
    name = (
        run.get("source_model")
        or (str(source) if source is not None else None)
        or getattr(base_config(model), "_name_or_path", "")
    )
    out = {
        "name": name or None,
        "class": class_name(model),
        "params": speed.get("a", {}).get("params", first.get("model_params_before")),
        "macs": first.get("model_macs_before"),
    }
    split = run.get("source_split") or speed.get("a", {}).get("split")
    return {**out, **({"split": split} if split else {})}


def _costs_now(model: nn.Module) -> dict[str, Any]:
    """Params and MACs (the adapter's reference input, batch 1) of the saved model."""

    out = {
        "class": class_name(model),
        "params": count_params(model),
        "macs": count_macs(model, get_adapter(model).reference_inputs(model, 1)),
        "macs_input": "reference input, batch 1",
    }
    return {**out, **({"split": split} if (split := cost_split(model)) else {})}


def _plan_entry(p: Any) -> dict[str, Any]:
    """One plan as report.json lists it: method, settings, target, what it achieved and what it changed."""
    return {
        "method": p.method,
        "settings": p.settings,
        "target": p.target,
        "achieved": p.achieved,
        "groups_sliced": len(p.keep),
        "linears_factorised": len(p.factorize),
        "linears_sparsified": len(p.sparsify),
    }


def steps_of(rep: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The run's steps with their own rows: a chain's stages, prune-retrain rounds, or the single run."""
    if rep.get("stages"):
        return [(f"stage {s.get('stage', i)} ({s.get('method')})", s) for i, s in enumerate(rep["stages"], 1)]
    if rep.get("rounds"):
        return [(f"round {r.get('round', i)}/{len(rep['rounds'])}", r) for i, r in enumerate(rep["rounds"], 1)]
    return [("", rep)]


def _total(rep: dict[str, Any], key: str) -> int:
    """Search or retrain steps of the whole run (a chain's stages added up)."""
    rows = rep.get("stages") or [rep]
    return sum(int(r.get(key) or 0) for r in rows if isinstance(r.get(key, 0), (int, float)))


def report_warnings(rep: dict[str, Any]) -> list[str]:
    """What a reader must know first: no retraining after pruning (loud), no evaluation, a large metric drop."""
    out = []
    pruned = any(
        p.get("groups_sliced") or p.get("linears_factorised") or p.get("linears_sparsified")
        for p in rep.get("plans", [])
    )
    if pruned and _total(rep, "retrain_steps") == 0:
        searched = _total(rep, "search_steps")
        how = (
            f"its weights trained only during the search ({searched} steps), not after the cut"
            if searched
            else "the remaining weights were never trained after the cut"
        )
        out.append(
            f"{NOT_RETRAINED}: this model was pruned and {how}. Expect a large accuracy drop; retrain it "
            "(compress with retrain_steps / --retrain-steps and training data) before using it."
        )
    if "after" not in rep:
        out.append("Not evaluated: no eval data was given, so the quality after compression is unknown.")
    kept = _kept_share(rep)
    if kept is not None and kept < 0.9:
        out.append(f"The task metric dropped to {kept:.0%} of the original's.")
    return out


def _main_metric(rep: dict[str, Any]) -> str | None:
    """The metric the summary compares (the first of mean_R@1, top1, cosine_to_teacher, else the first one)."""
    after = rep.get("after") or {}
    keys = [k for k, v in after.items() if isinstance(v, (int, float))]
    return next((k for k in ("mean_R@1", "top1", "cosine_to_teacher") if k in keys), keys[0] if keys else None)


def _kept_share(rep: dict[str, Any]) -> float | None:
    key = _main_metric(rep)
    before, after = (rep.get("before") or {}).get(key), (rep.get("after") or {}).get(key)
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)) or before <= 0:
        return None
    return after / before


# ---- kept widths per layer and tower --------------------------------------------------------------------------
def _parse_group(name: str) -> tuple[str, int | None, str]:
    """'vision.layers.3.attn.heads' -> ('vision', 3, 'attn.heads'); 'vision.layers' -> ('vision', None, 'layers')."""
    m = re.fullmatch(r"(.+?)\.layers(?:\.(\d+)\.(.+))?", name)
    if m is None:
        return name, None, name
    return m.group(1), None if m.group(2) is None else int(m.group(2)), m.group(3) or "layers"


def layer_widths(model: nn.Module, plans: Sequence) -> dict[str, list[dict[str, Any]]]:
    """Per tower, one row per original layer: [kept, original] heads, head dims and FFN neurons, or
    ``dropped: True`` for a removed layer (plans name layers by their index when applied, so drops are followed)."""

    alive, first, count = _follow_plans(plans)
    out = {}
    for t in get_adapter(model).towers(model):
        idx = alive.get(t.name, list(range(len(t.layers))))
        n = count.get(t.name, len(t.layers))
        rows: dict[int, dict[str, Any]] = {i: {"layer": i, "dropped": True} for i in range(n)}
        for cur, layer in enumerate(t.layers):
            b, o = t.block(layer), idx[cur]
            now = {
                k: v for a in b.sites for k, v in ((f"{a.name}.heads", a.units), (f"{a.name}.head_dims", a.head_dim))
            }
            now["mlp.neurons"] = b.neurons
            rows[o] = {"layer": o, **{_width_key(k): [v, first.get((t.name, o, k), v)] for k, v in now.items()}}
            ranks = {n: [f.rank, min(f.in_features, f.out_features)] for n, f in _factorised(b).items()}
            if ranks:
                rows[o]["low_rank"] = {"ranks": ranks, "params_kept": _low_rank_share(_factorised(b).values())}
        out[t.name] = [rows[i] for i in range(n)]
    return out


def _factorised(b: Any) -> dict[str, FactorizedLinear]:
    return {n: f for n, f in block_linears(b).items() if isinstance(f, FactorizedLinear)}


def _low_rank_share(lins: Any) -> float:
    """Params the factorised Linears keep: sum r * (in + out) over sum in * out."""
    lins = list(lins)
    return sum(f.rank * (f.in_features + f.out_features) for f in lins) / sum(
        f.in_features * f.out_features for f in lins
    )


def _width_key(group_key: str) -> str:
    """'attn.heads' -> 'heads', 'mlp.neurons' -> 'neurons'; another site's keys keep its name ('crossattn.heads')."""
    site, kind = group_key.split(".")
    return kind if site in ("attn", "mlp") else group_key


def _follow_plans(plans: Sequence) -> tuple[dict[str, list[int]], dict[tuple[str, int, str], int], dict[str, int]]:
    """Through the plans in order: the original index of every remaining layer per tower, the original size of every
    sliced group (tower, original layer, part), and each tower's original layer count (towers that lost layers)."""
    alive: dict[str, list[int]] = {}
    first: dict[tuple[str, int, str], int] = {}
    count: dict[str, int] = {}
    for p in plans:
        for name, size in p.sizes.items():  # widths first: a plan names them by the layer indices before its drops
            tower, layer, part = _parse_group(name)
            if layer is not None:
                first.setdefault((tower, alive[tower][layer] if tower in alive else layer, part), size)
        for name, keep in p.keep.items():
            tower, layer, _ = _parse_group(name)
            if layer is None and p.kinds.get(name) == "layers":
                cur = alive.get(tower, list(range(p.sizes[name])))
                count.setdefault(tower, p.sizes[name])
                alive[tower] = [cur[i] for i in keep]
    return alive, first, count


def widths_cut(widths: dict[str, list[dict[str, Any]]] | None) -> bool:
    """Whether any layer was dropped, any width cut or any Linear factorised (sparsified models keep every width)."""
    rows = [r for layers in (widths or {}).values() for r in layers]
    return any(
        r.get("dropped") or r.get("low_rank") or any(r[k][0] != r[k][1] for k in ("heads", "head_dims", "neurons"))
        for r in rows
    )


def _attention(row: dict[str, Any]) -> tuple[int, int]:
    """Kept and original q/k/v channels of a layer (heads x head dim)."""
    return row["heads"][0] * row["head_dims"][0], row["heads"][1] * row["head_dims"][1]


def _attention_label(row: dict[str, Any]) -> str:
    parts = [f"{row['heads'][0]}/{row['heads'][1]}h"] if row["heads"][0] != row["heads"][1] else []
    parts += [f"{row['head_dims'][0]}/{row['head_dims'][1]}d"] if row["head_dims"][0] != row["head_dims"][1] else []
    return "\n".join(parts)


def _low_rank_text(layers: list[dict[str, Any]]) -> str:
    """'54% (8 Linears, ranks 16-32)': what a tower's factorised Linears keep, averaged over its factorised layers."""
    lr = [r["low_rank"] for r in layers if r.get("low_rank")]
    if not lr:
        return "-"
    ranks = {n: v for x in lr for n, v in x["ranks"].items()}
    n = sum(len(x["ranks"]) for x in lr)
    return f"{sum(x['params_kept'] for x in lr) / len(lr):.0%} ({n} Linears, rank {_rank_text(ranks)})"


def width_summary(widths: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    """One row per tower: layers kept, attention width kept, FFN neurons kept (for the card and `vltrim report`)."""
    rows = []
    for tower, layers in widths.items():
        live = [r for r in layers if not r.get("dropped")]
        att = [_attention(r) for r in live]
        ffn = [r["neurons"] for r in live]
        share = lambda pairs: f"{sum(a for a, _ in pairs):,} / {sum(b for _, b in pairs):,}" if pairs else "-"  # noqa: E731
        rows.append([tower, f"{len(live)} / {len(layers)}", share(att), share(ffn)])
    return rows


def plot_widths(widths: dict[str, list[dict[str, Any]]], file: str | Path, title: str = "") -> Path:
    """PNG of the kept share of every layer's attention width and FFN neurons, one panel per tower; dropped layers
    hatched. Labels give kept/original heads (h), head dims (d) and neurons where a layer was cut."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    towers = [t for t, rows in widths.items() if rows]
    most = max((len(widths[t]) for t in towers), default=1)
    fig, axes = plt.subplots(
        len(towers) or 1, 1, figsize=(max(6.0, 0.5 * most + 2), 2.8 * max(len(towers), 1)), squeeze=False
    )
    for i, (ax, tower) in enumerate(zip(axes[:, 0], towers)):
        _width_panel(ax, tower, widths[tower], small=most > 12, legend=i == 0)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)
    return Path(file)


def _width_panel(ax: Any, tower: str, rows: list[dict[str, Any]], small: bool, legend: bool) -> None:
    """One tower's bars: attention (heads x head dim) and FFN neurons, kept / original, per original layer, and the
    params its factorised Linears keep when it has any. Every bar is labelled (a full one too: 'all 12h')."""
    lowrank = any(r.get("low_rank") for r in rows)
    n_bars = 3 if lowrank else 2
    w, font = 0.8 / n_bars, 6 if small else 7
    for i, r in enumerate(rows):
        if r.get("dropped"):
            ax.bar(i, 1.0, width=0.8, color="none", edgecolor="0.55", hatch="///", lw=0.8)
            ax.text(i, 0.5, "dropped", rotation=90, ha="center", va="center", fontsize=font, color="0.3")
            continue
        (ka, oa), (kn, on) = _attention(r), r["neurons"]
        bars = [
            (ka / oa, "tab:blue", _attention_label(r) or f"all {r['heads'][1]}h"),
            (kn / on, "tab:orange", f"{kn}/{on}" if kn != on else f"all {on}"),
        ]
        if lowrank:
            lr = r.get("low_rank")
            bars.append(
                (lr["params_kept"], "tab:green", f"r {_rank_text(lr['ranks'])}") if lr else (0, "none", "dense")
            )
        for j, (y, color, text) in enumerate(bars):
            x = i + (j - (n_bars - 1) / 2) * w
            ax.bar(x, y, width=w, color=color)
            ax.text(x, y + 0.02, text, rotation=90, ha="center", va="bottom", fontsize=font)
    live = sum(not r.get("dropped") for r in rows)
    ax.set_title(f"{tower}: {live} of {len(rows)} layers kept", fontsize=9)
    ax.set_xticks(range(len(rows)), [str(r["layer"]) for r in rows], fontsize=font + 1)
    ax.set_xlim(-0.7, len(rows) - 0.3)
    ax.set_ylim(0, 1.6)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("layer (original index)", fontsize=8)
    ax.set_ylabel("kept / original", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if not legend:
        return
    from matplotlib.patches import Patch

    handles = [
        Patch(color="tab:blue", label="attention (heads x head dim)"),
        Patch(color="tab:orange", label="FFN neurons"),
        Patch(facecolor="none", edgecolor="0.55", hatch="///", label="layer dropped"),
    ]
    if lowrank:
        handles.insert(2, Patch(color="tab:green", label="low-rank: params its factorised\nLinears keep (r = ranks)"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _rank_text(ranks: dict[str, list[int]]) -> str:
    """'32' when every factorised Linear of the layer has rank 32, else '16-48'."""
    rs = sorted({r for r, _ in ranks.values()})
    return str(rs[0]) if len(rs) == 1 else f"{rs[0]}-{rs[-1]}"


def readable_axes(ax: Any, x_engineering: bool = True, y_engineering: bool = False, bins: int = 6) -> None:
    """At most ``bins`` ticks per axis, large numbers as 1.2M / 350k, x labels tilted: tick labels never overlap."""
    from matplotlib.ticker import EngFormatter, MaxNLocator

    for axis, eng in ((ax.xaxis, x_engineering), (ax.yaxis, y_engineering)):
        axis.set_major_locator(MaxNLocator(nbins=bins))
        if eng:
            axis.set_major_formatter(EngFormatter(places=1, sep=""))
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")


# ---- sections: the same content as markdown (model card) and rich tables (`vltrim report`) --------------------
@dataclass
class Section:
    title: str
    headers: list[str]
    rows: list[list[Any]]
    note: str = ""


def sections(rep: dict[str, Any]) -> list[Section]:
    """The report as titled tables: model, method and settings, data and steps, quality, cost, kept widths."""
    out = [_model_section(rep), _method_section(rep), _data_section(rep), _quality_section(rep), _cost_section(rep)]
    if widths_cut(rep.get("widths")):
        headers = ["tower", "layers", "attention channels", "FFN neurons"]
        rows = width_summary(rep["widths"])
        if any(r.get("low_rank") for layers in rep["widths"].values() for r in layers):
            headers.append("factorised Linears: params kept")
            rows = [[*row, _low_rank_text(rep["widths"][row[0]])] for row in rows]
        out.append(Section("Kept widths", headers, rows, f"per layer: {WIDTHS_PNG}"))
    return [s for s in out if s.rows]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _model_section(rep: dict[str, Any]) -> Section:
    src, now = rep.get("source") or {}, rep.get("model") or {}
    rows = [
        ["source model", src.get("name") or "not recorded (compressed in memory, saved without source=)"],
        ["class", now.get("class") or src.get("class")],
        ["task", rep.get("task")],
        ["saved", f"{rep.get('saved_at', '-')} by {rep.get('written_by', '-')}"],
    ]
    return Section("Model", ["", ""], [[k, _fmt(v)] for k, v in rows])


def _method_section(rep: dict[str, Any]) -> Section:
    """One row per step (stage or round): method, target, what it achieved, search and retrain steps, settings."""
    rows: list[list[Any]] = []
    notes: list[str] = []
    plans, steps = rep.get("plans") or [], steps_of(rep)
    for i, (label, s) in enumerate(steps):
        method = s.get("method", rep.get("method"))
        settings = (
            plans[i]["settings"] if len(plans) == len(steps) else (s.get("settings") or {}).get("method_settings")
        )
        rows.append(
            [
                label or "1",
                _fmt(method),
                _target(s.get("target", rep.get("target"))),
                _achieved(s.get("plan")),
                _fmt(s.get("search_steps", rep.get("search_steps"))),
                _fmt(s.get("retrain_steps", rep.get("retrain_steps"))),
            ]
        )
        notes.append(f"{label or 'method'} settings: {_settings_text(settings)}")
    keys = ("metric", "units", "align", "allocation", "max_ratio")
    for label, b in [
        (label, s.get("settings") or rep.get("settings") or {})
        for label, s in (steps if rep.get("stages") else [("", rep)])
    ]:
        if b:
            notes.append(
                f"{label or 'method'} budget: " + ", ".join(f"{k} {b[k]}" for k in keys if b.get(k) is not None)
            )
    return Section(
        "Method and settings",
        ["step", "method", "target", "achieved", "search steps", "retrain steps"],
        rows,
        "\n".join(notes),
    )


def _target(t: Any) -> str:
    if isinstance(t, dict):
        t = t.get("target", t.get("sparsity", t))
    return f"{t:.1%}" if isinstance(t, float) else _fmt(t)


def _achieved(a: Any) -> str:
    if not isinstance(a, dict):
        return _fmt(a)
    parts = [
        f"{name} -{a[k]:.1%}"
        for k, name in (("params_removed", "params"), ("macs_removed", "MACs"))
        if isinstance(a.get(k), float)
    ]
    if isinstance(a.get("sparsity"), float):
        parts.append(f"{a['sparsity']:.1%} zeros")
    return ", ".join(parts) or "-"


def _settings_text(settings: Any) -> str:
    if not settings:
        return "-"
    text = (
        ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in settings.items())
        if isinstance(settings, dict)
        else str(settings)
    )
    return text if len(text) <= 300 else text[:297] + "..."


def _data_section(rep: dict[str, Any]) -> Section:
    data, given = rep.get("data") or {}, rep.get("data_given") or {}
    rows = [
        [f"{k} data", _data_text({**v, "source": given.get(k) or v.get("source")} if isinstance(v, dict) else v)]
        for k, v in data.items()
    ]
    s = rep.get("settings") or ((rep.get("stages") or [{}])[0].get("settings") or {})
    rows += [
        [k.replace("_", " "), _fmt(s[k])]
        for k in (
            "batch_size",
            "lr",
            "retrain_lr",
            "kd_weight",
            "kd_hidden",
            "kd_embed",
            "kd_attention",
            "task_weight",
            "seed",
            "mixed_precision",
        )
        if k in s
    ]
    if data or s:
        rows += [
            ["search steps (all steps)", _fmt(_total(rep, "search_steps"))],
            ["retrain steps (all steps)", _fmt(_total(rep, "retrain_steps"))],
        ]
    return Section("Data and steps", ["", ""], rows)


def _data_text(d: Any) -> str:
    if not isinstance(d, dict):
        return _fmt(d)
    if d.get("items") is None and not d.get("source"):
        return "none"
    what = f"{d.get('type', 'dataset')}, {_fmt(d.get('items'))} items"
    return f"{d['source']} ({what})" if d.get("source") else what


def _quality_section(rep: dict[str, Any]) -> Section:
    """Rows per metric: before, after search (after pruning, for a step whose search did not train) and after
    retraining of every step, and the share kept."""
    before, after = rep.get("before") or {}, rep.get("after") or {}
    steps = steps_of(rep)
    cols, getters = [], []
    for label, s in steps:
        tag = f"{label.split(' (')[0]}: " if label else ""
        searched = s.get("search_steps", rep.get("search_steps"))
        cols += [f"{tag}{'after search' if searched else 'after pruning'}", f"{tag}after retraining"]
        getters += [s.get("after_search") or {}, s.get("after") or {}]
    keys = list(dict.fromkeys([*before, *after]))
    rows = [
        [k, _fmt(before.get(k)), *(_fmt(g.get(k)) for g in getters), _share(before.get(k), after.get(k))]
        for k in keys
        if isinstance(after.get(k, before.get(k)), (int, float))
    ]
    return Section("Quality (task metric on the eval data)", ["metric", "before", *cols, "after / before"], rows)


def _share(a: Any, b: Any) -> str:
    return f"{b / a:.1%}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 else "-"


def _cost_section(rep: dict[str, Any]) -> Section:
    """Params, MACs and latency, original vs compressed, with where the latency was measured."""
    sp, src, now = rep.get("speed"), rep.get("source") or {}, rep.get("model") or {}
    rows = [
        ["params", _fmt(src.get("params")), _fmt(now.get("params")), _ratio(src.get("params"), now.get("params"))],
        [
            "MACs (reference input, batch 1)",
            _fmt(src.get("macs")),
            _fmt(now.get("macs")),
            _ratio(src.get("macs"), now.get("macs")),
        ],
    ]
    rows += split_rows((sp or {}).get("a", {}).get("split", src.get("split")), now.get("split"))
    if sp:
        a, b = sp["a"], sp["b"]
        rows.append(
            [
                f"latency ms (batch {sp.get('batch_size')}, median of {sp.get('rounds')} rounds)",
                f"{a['latency_ms']:.3f}",
                f"{b['latency_ms']:.3f}",
                speedup_text(sp),
            ]
        )
        note = f"latency measured on {_machine_text(rep.get('machine'), sp)}"
    else:
        note = "latency not measured (latency_batch=0)" if "speed" in rep else ""
    return Section("Cost", ["", "original", "compressed", "original / compressed"], rows, note)


SPLIT_PARTS = (("front_end", "front end (not prunable)"), ("blocks", "Transformer blocks"))


def split_rows(a: Any, b: Any) -> list[list[str]]:
    """A row per part of `vltrim.measure.cost_split` with its share of its model's params / MACs, original ``a`` vs
    compressed ``b`` (shares do not depend on the batch size); none when either has no split (no front end)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return []
    rows = []
    for key, label in SPLIT_PARTS:
        x, y = a.get(key) or {}, b.get(key) or {}
        if all(k in p for p in (x, y) for k in ("params_share", "macs_share")):
            cells = [f"{p['params_share']:.1%} / {p['macs_share']:.1%}" for p in (x, y)]
            rows.append([f"{label}: share of params / MACs", *cells, ""])
    return rows


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"


def _machine_text(m: Any, sp: dict[str, Any]) -> str:
    where = f"{sp.get('device')}, {sp.get('threads')} threads, {sp.get('dtype', 'float32')}"
    if not isinstance(m, dict):
        return where
    host = (
        m.get("gpu")
        if sp.get("device") not in (None, "cpu") and m.get("gpu")
        else f"{m.get('cpu')} ({m.get('cores')} cores)"
    )
    return f"{host}; {where}; torch {m.get('torch')}, transformers {m.get('transformers')}"


def sections_markdown(rep: dict[str, Any]) -> str:
    """The report's warnings and sections as markdown (the model card's body)."""
    lines = []
    for w in rep.get("warnings", []):
        loud = w.startswith(NOT_RETRAINED)
        lines += [f"> **WARNING: {w}**" if loud else f"> Note: {w}", ""]
    for s in sections(rep):
        cells = [[str(v).replace("|", "\\|").replace("\n", " ") for v in r] for r in s.rows]
        lines += [f"## {s.title}", "", markdown_table(s.headers, cells), ""]
        if s.note:
            note = (
                s.note.replace(WIDTHS_PNG, f"![kept widths per layer]({WIDTHS_PNG})")
                if s.title == "Kept widths"
                else s.note
            )
            lines += ["\n".join(f"- {ln}" for ln in note.splitlines()) if "\n" in note else note, ""]
    return "\n".join(lines)


def report_from_plans(plans: Sequence) -> dict[str, Any]:
    """What a directory saved without a report still tells: its plans (method, target, what they achieved)."""
    plans = [p for p in plans if not p.empty]
    first = plans[0].achieved if plans else {}
    last = plans[-1].achieved if plans else {}
    entries = [_plan_entry(p) for p in plans]
    rep: dict[str, Any] = {
        "source": {
            "class": plans[0].model_class if plans else None,
            "params": first.get("model_params_before"),
            "macs": first.get("model_macs_before"),
        },
        "model": {"params": last.get("model_params_after"), "macs": last.get("model_macs_after")},
        "plans": entries,
        "stages": [
            {"stage": i, "method": p.method, "target": p.target, "plan": p.achieved} for i, p in enumerate(plans, 1)
        ],
    }
    rep["warnings"] = (
        [
            "No report.json: this model was saved without a compression report (vltrim.save(model) or an older "
            "vltrim), so the source model, data, metrics and retraining are not recorded; shown: what plan.json "
            "holds."
        ]
        if plans
        else []
    )
    return rep


# ---- the MoPE table on disk ---------------------------------------------------------------------------------
TABLE_COLUMNS = ("group", "modality", "kind", "layer", "units", "error", "cost")


def save_mope_table(table: list[dict[str, Any]], out: str | Path) -> tuple[Path, Path]:
    """Write the MoPE table as ``mope.csv`` and its heat map as ``mope.png`` (one panel per tower: layers x
    heads then FFN groups, and the layer errors of the depth stage as the last column) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "mope.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        w.writeheader()
        w.writerows({k: r[k] for k in TABLE_COLUMNS} for r in table)
    _mope_heatmap(table, out / "mope.png")
    return out / "mope.csv", out / "mope.png"


def _mope_heatmap(table: list[dict[str, Any]], path: Path) -> None:
    """One panel per tower: a row per layer, the columns in sections (each attention site's heads, the FFN neuron
    groups, and the whole layer only when the depth stage scored layers), separated by white lines; a cell no
    module fills (a layer with fewer heads) is grey, not a colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    towers = sorted({r["group"].split(".layers")[0] for r in table})
    fig, axes = plt.subplots(1, len(towers), figsize=(6.5 * len(towers), 4.2), squeeze=False)
    for ax, tower in zip(axes[0], towers):
        rows = [r for r in table if r["group"].split(".layers")[0] == tower]
        sections = _mope_sections(rows)
        layers = 1 + max(r["layer"] for r in rows)
        grid = torch.full((layers, sum(w for _, w, _ in sections)), float("nan"))
        start, ticks, labels = 0, [], []
        for label, width, cells in sections:
            for i, v in cells.items():
                grid[i, start : start + len(v)] = torch.tensor(v)
            if start:
                ax.axvline(start - 0.5, color="white", lw=2.5)
            ticks.append(start + (width - 1) / 2)
            labels.append(label)
            start += width
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
        im = ax.imshow(grid.numpy(), aspect="auto", cmap=cmap, interpolation="nearest")
        ax.set_xticks(ticks, labels, fontsize=8)
        ax.set_title(f"{tower}: MoPE error (metric drop when the module is removed)", fontsize=9)
        ax.set_ylabel("layer")
        ax.set_yticks(range(layers))
        fig.colorbar(im, ax=ax, label="metric drop")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mope_sections(rows: list[dict[str, Any]]) -> list[tuple[str, int, dict[int, list[float]]]]:
    """(label, columns, per layer its errors in unit order) for each column section of a tower's heat map."""
    by: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        kind = r["kind"]
        if kind == UnitKind.HEADS.value:
            site = r["group"].rsplit(".", 2)[-2]
            key = "heads" if site == "attn" else f"{site} heads"
        else:
            key = {UnitKind.NEURONS.value: "FFN neuron groups", UnitKind.LAYERS.value: "whole layer"}.get(kind, kind)
        by.setdefault(key, {}).setdefault(r["layer"], []).append(r["error"])
    order = sorted(by, key=lambda k: (k == "whole layer", k == "FFN neuron groups", k))
    return [(k, max(len(v) for v in by[k].values()), by[k]) for k in order]
