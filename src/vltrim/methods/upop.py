"""`upop`: unified progressive pruning (Shi et al., ICML 2023), search stage.

Soft masks on head_dims (or heads) and FFN neurons of every tower. While the weights train on the
task loss at a constant LR, each unit's saliency (|w * dL/dw| over its weights by default; the paper's
mask gradient |dL/dm| with saliency='abs') is accumulated; every ``interval`` steps one
global ranking of all units (scores standardised per unit kind and modality, cut by exact cost) picks
the units that make up the pruned share pi(t) = p * sin(pi * t / 2T), and their masks are set to
1 - pi(t)/p (kept units: 1). At the last step the pruned masks are exactly 0, so the extracted subnet
computes what the searched model does. Defaults follow benchmarks/real_text.py (see README).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vltrim.arch import get_adapter, masks
from vltrim.checks import choice, flag, integer, number
from vltrim.data.calibration import calibration_data
from vltrim.methods.common import (
    DEFAULT_UNITS,
    TAYLOR_NORMALIZE,
    TAYLOR_RANKING,
    mean_over_ranks,
    plan_from_keep,
    prunable_groups,
    unit_sums,
    weight_taylor,
)
from vltrim.methods.registry import MethodConfig, Result, TrainingSearch, register
from vltrim.structure.groups import Group
from vltrim.structure.plan import Plan
from vltrim.structure.select import ALLOCATION, MAX_RATIO, Budget, achieved, check_ranking, ranked, select
from vltrim.tasks.retrieval import contrastive_loss
from vltrim.train import train
from vltrim.train.loop import SCHEDULES

SALIENCIES = ("abs", "signed", "taylor")


def progressive_share(step: int, total: int, target: float) -> float:
    """UPop's schedule of the pruned share: p * sin(pi * t / 2T), exactly p at t = T."""
    return target if step >= total else target * math.sin(math.pi * step / (2 * total))


def update_steps(total: int, interval: int) -> list[int]:
    """1-based steps after which masks are updated; always includes the last step."""
    return sorted(set(range(interval, total + 1, interval)) | {total})


