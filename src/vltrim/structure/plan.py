"""Plan: the data a method produces and an adapter applies (kept indices for each group)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .groups import Group, UnitKind

PLAN_FORMAT = "vltrim.plan"
PLAN_VERSION = 1


class PlanError(ValueError):
    """A plan that cannot be applied to this model (wrong model, bad indices, malformed file)."""


@dataclass
class Plan:
    """For each pruned group, the sorted indices of the units to keep; groups not listed keep all.

    ``target`` and ``achieved`` record what was asked for and what the plan reaches, so a plan file
    alone says what it does.
    """

    model_class: str
    keep: dict[str, list[int]]
    sizes: dict[str, int]
    kinds: dict[str, str]
    method: str = "manual"
    settings: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    achieved: dict[str, Any] = field(default_factory=dict)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_keep(cls, model_class: str, groups: Iterable[Group], keep: dict[str, Iterable[int]], **meta) -> "Plan":
        """Build a plan from kept indices; sizes and kinds are read from ``groups``."""
        by_name = {g.name: g for g in groups}
        unknown = sorted(set(keep) - set(by_name))
        if unknown:
            raise PlanError(f"plan names groups this model does not have: {unknown[:5]}")
        return cls(
            model_class=model_class,
            keep={n: sorted(int(i) for i in idx) for n, idx in keep.items()},
            sizes={n: by_name[n].size for n in keep},
            kinds={n: by_name[n].kind.value for n in keep},
            **meta,
        )

    # ---- validation ---------------------------------------------------------------------------
    def validate(self, model_class: str, groups: Iterable[Group]) -> None:
        """Raise PlanError unless every group exists here with the same kind and size and its
        kept indices are unique, in range and not empty."""
        if self.model_class != model_class:
            raise PlanError(f"plan was made for {self.model_class}, not {model_class}")
        by_name = {g.name: g for g in groups}
        for name, idx in self.keep.items():
            g = by_name.get(name)
            if g is None:
                raise PlanError(f"plan group {name!r} does not exist in this {model_class}")
            if g.kind.value != self.kinds.get(name) or g.size != self.sizes.get(name):
                raise PlanError(
                    f"plan group {name!r} is {self.kinds.get(name)} x{self.sizes.get(name)}, "
                    f"the model has {g.kind.value} x{g.size} (plan made for another configuration?)"
                )
            if not idx:
                raise PlanError(f"plan group {name!r} keeps no unit; an empty group cannot be applied")
            if any(not isinstance(i, int) or isinstance(i, bool) for i in idx):
                raise PlanError(f"plan group {name!r} has non-integer indices")
            if len(set(idx)) != len(idx):
                raise PlanError(f"plan group {name!r} has duplicated indices")
            if min(idx) < 0 or max(idx) >= g.size:
                raise PlanError(f"plan group {name!r} has indices outside [0, {g.size})")
        kinds_per_attn: dict[str, set[str]] = {}
        for name in self.keep:
            if self.kinds[name] in (UnitKind.HEADS.value, UnitKind.HEAD_DIMS.value):
                kinds_per_attn.setdefault(name.rsplit(".", 1)[0], set()).add(self.kinds[name])
        both = [a for a, k in kinds_per_attn.items() if len(k) > 1]
        if both:
            raise PlanError(f"plan prunes both heads and head_dims of {both[0]}; choose one per attention")

    # ---- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model_class": self.model_class,
            "method": self.method,
            "settings": self.settings,
            "target": self.target,
            "achieved": self.achieved,
            "groups": {
                n: {"kind": self.kinds[n], "size": self.sizes[n], "keep": self.keep[n]} for n in sorted(self.keep)
            },
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Plan":
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise PlanError("not a vltrim plan (missing \"format\": \"vltrim.plan\")")
        if d.get("version") != PLAN_VERSION:
            raise PlanError(f"plan format version {d.get('version')} is not supported (expected {PLAN_VERSION})")
        try:
            groups = d["groups"]
            return cls(
                model_class=str(d["model_class"]),
                keep={n: list(g["keep"]) for n, g in groups.items()},
                sizes={n: int(g["size"]) for n, g in groups.items()},
                kinds={n: str(g["kind"]) for n, g in groups.items()},
                method=d.get("method", "manual"),
                settings=dict(d.get("settings", {})),
                target=dict(d.get("target", {})),
                achieved=dict(d.get("achieved", {})),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise PlanError(f"malformed plan: {e!r}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:
            raise PlanError(f"{path} is not valid JSON: {e}") from None

    def summary(self) -> str:
        a = self.achieved
        parts = [f"{self.method} plan for {self.model_class}: {len(self.keep)} groups pruned"]
        if "params_removed" in a:
            parts.append(f"removed {a['params_removed']:.1%} of prunable params, {a['macs_removed']:.1%} of their MACs")
        return "; ".join(parts)
