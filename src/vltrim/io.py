"""A pruned model on disk: config.json (unpruned architecture) + plan.json + model.safetensors + README.md.

``load`` rebuilds the unpruned architecture from config.json, applies the plans to get the pruned
shapes, then loads the weights strictly: every tensor must be there with its exact shape."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from .adapters import get_adapter, model_class
from .api import BASE_CONFIG_ATTR, PLANS_ATTR, apply_plan, base_config, plans_of
from .structure.plan import Plan, PlanError

CONFIG, PLAN, WEIGHTS, CARD = "config.json", "plan.json", "model.safetensors", "README.md"


def save(model: nn.Module, path: str | Path, card_extra: str = "") -> Path:
    """Write the model directory; returns its path."""
    get_adapter(model)  # unsupported models fail before anything is written
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = base_config(model)
    (out / CONFIG).write_text(cfg.to_json_string(use_diff=False))
    plans = plans_of(model) or [Plan(type(model).__name__, {}, {}, {}, method="none")]
    payload = plans[0].to_dict() if len(plans) == 1 else {"format": "vltrim.plans", "plans": [p.to_dict() for p in plans]}
    (out / PLAN).write_text(json.dumps(payload, indent=1))
    save_model(model, str(out / WEIGHTS))
    from .report import model_card

    (out / CARD).write_text(model_card(model, plans, extra=card_extra))
    return out


def _read_plans(path: Path) -> list[Plan]:
    try:
        d = json.loads((path / PLAN).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} has no {PLAN}: not a vltrim model directory") from None
    except json.JSONDecodeError as e:
        raise PlanError(f"{path / PLAN} is not valid JSON: {e}") from None
    if isinstance(d, dict) and d.get("format") == "vltrim.plans":
        return [Plan.from_dict(p) for p in d["plans"]]
    return [Plan.from_dict(d)]


def _stored_dtype(file: Path) -> torch.dtype:
    """dtype of the first floating tensor in a safetensors file (the model is rebuilt in it)."""
    with safe_open(str(file), framework="pt") as f:
        for k in f.keys():
            t = f.get_slice(k)
            dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}.get(t.get_dtype())
            if dt is not None:
                return dt
    return torch.float32


def load(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by ``save`` (same class, same pruned shapes, bit-exact weights), in eval mode."""
    path = Path(path)
    plans = _read_plans(path)
    cls = model_class(plans[0].model_class)
    cfg = cls.config_class.from_dict(json.loads((path / CONFIG).read_text()))
    model = cls(cfg).to(_stored_dtype(path / WEIGHTS))
    for p in plans:
        if p.keep:
            model = apply_plan(model, p, inplace=True)
    missing_unexpected = load_model(model, str(path / WEIGHTS), strict=True, device=str(device))
    if any(missing_unexpected):  # load_model(strict=True) raises already; kept as a guard
        raise RuntimeError(f"weights do not match the architecture: {missing_unexpected}")
    model.to(device)
    setattr(model, BASE_CONFIG_ATTR, cfg)
    setattr(model, PLANS_ATTR, [p for p in plans if p.keep])
    return model.eval()