class SearchResult(Result):
    """What a training-based search leaves: the plan, the searched weights (``model``: the searched copy, hooks
    removed; apply_plan(model, plan) is the subnet) and as artefacts the final masks, the saliency and the log."""

    def __init__(
        self,
        plan: Plan,
        model: nn.Module,
        masks: dict[str, torch.Tensor],
        scores: dict[str, torch.Tensor],
        log: list[dict[str, Any]] | None = None,
    ):
        super().__init__(plan, model, {"masks": masks, "scores": scores, "log": list(log or [])})

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Final mask values: exactly 0 (pruned) or 1 (kept)."""
        return self.artifacts["masks"]

    @property
    def scores(self) -> dict[str, torch.Tensor]:
        """Accumulated saliency per unit (see `saliency`)."""
        return self.artifacts["scores"]

    @property
    def log(self) -> list[dict[str, Any]]:
        """One entry per mask update."""
        return self.artifacts["log"]


def default_loss(model: nn.Module) -> Callable:
    if hasattr(model, "get_image_features") and hasattr(model, "get_text_features"):
        return contrastive_loss
    raise ValueError(f"upop needs loss_fn=... for {type(model).__name__} (a callable (model, batch) -> loss)")


def _pruned(g: Group, keep: dict[str, list[int]]) -> list[int]:
    """Indices of ``g`` that ``keep`` removes (none when the group is not listed)."""
    return sorted(set(range(g.size)) - set(keep.get(g.name, range(g.size))))


def _set_changes(groups: list[Group], old: dict[str, list[int]], new: dict[str, list[int]]) -> tuple[int, int]:
    """Units pruned now that were kept at the previous update, and units brought back (churn of the pruned set)."""
    newly = restored = 0
    for g in groups:
        was, now = set(_pruned(g, old)), set(_pruned(g, new))
        newly, restored = newly + len(now - was), restored + len(was - now)
    return newly, restored


class _Search:
    """Mask values, saliency and the schedule of one search (the after-backward step of the loop)."""

    def __init__(
        self,
        groups: list[Group],
        budget: Budget,
        steps: int,
        interval: int,
        monotone: bool = False,
        saliency_decay: float = 1.0,
        saliency: str = "abs",
        model: nn.Module | None = None,
    ):
        if saliency not in SALIENCIES:
            raise ValueError(f"saliency must be one of {', '.join(SALIENCIES)}, got {saliency!r}")
        if saliency == "taylor" and model is None:
            raise ValueError("saliency='taylor' reads the weights' gradients: pass the searched model")
        self.groups, self.budget, self.target, self.steps = groups, budget, budget.target, steps
        self.monotone, self.decay, self.signed = monotone, saliency_decay, saliency == "signed"
        self.model = model if saliency == "taylor" else None
        self.values = {g.name: torch.ones(g.size, requires_grad=True) for g in groups}
        self.scores = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
        self.updates = set(update_steps(steps, interval))
        self.keep: dict[str, list[int]] = {}
        self.share, self.log = 0.0, []

    def __call__(self, step: int) -> dict[str, float]:
        for g in self.groups:
            v = self.values[g.name]
            if self.model is not None:  # taylor: |w * dL/dw| over the unit's weights (DDP has averaged the grads)
                self.scores[g.name].mul_(self.decay).add_(unit_sums(self.model, g, weight_taylor))
            elif v.grad is not None:
                grad = mean_over_ranks(v.grad.detach()).double().cpu()
                self.scores[g.name].mul_(self.decay).add_(grad if self.signed else grad.abs())
            v.grad = None
        t = step + 1
        if t in self.updates:
            self._update(t)
        return {"pruned_share": self.share}

    def state_dict(self) -> dict[str, Any]:
        return {
            "values": {n: v.detach().clone() for n, v in self.values.items()},
            "scores": self.scores,
            "keep": self.keep,
            "share": self.share,
            "log": self.log,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        with torch.no_grad():
            for n, v in self.values.items():
                v.copy_(s["values"][n])  # in place: the mask hooks hold these tensors
        self.scores = {n: t.clone() for n, t in s["scores"].items()}
        self.keep, self.share, self.log = s["keep"], s["share"], list(s["log"])

    def _select(self) -> dict[str, list[int]]:
        """Units to keep at the current share. Monotone: units pruned before stay pruned (they rank first),
        so no unit jumps from mask 1 straight to a near-0 fade late in the search."""
        # signed: dL/dm > 0 means a smaller mask lowers the loss, so the largest accumulated gradient goes first
        scores = ranked(self.groups, {n: -s if self.signed else s for n, s in self.scores.items()}, self.budget)
        if self.monotone and self.keep:
            if achieved(self.groups, self.keep)[f"{self.budget.metric}_removed"] >= self.share:
                return self.keep
            for g in self.groups:
                scores[g.name][_pruned(g, self.keep)] = -math.inf
        return select(self.groups, scores, dataclasses.replace(self.budget, target=self.share))

    def _update(self, t: int) -> None:
        self.share = progressive_share(t, self.steps, self.target)
        before = self.keep
        self.keep = self._select()
        newly, restored = _set_changes(self.groups, before, self.keep)
        fade = 0.0 if t >= self.steps else 1.0 - self.share / self.target
        with torch.no_grad():
            for g in self.groups:
                self.values[g.name].fill_(1.0)[_pruned(g, self.keep)] = fade
        self.log.append(
            {
                "step": t,
                "share": self.share,
                "fade": fade,
                "groups_pruned": len(self.keep),
                "newly_pruned": newly,
                "restored": restored,
            }
        )


@dataclass(frozen=True)
class UPopConfig(MethodConfig):
    """Settings of upop: progressive soft masks while the weights train.

    Its plans record (``plan_settings``) the unit kinds cut, the search's steps, interval, lr, batch size and seed,
    then monotone, schedule, saliency_decay and saliency; the budget options (normalize and ranking too) are in the
    plan's target."""

    interval: int = 10
    metric: str = "params"
    align: int = 8
    units: str | tuple[str, ...] = DEFAULT_UNITS
    allocation: str = ALLOCATION
    max_ratio: float = MAX_RATIO
    monotone: bool = False
    schedule: str = "constant"
    saliency_decay: float = 1.0
    saliency: str = "taylor"
    normalize: str = TAYLOR_NORMALIZE
    ranking: str = TAYLOR_RANKING

    def validate(self) -> None:
        check_ranking(self.normalize, self.ranking)
        integer("interval", self.interval, 1)
        number("saliency_decay", self.saliency_decay, high=1.0)
        choice("saliency", self.saliency, SALIENCIES)
        choice("schedule", self.schedule, SCHEDULES)
        flag("monotone", self.monotone)

    def plan_settings(self, **found: Any) -> dict[str, Any]:
        return {
            "units": found["units"],
            "steps": found["steps"],
            "interval": self.interval,
            "lr": found["lr"],
            "batch_size": found["batch_size"],
            "seed": found["seed"],
            "monotone": self.monotone,
            "schedule": self.schedule,
            "saliency_decay": self.saliency_decay,
            "saliency": self.saliency,
        }


