"""What a method and a compress run return: one `Result` (plan, model, artefacts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from vltrim.structure.plan import Plan


@dataclass
class Result:
    """A plan, the model it belongs to (a method's: a training search's trained copy, None for the model it was
    given; a compress run's: the compressed, retrained model) and what else was produced (``artifacts``: MoPE's
    module table, a run's report), which the runner writes beside a saved model."""

    plan: Plan
    model: nn.Module | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompressResult(Result):
    """A compress run's `Result`: ``plan`` is the last plan applied, ``plans`` every plan this run applied in order
    (prune-retrain rounds, chains), ``report`` (an artefact) the metric before / after, params, MACs and latency per
    round and stage."""

    plans: list[Plan] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.plans:
            self.plans = [self.plan]
        self.artifacts.setdefault("report", {})

    @property
    def report(self) -> dict[str, Any]:
        return self.artifacts["report"]

    @report.setter
    def report(self, value: dict[str, Any]) -> None:
        self.artifacts["report"] = value
