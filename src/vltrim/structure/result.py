"""What a compress run returns: the compressed model, the plans it applied and its report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from vltrim.structure.plan import Plan


@dataclass
class CompressResult:
    model: nn.Module  # the compressed, retrained model
    plan: Plan  # the last plan applied (the only one of a one-stage, one-round run)
    report: dict[str, Any] = field(
        default_factory=dict
    )  # metric before/after, params, MACs, latency; per round and stage
    plans: list[Plan] = field(
        default_factory=list
    )  # every plan this run applied, in order (prune-retrain rounds, chains)

    def __post_init__(self) -> None:
        if not self.plans:
            self.plans = [self.plan]
