"""`heads`: data-driven attention-head pruning (Michel et al. 2019, "Are Sixteen Heads Really Better than One?";
the head-pruning baseline of the compression study of Transformer SSL models).

Importance of head h = E_batches |dL/dm_h|, m_h a mask of value 1 on the head's slice of the out-projection input
(its only way into the residual stream), L the task loss on calibration batches. Scores are divided by their L2
norm over the layer's heads (as the paper), the top head of every layer is protected (never pruned), and one
global, cost-exact, aligned ranking over every tower removes ``target`` of the heads' cost.

``rounds`` > 1 prunes iteratively: after round r the cut reaches the cumulative target t_r, the pruned heads are
masked to 0 and the remaining heads re-scored. ``schedule`` "geometric": t_r = 1 - (1 - target)^(r/rounds) (each
round removes the same share of what is left, as the paper's fixed-percentage steps); "linear": t_r = target*r/rounds.
Through compress, ``rounds`` > 1 retrains between the rounds (`round_target`): each round prunes more heads of the
retrained model, so the model records one plan per round. The weight-only variant stays `l1 --units heads`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vltrim.arch.apply import masked
from vltrim.checks import choice, integer
from vltrim.data.calibration import calibration_data
from vltrim.methods.common import checked_batches, plan_from_keep, prunable_groups, seeded
from vltrim.methods.registry import BudgetConfig, Descriptor, Method, Result, register
from vltrim.structure.groups import Group
from vltrim.structure.plan import Plan
from vltrim.structure.select import ALLOCATION, MAX_RATIO, Budget, achieved, select
from vltrim.tasks import Task

SCHEDULES = ("geometric", "linear")


def head_scores(
    model: nn.Module,
    groups: list[Group],
    data: Dataset,
    loss_fn: Callable,
    num_batches: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    pruned: dict[str, list[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Mean over ``num_batches`` calibration batches of |dL/dm| per head (m: head masks at 1, the heads in ``pruned``
    at 0), in train mode like `taylor` (dropout gives distillation-from-itself losses a signal). Runs on a copy, so
    the model's weights, gradients and mode are left as they were (and a teacher that is ``model`` sees no masks)."""
    integer("num_batches", num_batches, 1)
    work = copy.deepcopy(model).train().requires_grad_(False)
    dev = next(work.parameters()).device
    values = {g.name: _mask(g, (pruned or {}).get(g.name, []), dev) for g in groups}
    total = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    it = checked_batches(data, batch_size, seed, model)
    with masked(work, values), seeded(seed, dev):  # dropout masks from the seed
        for _ in range(num_batches):
            loss_fn(work, {k: v.to(dev) for k, v in next(it).items()}).backward()
            for name, m in values.items():
                if m.grad is not None:  # None: the loss did not run this head's tower
                    total[name] += m.grad.detach().abs().double().cpu()
                m.grad = None
    return {n: t / num_batches for n, t in total.items()}


def _mask(g: Group, pruned: list[int], dev: torch.device) -> torch.Tensor:
    m = torch.ones(g.size, device=dev)
    m[list(pruned)] = 0
    return m.requires_grad_()


