"""`distill`: the layer-dropping student (the compression study's distillation baseline; EfficientVLM's first stage).

Each tower keeps an evenly spread subset of its layers, the teacher layers `train.distill.layer_map` matches to
the student's layers (the last kept), initialised from them: a keep plan on the ``<tower>.layers`` groups, so
`apply_plan` builds it and `load` replays it bit-exactly, and `kept_teacher_layers` maps every student layer to
the teacher layer it was copied from. Through `compress` the student is retrained with the task loss, the task's
logits / similarity KL and hidden-state MSE of every block to its source block (``kd_hidden``, 1 by default), and
on request attention-map MSE of every block to its source block (``kd_attention``, as TinyBERT and EfficientVLM's
first stage; 0 by default: it runs both models' attention eager while training, which is slower than SDPA)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from vltrim.arch import get_adapter
from vltrim.arch.apply import apply_plan
from vltrim.checks import choice, integer
from vltrim.methods.common import DEFAULT_UNITS, plan_from_keep
from vltrim.methods.registry import KD, Descriptor, Method, MethodConfig, register
from vltrim.structure.groups import UnitKind
from vltrim.structure.plan import Plan
from vltrim.structure.select import ALLOCATION, MAX_RATIO, Budget
from vltrim.structure.slicing import Tower
from vltrim.train.distill import layer_map


def parse_layers(layers: int | str | dict[str, int]) -> int | dict[str, int]:
    """``layers`` as the CLI writes it too: 'vision:6,text:3' (tower or modality: count) is a dict, '2' an int."""
    if not isinstance(layers, str):
        return layers
    if ":" not in layers:
        return integer("layers", int(layers) if layers.strip().isdigit() else layers, 1)
    out: dict[str, int] = {}
    for part in layers.split(","):
        name, _, count = part.partition(":")
        if not name.strip() or not count.strip().isdigit():
            raise ValueError(f"layers: {part!r} is not TOWER:COUNT (e.g. layers=vision:6,text:3)")
        out[name.strip()] = int(count)
    return out


def tower_layers(model: nn.Module, layers: int | str | dict[str, int]) -> dict[str, int]:
    """Layers each tower keeps, by tower name: ``layers`` an int (every tower) or a dict keyed by tower name or
    modality (towers left out keep all their layers; 'vision:6,text:3' is that dict). Errors name the option, the
    tower and its depth."""
    layers = parse_layers(layers)
    towers = _droppable_towers(model)
    if not towers:
        raise ValueError(
            f"distill drops whole layers, but {type(model).__name__} has no tower whose depth can change (its "
            "adapter offers no layers group: a head that reads layers by index); use a width method (taylor, upop, l1, mope)"
        )
    if isinstance(layers, dict):
        asked = {t.name: _asked_for(t, layers) for t in towers}
        known = sorted({t.name for t in towers} | {t.modality for t in towers})
        unknown = sorted(str(k) for k in layers if k not in known)
        if unknown:
            raise ValueError(
                f"layers: unknown tower {unknown[0]!r}; this {type(model).__name__} has towers {', '.join(known)}"
            )
        counts = {n: c for n, c in asked.items() if c is not None}
    else:
        counts = {t.name: layers for t in towers if len(t.layers)}
    depth = {t.name: len(t.layers) for t in towers}
    for name, c in counts.items():
        c = counts[name] = integer(f"layers (the {name} tower)", c, 1)
        if c > depth[name]:
            raise ValueError(f"layers: the {name} tower has {depth[name]} layers, cannot keep {c}")
    return counts


def _droppable_towers(model: nn.Module) -> list[Tower]:
    """The towers whose depth can change: those the adapter offers a layers group for."""
    adapter = get_adapter(model)
    droppable = {g.name.rsplit(".", 1)[0] for g in adapter.groups(model) if g.kind == UnitKind.LAYERS}
    return [t for t in adapter.towers(model) if t.name in droppable]


def _asked_for(t: Tower, layers: dict[str, int]) -> int | None:
    hits = {k: v for k, v in layers.items() if k in (t.name, t.modality)}
    if len(hits) > 1:
        raise ValueError(f"layers: tower {t.name} is named twice ({', '.join(sorted(hits))}); give it one count")
    return next(iter(hits.values()), None)


def student_plan(model: nn.Module, layers: int | dict[str, int], target: Budget | None = None) -> Plan:
    """Keep plan of the layer-dropping student: per tower the ``layers`` evenly spread layers of `layer_map`."""
    counts = tower_layers(model, layers)
    groups = {g.name: g for g in get_adapter(model).groups(model) if g.kind == UnitKind.LAYERS}
    keep = {
        f"{n}.layers": layer_map(c, groups[f"{n}.layers"].size)
        for n, c in counts.items()
        if c < groups[f"{n}.layers"].size
    }
    settings = DistillConfig(layers=counts).plan_settings(kept_layers={n.rsplit(".", 1)[0]: k for n, k in keep.items()})
    return plan_from_keep(
        model, list(groups.values()), keep, target if target is not None else {"layers": counts}, "distill", settings
    )


def student(model: nn.Module, layers: int | dict[str, int] = 6) -> nn.Module:
    """A layer-reduced copy of ``model``: every tower keeps ``layers`` evenly spread layers (an int, or a dict like
    {"vision": 6, "text": 3} by tower name or modality), copied from the teacher's; distil it with compress."""
    return apply_plan(model, student_plan(model, layers))