@register
class UPopMethod(TrainingSearch):
    name = "upop"
    Config = UPopConfig

    def run(
        self,
        model: nn.Module,
        target: float,
        train_data: Dataset,
        loss_fn: Callable | None = None,
        steps: int = 300,
        interval: int = 10,
        lr: float = 1e-4,
        batch_size: int = 64,
        metric: str = "params",
        align: int = 8,
        units=DEFAULT_UNITS,
        allocation: str = ALLOCATION,
        max_ratio: float = MAX_RATIO,
        monotone: bool = False,
        schedule: str = "constant",
        saliency_decay: float = 1.0,
        saliency: str = "taylor",
        seed: int = 0,
        progress: bool = True,
        normalize: str = TAYLOR_NORMALIZE,
        ranking: str = TAYLOR_RANKING,
        **loop: Any,
    ) -> SearchResult:
        """Search on a copy of ``model`` (the original is not changed) and return plan, weights and masks.

        ``schedule`` is the search's LR schedule after warm-up ('constant', as UPop's reference code: the masks
        change most at the end, and a decayed LR leaves the weights no way to follow). ``saliency``: 'taylor'
        (default) accumulates |w * dL/dw| over each unit's weights (the `taylor` method's score, every step);
        'abs' accumulates the mask gradient |dL/dm| as the paper; 'signed' accumulates dL/dm and prunes the
        largest (as UPop's reference code ranks). On real weights 'taylor' kept the most (README). ``saliency_decay`` < 1
        weights recent steps more (1: accumulated from the start, as the paper). ``loop`` goes to the
        training loop: grad_accum, mixed_precision, output_dir, checkpoint_every, resume (a resumed search
        restores masks and scores too, and reaches the same plan)."""
        config = UPopConfig.pick(locals())
        budget = Budget(target, metric, align, allocation, max_ratio, normalize, ranking)
        integer("steps", steps, 1)
        train_data = calibration_data(train_data, model, "train_data")
        work = copy.deepcopy(model)
        groups = prunable_groups(work, units)
        state = _Search(groups, budget, steps, interval, monotone, saliency_decay, saliency, model=work)
        handles = masks.attach(get_adapter(work), work, state.values)
        try:
            train(
                work,
                train_data,
                loss_fn or default_loss(work),
                steps,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                desc=f"upop search to {target:.0%}",
                progress=progress,
                after_backward=state,
                schedule=schedule,
                **loop,
            )
        finally:
            handles.remove()
        settings = config.plan_settings(
            units=sorted({g.kind.value for g in groups}), steps=steps, lr=lr, batch_size=batch_size, seed=seed
        )
        plan = plan_from_keep(work, groups, state.keep, budget, self.name, settings)
        final = {n: v.detach().clone() for n, v in state.values.items()}
        return SearchResult(plan, work.eval(), final, state.scores, state.log)