def ranking(scores: dict[str, torch.Tensor], pruned: dict[str, list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Scores divided by their L2 norm over the layer's remaining heads; pruned heads -inf (cut first), the layer's
    top head +inf (never cut: the aligned cut never empties a group, and the top head sorts last)."""
    out = {}
    for name, s in scores.items():
        s = s.double().clone()
        gone = torch.zeros_like(s, dtype=torch.bool)
        gone[list((pruned or {}).get(name, []))] = True
        norm = s[~gone].norm()
        s = s / norm if norm > 0 else s
        s[gone] = -torch.inf
        s[s.argmax()] = torch.inf
        out[name] = s
    return out


def round_targets(target: float, rounds: int, schedule: str) -> list[float]:
    """Cumulative share of the heads' cost removed after each round; the last is ``target``."""
    if schedule == "linear":
        return [target * r / rounds for r in range(1, rounds + 1)]
    return [1 - (1 - target) ** (r / rounds) for r in range(1, rounds + 1)]


@dataclass(frozen=True)
class HeadsConfig(BudgetConfig):
    """Settings of heads: whole heads by |dL/d head-mask|, one-shot or in rounds.

    Its plans record (``plan_settings``) units ["heads"], num_batches, the search's batch size and seed, rounds,
    schedule, the share removed after each round (round_removed) and, when given, the modalities (sorted); the other
    budget options are in the plan's target."""

    units: str | tuple[str, ...] = "heads"
    num_batches: int = 8
    rounds: int = 1
    schedule: str = "geometric"
    modalities: list[str] | None = None

    def validate(self) -> None:
        integer("rounds", self.rounds, 1)
        choice("schedule", self.schedule, SCHEDULES)
        integer("num_batches", self.num_batches, 1)

    def plan_settings(self, **found: Any) -> dict[str, Any]:
        return {
            "units": ["heads"],
            "num_batches": self.num_batches,
            "batch_size": found["batch_size"],
            "seed": found["seed"],
            "rounds": self.rounds,
            "schedule": self.schedule,
            "round_removed": found["round_removed"],
            **({"modalities": sorted(self.modalities)} if self.modalities else {}),
        }


@register
class HeadsMethod(Method):
    """Head pruning by expected |dL/d head-mask| (Michel et al. 2019), one-shot or iterative."""

    name = "heads"
    Config = HeadsConfig
    descriptor = Descriptor(
        data="required", rounds=True, calib_option="data", runtime=("data", "loss_fn", "batch_size", "seed")
    )

    def task_settings(self, task: Task, loss: Callable) -> dict[str, Any]:
        """What vltrim.plan's ``task`` gives the search: the task's loss, scored on the calibration data."""
        return {"loss_fn": loss}

    def round_target(
        self,
        model: nn.Module,
        start: nn.Module,
        target: float,
        step: int,
        rounds: int,
        metric: str = "params",
        schedule: str = "geometric",
        modalities: list[str] | None = None,
        **settings: Any,
    ) -> tuple[float, dict[str, Any]] | None:
        """Round ``step`` of compress's prune-retrain rounds on ``model`` (``start``: the model of round 1): the share of
        ``model``'s heads cost to remove so that (1 - t) of ``start``'s is left, t = `round_targets`' cumulative share
        for this round, and the search settings (one round each); None when earlier rounds' cuts already reached t."""
        want = round_targets(target, rounds, schedule)[step - 1]
        cost = lambda m: sum(g.size * g.cost_per_unit(metric) for g in prunable_groups(m, "heads", modalities))  # noqa: E731
        share = (
            1 - (1 - want) * cost(start) / cost(model) - 1e-12
        )  # below the exact share: float error never costs a head
        if share <= 1e-9:
            return None
        return share, {**settings, "metric": metric, "schedule": schedule, "modalities": modalities, "rounds": 1}

    def search(self, model: nn.Module, target: float, **settings: Any) -> Plan:
        """The plan of `search_result`."""
        return self.search_result(model, target, **settings).plan

    def search_result(
        self,
        model: nn.Module,
        target: float,
        data: Dataset | None = None,
        loss_fn: Callable | None = None,
        metric: str = "params",
        align: int = 8,
        units: str = "heads",
        allocation: str = ALLOCATION,
        max_ratio: float = MAX_RATIO,
        num_batches: int = 8,
        batch_size: int = 16,
        seed: int = 0,
        rounds: int = 1,
        schedule: str = "geometric",
        modalities: list[str] | None = None,
    ) -> Result:
        """Plan removing ``target`` of the heads' ``metric`` (see the module docstring); ``modalities`` limits the
        cut to those towers."""
        config = HeadsConfig.pick(locals())
        if data is None or loss_fn is None:
            raise ValueError(
                "heads needs calibration data and a loss: calib_data=... (the loss from task=...), or data=... and "
                "loss_fn=(model, batch) -> loss (vltrim.compress passes its train_data and task loss)"
            )
        data = calibration_data(data, model)
        if (units.split(",") if isinstance(units, str) else list(units)) != ["heads"]:
            raise ValueError(f"heads prunes whole attention heads: units must be 'heads', got {units!r}")
        groups = prunable_groups(model, "heads", modalities)
        budget = Budget(target, metric, align, allocation, max_ratio)
        keep, pruned, steps = {}, {}, []
        for t in round_targets(target, rounds, schedule):
            if steps and t <= steps[-1]:
                continue  # an earlier round's aligned cut already reached this round's share
            raw = head_scores(model, groups, data, loss_fn, num_batches, batch_size, seed + len(steps), pruned)
            keep = select(groups, ranking(raw, pruned), Budget(t, metric, align, allocation, max_ratio))
            pruned = {g.name: sorted(set(range(g.size)) - set(keep.get(g.name, range(g.size)))) for g in groups}
            steps.append(achieved(groups, keep)[f"{metric}_removed"])
        settings = config.plan_settings(batch_size=batch_size, seed=seed, round_removed=steps)
        plan = plan_from_keep(model, groups, keep, budget, self.name, settings)
        return Result(plan, artifacts={"head_scores": _table(groups, raw, pruned)})  # one row per head


def _table(groups: list[Group], raw: dict[str, torch.Tensor], pruned: dict[str, list[int]]) -> list[dict[str, Any]]:
    """One row per head: its group, modality, layer, last-round score and whether it was pruned."""
    return [
        {
            "group": g.name,
            "modality": g.modality,
            "layer": int(g.name.split(".layers.")[1].split(".")[0]),
            "head": h,
            "score": float(raw[g.name][h]),
            "pruned": h in pruned.get(g.name, []),
        }
        for g in groups
        for h in range(g.size)
    ]
