"""Plan: the data a method produces and an adapter applies (kept indices for each group, ranks for each Linear,
sparsity patterns for each Linear)."""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vltrim.structure.factorize import saves_params
from vltrim.structure.groups import Group, UnitKind
from vltrim.structure.sparsify import PATTERNS, SEMI

PLAN_FORMAT = "vltrim.plan"
PLAN_VERSION = 1
PLANS_FORMAT = "vltrim.plans"  # a chain of plans, applied in order (what ``vltrim.save`` writes for >1 plan)
MAX_DEPTH = 100  # deeper values in a plan are refused when saving (a plan is a few levels deep)
MAX_NUMBER_DIGITS = 100  # longer numbers in a plan or config file are refused (no real value needs more)


class PlanError(ValueError):
    """A plan that cannot be applied to this model (wrong model, bad indices, malformed file)."""


@dataclass
class Plan:
    """For each pruned group, the sorted indices of the units to keep; groups not listed keep all. For each
    factorised Linear (``factorize``: name like 'vision.layers.3.mlp.fc1' -> rank), its kept rank.

    Within one plan the keep step comes first, then factorize: ranks, ``factor_shapes`` ([out, in]) and
    Linear names (layer indices included) refer to the model after this plan's slicing. ``factor_scales``
    (optional, per factorised Linear: one positive number per input feature) weight the SVD (data-aware
    factorisation), so applying the plan needs no calibration data. ``sparsify`` (Linear name -> {"pattern":
    "unstructured" | "2:4", "sparsity": share of its weights to zero}) comes last: the weights to zero are chosen
    at apply time from the weights (structure/sparsify.py), so the plan holds no masks. ``target`` and ``achieved`` record what
    was asked for and what the plan reaches, so a plan file alone says what it does.
    """

    model_class: str
    keep: dict[str, list[int]]
    sizes: dict[str, int]
    kinds: dict[str, str]
    method: str = "manual"
    settings: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    achieved: dict[str, Any] = field(default_factory=dict)
    factorize: dict[str, int] = field(default_factory=dict)
    factor_shapes: dict[str, list[int]] = field(default_factory=dict)
    factor_scales: dict[str, list[float]] = field(default_factory=dict)
    sparsify: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when the plan changes nothing (no group sliced, no Linear factorised or sparsified)."""
        return not self.keep and not self.factorize and not self.sparsify

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_keep(cls, model_class: str, groups: Iterable[Group], keep: dict[str, Iterable[int]], **meta) -> Plan:
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
    def check_group_names(self, model_class: str, names: Iterable[str]) -> None:
        """PlanError naming the first group of ``keep`` (or of ``sizes`` / ``kinds``) this model does not have (a
        renamed group, a plan for another model): the groups are checked by name before anything looks them up."""
        if self.model_class != model_class:
            raise PlanError(f"plan was made for {self.model_class}, not {model_class}")
        known = list(names)
        if not isinstance(self.keep, dict):
            raise PlanError(f"plan keep must map group names to kept indices, got {type(self.keep).__name__}")
        for name in self.keep:
            if name not in known:
                raise PlanError(_unknown_group(name, model_class, known))
            if name not in self.sizes or name not in self.kinds:
                missing = " and ".join(f for f, d in (("sizes", self.sizes), ("kinds", self.kinds)) if name not in d)
                raise PlanError(
                    f"plan group {name!r} has kept indices but no entry in the plan's {missing} (renamed in one "
                    "place only?)"
                )

    def validate(self, model_class: str, groups: Iterable[Group]) -> None:
        """Raise PlanError unless every group exists here with the same kind and size and its
        kept indices are unique, in range and not empty."""
        groups = list(groups)
        self.check_group_names(model_class, [g.name for g in groups])
        by_name = {g.name: g for g in groups}
        for name, idx in self.keep.items():
            g = by_name[name]
            if g.kind.value != self.kinds.get(name) or g.size != self.sizes.get(name):
                pruned = g.kind.value == self.kinds.get(name) and g.size == len(idx)
                raise PlanError(
                    f"plan group {name!r} is {self.kinds.get(name)} x{self.sizes.get(name)}, "
                    f"the model has {g.kind.value} x{g.size} ("
                    + (
                        "this model already has the plan applied: apply a plan to the model it was made for)"
                        if pruned
                        else "plan made for another configuration?)"
                    )
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

    def validate_factors(self, shapes: dict[str, tuple[int, int]], factorised: set[str]) -> None:
        """Raise PlanError (naming the Linear) unless every factorised name is a dense Linear here
        (``shapes``: name -> (out, in)) of the recorded shape, with a rank in [1, min(out, in)) that stores
        fewer weights than the dense matrix (r*(in+out) < in*out; a rank that saves nothing is refused, not
        left dense: a plan says exactly what it does), and with valid scales if it has any."""
        for name, r in self.factorize.items():
            if name in factorised:
                raise PlanError(
                    f"plan factorises {name!r}, which is already factorised (this model already has the plan "
                    "applied? apply a plan to the model it was made for)"
                )
            if name not in shapes:
                raise PlanError(
                    f"plan factorises {name!r}, which this {self.model_class} does not have "
                    f"(Linears are named like {next(iter(shapes), 'vision.layers.0.mlp.fc1')!r})"
                )
            out, inp = shapes[name]
            if list(self.factor_shapes.get(name, [out, inp])) != [out, inp]:
                raise PlanError(
                    f"plan factorises {name!r} as {self.factor_shapes[name][0]}x{self.factor_shapes[name][1]}, "
                    f"the model has {out}x{inp} (plan made for another configuration?)"
                )
            if not _is_int(r) or not 1 <= r < min(out, inp):
                raise PlanError(
                    f"plan factorises {name!r} ({out}x{inp}) at rank {r!r}; a rank must be an integer "
                    f"in [1, {min(out, inp) - 1}]"
                )
            if not saves_params(out, inp, r):
                raise PlanError(
                    f"plan factorises {name!r} ({out}x{inp}) at rank {r}: {r}*({inp}+{out}) >= {inp}*{out}, "
                    f"so it saves no parameters; leave it dense (ranks below {-(-inp * out // (inp + out))} save)"
                )
            _check_scales(self.factor_scales.get(name), inp, f"plan factor_scales[{name!r}] (of {out}x{inp})")
        extra = sorted(set(self.factor_scales) - set(self.factorize))
        if extra:
            raise PlanError(f"plan has factor_scales for {extra[0]!r}, which it does not factorise")

    def validate_sparsity(self, shapes: dict[str, tuple[int, int]], factorised: set[str]) -> None:
        """Raise PlanError (naming the Linear) unless every sparsified name is a dense Linear here (``shapes``: name
        -> (out, in)) with a valid entry; 2:4 needs in_features divisible by 4 and records sparsity 0.5."""
        for name, e in self.sparsify.items():
            if name in factorised:
                raise PlanError(
                    f"plan sparsifies {name!r}, which is factorised; sparsify before factorising, or not at all"
                )
            if name not in shapes:
                raise PlanError(
                    f"plan sparsifies {name!r}, which this {self.model_class} does not have "
                    f"(Linears are named like {next(iter(shapes), 'vision.layers.0.mlp.fc1')!r})"
                )
            _check_sparse_entry(e, f"plan sparsify[{name!r}]")
            out, inp = shapes[name]
            if e["pattern"] == "2:4" and inp % SEMI:
                raise PlanError(
                    f"plan sparsifies {name!r} ({out}x{inp}) with the 2:4 pattern, which needs in_features "
                    f"divisible by {SEMI}; use pattern 'unstructured' for it"
                )

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
            **({"factorize": {n: self._factor_entry(n) for n in sorted(self.factorize)}} if self.factorize else {}),
            **({"sparsify": {n: dict(self.sparsify[n]) for n in sorted(self.sparsify)}} if self.sparsify else {}),
        }

    def _factor_entry(self, name: str) -> dict[str, Any]:
        e: dict[str, Any] = {"rank": self.factorize[name]}
        if name in self.factor_shapes:
            e["shape"] = list(self.factor_shapes[name])
        if name in self.factor_scales:
            e["scales"] = list(self.factor_scales[name])
        return e

    def to_json(self) -> str:
        """The plan file's text; PlanError (naming the field) if a value cannot be stored exactly or would not
        read back as this plan (so a saved file always loads)."""
        text = dumps_json(self.to_dict(), "plan")
        Plan.from_dict(json.loads(text), source="plan to save")
        return text

    @classmethod
    def from_dict(cls, d: Any, source: str | Path | None = None) -> Plan:
        """A plan from its JSON form, every field checked; errors name ``source`` (the file) and the field."""
        where = f"{source}: " if source else ""
        if isinstance(d, dict) and d.get("format") == PLANS_FORMAT:
            raise PlanError(
                f'{where}holds a chain of plans ("format": "{PLANS_FORMAT}"), not one plan; '
                "read it with vltrim.structure.plan.read_plans"
            )
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise PlanError(f'{where}not a vltrim plan (missing "format": "{PLAN_FORMAT}")')
        if not _is_int(d.get("version")) or d["version"] != PLAN_VERSION:
            raise PlanError(
                f"{where}plan format version {d.get('version')!r} is not supported (expected {PLAN_VERSION})"
            )
        groups = _field(d, "groups", dict, where)
        parsed = {n: _parse_group(n, g, where) for n, g in groups.items()}
        factors = {n: _parse_factor(n, f, where) for n, f in _field(d, "factorize", dict, where, {}).items()}
        sparse = {
            n: _check_sparse_entry(e, f"{where}sparsify[{n!r}]")
            for n, e in _field(d, "sparsify", dict, where, {}).items()
        }
        return cls(
            model_class=_field(d, "model_class", str, where),
            keep={n: k for n, (k, _, _) in parsed.items()},
            sizes={n: s for n, (_, s, _) in parsed.items()},
            kinds={n: kd for n, (_, _, kd) in parsed.items()},
            method=_field(d, "method", str, where, "manual"),
            settings=dict(_field(d, "settings", dict, where, {})),
            target=dict(_field(d, "target", dict, where, {})),
            achieved=dict(_field(d, "achieved", dict, where, {})),
            factorize={n: r for n, (r, _, _) in factors.items()},
            factor_shapes={n: s for n, (_, s, _) in factors.items() if s is not None},
            factor_scales={n: c for n, (_, _, c) in factors.items() if c is not None},
            sparsify=sparse,
        )

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON; nothing is written if a value cannot be stored (PlanError)."""
        text = self.to_json()
        Path(path).write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read one plan file; any problem with its content is a PlanError naming the file and field."""
        return cls.from_dict(read_json(path), source=path)

    def summary(self) -> str:
        a = self.achieved
        parts = [f"{self.method} plan for {self.model_class}: {len(self.keep)} groups pruned"]
        if self.factorize:
            parts[0] += f", {len(self.factorize)} Linears factorised"
        if self.sparsify:
            parts[0] += f", {len(self.sparsify)} Linears sparsified"
        if _is_number(a.get("sparsity")):
            parts.append(
                f"{a['sparsity']:.1%} of block-Linear weights are zero (stored dense: params and MACs unchanged)"
            )
        if _is_number(a.get("params_removed")) and _is_number(a.get("macs_removed")):
            parts.append(f"removed {a['params_removed']:.1%} of prunable params, {a['macs_removed']:.1%} of their MACs")
        return "; ".join(parts)


# ---- files ----------------------------------------------------------------------------------------
def _unknown_group(name: Any, model_class: str, known: list[str]) -> str:
    """The message for a plan group the model does not have, with the closest existing name when one is close."""
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    hint = (
        f"; did you mean {close[0]!r}? (renamed?)"
        if close
        else f"; its groups are named like {known[0]!r}"
        if known
        else "; it has no prunable groups"
    )
    return f"plan group {name!r} does not exist in this {model_class}{hint}"


def read_plans(path: str | Path) -> list[Plan]:
    """The plans in a plan file: one plan, or a chain (``{"format": "vltrim.plans", "plans": [...]}``)."""
    d = read_json(path)
    if not (isinstance(d, dict) and d.get("format") == PLANS_FORMAT):
        return [Plan.from_dict(d, source=path)]
    plans = d.get("plans")
    if not isinstance(plans, list):
        got = "missing" if "plans" not in d else f"{type(plans).__name__}"
        raise PlanError(f'{path}: a chain of plans needs "plans": a list of plans (got {got})')
    if not plans:
        raise PlanError(f'{path}: "plans" is an empty list; a chain holds at least one plan')
    return [Plan.from_dict(p, source=f"{path} (plan {i + 1} of {len(plans)})") for i, p in enumerate(plans)]


def dumps_plans(plans: list[Plan]) -> str:
    """Text of a plan file for ``plans`` (one plan, or a chain); PlanError before anything is written."""
    if len(plans) == 1:
        return plans[0].to_json()
    payload = {"format": PLANS_FORMAT, "plans": [p.to_dict() for p in plans]}
    for i, d in enumerate(payload["plans"]):
        _checked_jsonable(d, f"plan {i + 1} of {len(plans)}")
        Plan.from_dict(json.loads(json.dumps(d)), source=f"plan {i + 1} of {len(plans)} to save")
    return json.dumps(payload, indent=1, allow_nan=False)


def read_json(path: str | Path, error: type[Exception] = PlanError, allow_nonfinite: bool = False) -> Any:
    """Parse a JSON file strictly (UTF-8; no NaN/Infinity unless allowed; bounded digits and nesting).

    Every problem is raised as ``error`` with a message naming the file; a missing file stays FileNotFoundError."""
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise TypeError(
            f"a JSON file path must be a non-empty str or pathlib.Path, got {path!r} ({type(path).__name__})"
        )
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text (invalid byte at offset {e.start}): not a JSON file?") from None
    return parse_json(text, path, error, allow_nonfinite)


def parse_json(text: str, source: str | Path, error: type[Exception] = PlanError, allow_nonfinite: bool = False) -> Any:
    """``json.loads`` whose every failure (syntax, NaN/Infinity, huge numbers, deep nesting) is ``error`` naming ``source``."""

    def bad(what: str) -> Exception:
        return error(f"{source} is not valid JSON for vltrim: {what}")

    def number(kind: Callable[[str], Any]) -> Callable[[str], Any]:
        def parse(s: str) -> Any:
            if len(s) > MAX_NUMBER_DIGITS:
                raise bad(f"a number with {len(s)} digits (at most {MAX_NUMBER_DIGITS})")
            v = kind(s)
            if not allow_nonfinite and isinstance(v, float) and not math.isfinite(v):
                raise bad(f"the number {s[:20]} is out of range (not a finite float)")
            return v

        return parse

    def constant(c: str) -> float:
        if not allow_nonfinite:
            raise bad(f"{c} is not a number JSON allows (values must be finite)")
        return float(c)

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise bad(f"the key {k[:60]!r} appears twice in one object (which one is meant?)")
            out[k] = v
        return out

    try:
        return json.loads(
            text, parse_int=number(int), parse_float=number(float), parse_constant=constant, object_pairs_hook=unique
        )
    except json.JSONDecodeError as e:
        raise bad(f"{e.msg} at line {e.lineno}, column {e.colno} (truncated or edited?)") from None
    except RecursionError:
        raise bad("nested too deeply") from None
    except ValueError as e:
        if isinstance(e, error):
            raise
        raise bad(str(e)) from None


def dumps_json(value: Any, name: str) -> str:
    """``json.dumps`` of ``value`` once it is known to hold only finite numbers, strings, bools, None, lists
    and string-keyed dicts; otherwise PlanError naming the field (e.g. ``plan['achieved']['params_removed']``)."""
    _checked_jsonable(value, name)
    return json.dumps(value, indent=1, allow_nan=False)


def _checked_jsonable(value: Any, name: str) -> None:
    try:
        _check_jsonable(value, name, ())
    except RecursionError:
        raise PlanError(f"{name} is nested too deeply to be written as JSON") from None


# ---- field checks -----------------------------------------------------------------------------------
_MISSING = object()


def _field(d: dict, key: str, kind: type, where: str, default: Any = _MISSING) -> Any:
    """``d[key]`` checked to be a ``kind``; ``default`` when absent (required when no default)."""
    v = d.get(key, _MISSING)
    if v is _MISSING:
        if default is _MISSING:
            raise PlanError(f'{where}plan has no "{key}" field')
        return default
    if not isinstance(v, kind):
        raise PlanError(f'{where}plan field "{key}" must be a JSON {_JSON_NAMES[kind]}, got {_describe(v)}')
    return v


def _parse_group(name: str, g: Any, where: str) -> tuple[list[int], int, str]:
    """(keep, size, kind) of one entry of ``groups``, each checked."""
    at = f"{where}groups[{name!r}]"
    if not isinstance(g, dict):
        raise PlanError(f"{at} must be an object with kind, size and keep, got {_describe(g)}")
    kind, size, keep = g.get("kind"), g.get("size"), g.get("keep")
    kinds = [k.value for k in UnitKind]
    if kind not in kinds:
        raise PlanError(f"{at}.kind must be one of {kinds}, got {_describe(kind)}")
    if not _is_int(size) or size < 1:
        raise PlanError(f"{at}.size must be a positive integer, got {_describe(size)}")
    if not isinstance(keep, list):
        raise PlanError(f"{at}.keep must be a list of integer indices, got {_describe(keep)}")
    bad = next((i for i in keep if not _is_int(i)), _MISSING)
    if bad is not _MISSING:
        raise PlanError(f"{at}.keep must hold integer indices only, got {_describe(bad)}")
    if not keep:
        raise PlanError(f"{at}.keep is empty; a group keeps at least one unit")
    if len(set(keep)) != len(keep) or min(keep) < 0 or max(keep) >= size:
        raise PlanError(f"{at}.keep must hold distinct indices in [0, {size})")
    return list(keep), size, kind


def _parse_factor(name: str, f: Any, where: str) -> tuple[int, list[int] | None, list[float] | None]:
    """(rank, shape or None, scales or None) of one entry of ``factorize``, each checked."""
    at = f"{where}factorize[{name!r}]"
    if not isinstance(f, dict):
        raise PlanError(f"{at} must be an object with rank (and shape, scales), got {_describe(f)}")
    rank, shape, scales = f.get("rank"), f.get("shape"), f.get("scales")
    if not _is_int(rank) or rank < 1:
        raise PlanError(f"{at}.rank must be a positive integer, got {_describe(rank)}")
    if shape is not None and not (
        isinstance(shape, list) and len(shape) == 2 and all(_is_int(v) and v > 0 for v in shape)
    ):
        raise PlanError(f"{at}.shape must be [out_features, in_features], got {_describe(shape)}")
    if scales is not None:
        _check_scales(scales, len(scales) if isinstance(scales, list) else 0, f"{at}.scales")
    return rank, shape, scales


def _check_sparse_entry(e: Any, at: str) -> dict[str, Any]:
    """``e`` if it is {"pattern": one of PATTERNS, "sparsity": a number in (0, 1]} (0.5 for 2:4); else PlanError naming ``at``."""
    if not isinstance(e, dict) or set(e) != {"pattern", "sparsity"}:
        raise PlanError(
            f"{at} must be an object with exactly pattern and sparsity, got {_describe(e)}"
            + (f" with keys {sorted(e)}" if isinstance(e, dict) else "")
        )
    pattern, s = e["pattern"], e["sparsity"]
    if pattern not in PATTERNS:
        raise PlanError(f"{at}.pattern must be one of {', '.join(map(repr, PATTERNS))}, got {_describe(pattern)}")
    if not _is_number(s) or not math.isfinite(s) or not 0 < s <= 1:
        raise PlanError(f"{at}.sparsity must be a number in (0, 1], got {_describe(s)}")
    if pattern == "2:4" and s != 0.5:
        raise PlanError(f"{at}.sparsity must be 0.5 for the 2:4 pattern (2 of every 4 weights), got {_describe(s)}")
    return {"pattern": pattern, "sparsity": s}


def _check_scales(scales: Any, in_features: int, at: str) -> None:
    """PlanError (naming ``at``) unless ``scales`` is None or a list of ``in_features`` positive finite numbers."""
    if scales is None:
        return
    if not isinstance(scales, list) or len(scales) != in_features or not scales:
        want = f"{in_features} numbers" if in_features else "numbers"
        raise PlanError(
            f"{at} must be a list of {want} (one per input feature), got {_describe(scales)}"
            + (f" of length {len(scales)}" if isinstance(scales, list) else "")
        )
    if not all(_is_number(v) and math.isfinite(v) and v > 0 for v in scales):
        raise PlanError(f"{at} must hold positive finite numbers only")


def _check_jsonable(v: Any, name: str, parents: tuple[int, ...]) -> None:
    """PlanError naming the first value (by its path from ``name``) that JSON cannot hold exactly."""
    if v is None or isinstance(v, (bool, int, str)):
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise PlanError(f"{name} is {v}; a plan stores finite numbers only")
        return
    if not isinstance(v, (list, tuple, dict)):
        raise PlanError(
            f"{name} is a {type(v).__name__} ({v!r:.60}), which JSON cannot hold; use a plain number, string, list or dict"
        )
    if id(v) in parents or len(parents) >= MAX_DEPTH:
        raise PlanError(f"{name} contains itself or is nested deeper than {MAX_DEPTH} levels; JSON cannot hold it")
    items = v.items() if isinstance(v, dict) else enumerate(v)
    for k, x in items:
        if isinstance(v, dict) and not isinstance(k, str):
            raise PlanError(f"{name} has the key {k!r} ({type(k).__name__}); JSON keys are strings")
        _check_jsonable(x, f"{name}[{k!r}]", (*parents, id(v)))


_JSON_NAMES = {dict: "object", str: "string", list: "list"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _describe(v: Any) -> str:
    """A short description of a value for messages: its JSON type and (cut) value."""
    if v is None:
        return "null"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(v), type(v).__name__
    )
    if not isinstance(v, (bool, int, float, str)):
        return kind
    try:
        return f"{kind} {json.dumps(v)[:40]}"
    except ValueError:  # an integer too long to print
        return kind
