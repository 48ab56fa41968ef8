"""Human-readable output: model cards and markdown tables."""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from torch import nn

from .measure import count_params


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _num(v: Any, spec: str) -> str:
    """``v`` formatted with ``spec`` if it is a number; as text otherwise (a plan's metadata may hold anything)."""
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def model_card(model: nn.Module, plans: Sequence, extra: str = "") -> str:
    """README.md written next to a saved model: what it is, how it was pruned, how to load it."""
    from .adapters import class_name

    pruned = any(not p.empty for p in plans)
    lines = [
        f"# {class_name(model)} {'compressed' if pruned else 'saved'} with vltrim",
        "",
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
            lines.append(f"Target: zero {_num(t['sparsity'], '.1%')} of block-Linear weights ({how}); zeros are stored, "
                         "so params and MACs stay dense.")
        elif "energy" in t and "target" not in t:
            lines.append(f"Target: keep {_num(t['energy'], '.1%')} of each Linear's squared singular values, align={t.get('align')}.")
        elif t:
            lines.append(f"Target: remove {_num(t.get('target', 0), '.1%')} of prunable {t.get('metric', 'params')}, align={t.get('align')}.")
        rows = []
        if "params_removed" in a:
            rows.append(["prunable params removed", _num(a["params_removed"], ".1%")])
            rows.append(["prunable MACs removed", _num(a.get("macs_removed"), ".1%")])
        if "model_params_before" in a:
            rows.append(["model params", f"{_num(a['model_params_before'], ',')} -> {_num(a.get('model_params_after'), ',')}"])
            rows.append(["model MACs (reference input)", f"{_num(a.get('model_macs_before'), ',')} -> {_num(a.get('model_macs_after'), ',')}"])
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
            rows.append(["Linears factorised", f"{len(p.factorize)} (ranks {min(p.factorize.values())}-{max(p.factorize.values())})"])
        lines += [markdown_table(["", ""], rows), ""]
    if extra:
        lines += [extra, ""]
    return "\n".join(lines)