def layers_for_target(model: nn.Module, target: float) -> dict[str, int]:
    """Per tower, the layer count nearest to removing ``target`` of its layers' cost (at least 1)."""
    return {
        t.name: max(1, math.floor(len(t.layers) * (1 - target) + 0.5))
        for t in _droppable_towers(model)
        if len(t.layers)
    }


@dataclass(frozen=True)
class DistillConfig(MethodConfig):
    """Settings of distill: how many layers each tower keeps (None: as the target asks).

    Its plans record (``plan_settings``) ``layers`` resolved to a count per tower name and the teacher layers each
    tower kept (kept_layers); the budget is in the plan's target."""

    layers: int | str | dict[str, int] | None = None
    metric: str = "params"
    align: int = 8
    units: str | tuple[str, ...] = ",".join(DEFAULT_UNITS)
    allocation: str = ALLOCATION
    max_ratio: float = MAX_RATIO

    def validate(self) -> None:
        """An int ``layers`` (a dict's counts are checked against the model's towers, `tower_layers`)."""
        if self.layers is not None and not isinstance(parse_layers(self.layers), dict):
            integer("layers", parse_layers(self.layers), 1)

    def plan_settings(self, **found: Any) -> dict[str, Any]:
        return {"layers": self.layers, "kept_layers": found["kept_layers"]}


@register
class DistillMethod(Method):
    """Layer-dropping student, retrained with distillation from the unpruned model (hidden states included)."""

    name = "distill"
    Config = DistillConfig
    descriptor = Descriptor(kd=KD(hidden=1.0))

    def search(
        self,
        model: nn.Module,
        target: float,
        layers: int | dict[str, int] | None = None,
        metric: str = "params",
        align: int = 8,
        units: str = ",".join(DEFAULT_UNITS),
        allocation: str = ALLOCATION,
        max_ratio: float = MAX_RATIO,
    ):
        """The student's plan: ``layers`` per tower (see `student`), or None: per tower the count nearest to removing
        ``target`` of its layers (at least 1); ``plan.achieved`` records what that removes. ``align``, ``units``,
        ``allocation`` and ``max_ratio`` are accepted for compress's sake and unused (whole layers need no alignment)."""
        choice("metric", metric, ("params", "macs"))
        budget = Budget(target, metric, align, allocation, max_ratio)
        return student_plan(model, layers_for_target(model, target) if layers is None else layers, budget)
