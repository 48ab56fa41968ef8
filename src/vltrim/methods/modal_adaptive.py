"""`modal-adaptive`: EfficientVLM's modal-adaptive pruning (Wang et al., Findings of ACL 2023), the step after its
distilled student ("distilling then pruning").

A hard-concrete gate (temperature 2/3, stretch (-0.1, 1.1); Louizos et al. 2018) on every attention head and FFN
neuron of every tower (vision, text, fusion, decoder), one fresh draw per training step read by every forward of
the step (BLIP's ITM loss runs the text encoder twice, ITC and ITM: both see it, as in the reference), the
deterministic gate in eval. log-alpha starts as the reference sets it (heads 10, FFN neurons 0) and is clamped to [ln 0.01, ln 100]
after each step. One budget over all modalities: the expected share of the prunable cost removed, s = the sum over
units of P(gate shut) x the unit's exact cost (the shared cost model, so a cross-attention head costs its key/value
width and the image tokens) over the prunable total, is driven to the target t by the Lagrangian
l1 * (t - s) + l2 * (t - s)^2, the multipliers trained by gradient ascent (their own AdamW group with ``maximize``;
the reference uses a negative LR), log-alpha with its own LR, t ramping linearly from 0 over ``warmup`` of the
search steps. The search loss is the task loss + the run's distillation + the Lagrangian.
After the search: the deterministic plan (units ranked by their gates' probability of being open, cut by the shared
`select` to the target, cost-exact and aligned), the kept units' deterministic gate values folded into the weights
(so the searched model and the pruned one compute the same), then compress retrains it."""

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
from vltrim.arch.masks import HardConcreteGate
from vltrim.checks import integer, number
from vltrim.data.calibration import calibration_data
from vltrim.methods.common import mean_over_ranks, plan_from_keep, prunable_groups
from vltrim.methods.registry import KD, BudgetConfig, Result, TrainingSearch, register
from vltrim.structure.groups import Group, UnitKind
from vltrim.structure.select import MAX_RATIO, Budget, cost_of, select
from vltrim.train import train

LOG_ALPHA_RANGE = (math.log(1e-2), math.log(1e2))  # the reference's clamp after every step
INIT = {UnitKind.HEADS: 10.0, UnitKind.NEURONS: 0.0}  # the reference's log-alpha means (heads open, FFN P ~ 0.83)


class Gates:
    """The hard-concrete gates of ``groups``, the multipliers, and the expected share of prunable cost removed."""

    def __init__(self, groups: list[Group], metric: str, init: dict[UnitKind, float], temperature: float):
        cost = cost_of(metric)
        self.groups = groups
        self.gates = {  # drawn once per training step (`draw`), as the reference: BLIP's ITM loss runs a tower twice
            g.name: HardConcreteGate(g.size, init[g.kind], temperature, per_forward=False) for g in groups
        }
        self.unit_cost = {g.name: cost.saved(g, g.size) / g.size for g in groups}
        self.total = sum(self.unit_cost[g.name] * g.size for g in groups)
        self.lambdas = nn.Parameter(torch.zeros(2))

    def log_alphas(self) -> list[nn.Parameter]:
        return [g.log_alpha for g in self.gates.values()]

    def expected_removed(self) -> torch.Tensor:
        """Expected share of the prunable cost whose gates are closed (differentiable in log-alpha)."""
        closed = sum((1 - self.gates[g.name].prob_open()).sum() * self.unit_cost[g.name] for g in self.groups)
        return closed / self.total

    def lagrangian(self, target: float) -> torch.Tensor:
        """l1 * gap + l2 * gap^2 with gap = target - expected removed share (> 0: over budget). Minimised by the
        gates, maximised by the multipliers: over budget l1 rises and pushes the gates shut."""
        gap = target - self.expected_removed()
        return self.lambdas[0] * gap + self.lambdas[1] * gap**2

    def resample(self, training: bool) -> None:
        for g in self.gates.values():
            g.resample(training)

    def draw(self) -> None:
        """This training step's gates: every forward of the step (ITC and ITM, student and KD) reads the same draw."""
        for g in self.gates.values():
            g.draw()

    @torch.no_grad()
    def clamp_(self) -> None:
        for p in self.log_alphas():
            p.clamp_(*LOG_ALPHA_RANGE)

    def scores(self) -> dict[str, torch.Tensor]:
        return {n: g.prob_open().detach().double() for n, g in self.gates.items()}


class _Search:
    """The step hook of the search: the ramped target, the multipliers' log and resumable gate state."""

    def __init__(self, gates: Gates, target: float, warmup_steps: int):
        self.gates, self.target, self.warmup, self.step = gates, target, warmup_steps, 0
        self.log: list[dict[str, float]] = []

    def target_now(self) -> float:
        return self.target * min(1.0, self.step / self.warmup) if self.warmup else self.target

    def loss(self, base: Callable) -> Callable:
        """``base`` + the Lagrangian, on one fresh draw of the gates per call (one training step's batch)."""

        def search_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            self.gates.draw()
            return base(model, batch) + self.gates.lagrangian(self.target_now())

        return search_loss

    def __call__(self, step: int) -> dict[str, float]:
        for p in [*self.gates.log_alphas(), self.gates.lambdas]:  # outside the model: DDP does not average them
            if p.grad is not None:
                p.grad = mean_over_ranks(p.grad)
        self.step = step + 1
        with torch.no_grad():
            row = {
                "expected_removed": float(self.gates.expected_removed()),
                "target_now": self.target_now(),
                "lambda_1": float(self.gates.lambdas[0]),
                "lambda_2": float(self.gates.lambdas[1]),
            }
        self.log.append({"step": self.step, **row})
        return {"removed": row["expected_removed"], "t": row["target_now"]}

    def after_step(self, _done: int, _model: nn.Module) -> None:
        self.gates.clamp_()

    def state_dict(self) -> dict[str, Any]:
        return {
            # the loop saves a checkpoint before `after_step` clamps: save what the clamp makes of it
            "log_alpha": {n: g.log_alpha.detach().clamp(*LOG_ALPHA_RANGE) for n, g in self.gates.gates.items()},
            "lambdas": self.gates.lambdas.detach().clone(),
            "step": self.step,
            "log": self.log,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        with torch.no_grad():
            for n, g in self.gates.gates.items():
                g.log_alpha.copy_(s["log_alpha"][n])
            self.gates.lambdas.copy_(s["lambdas"])
        self.step, self.log = s["step"], list(s["log"])


@dataclass(frozen=True)
class ModalAdaptiveConfig(BudgetConfig):
    """Settings of modal-adaptive: L0 gates under one budget shared by every modality.

    Its plans record the unit kinds, the search's steps, lr, batch size and seed, and gate_lr, lagrangian_lr, warmup,
    temperature and the log-alpha inits."""

    units: str | tuple[str, ...] = "heads,neurons"
    allocation: str = "global"
    gate_lr: float = 0.01
    lagrangian_lr: float = 0.01
    warmup: float = 0.5
    temperature: float = 2 / 3
    head_init: float = INIT[UnitKind.HEADS]
    neuron_init: float = INIT[UnitKind.NEURONS]

    def validate(self) -> None:
        number("gate_lr", self.gate_lr)
        number("lagrangian_lr", self.lagrangian_lr)
        number("warmup", self.warmup, high=1.0, low_open=False)
        number("temperature", self.temperature)
        number("head_init", self.head_init, low=-math.inf)
        number("neuron_init", self.neuron_init, low=-math.inf)
        if self.allocation != "global":
            raise ValueError(
                f"modal-adaptive learns one budget shared by every modality: allocation must be 'global', got "
                f"{self.allocation!r}"
            )

    def plan_settings(self, **found: Any) -> dict[str, Any]:
        return {
            "units": found["units"],
            "steps": found["steps"],
            "lr": found["lr"],
            "batch_size": found["batch_size"],
            "seed": found["seed"],
            "gate_lr": self.gate_lr,
            "lagrangian_lr": self.lagrangian_lr,
            "warmup": self.warmup,
            "temperature": self.temperature,
            "head_init": self.head_init,
            "neuron_init": self.neuron_init,
        }


@register
class ModalAdaptiveMethod(TrainingSearch):
    name = "modal-adaptive"
    Config = ModalAdaptiveConfig
    # EfficientVLM distils hidden states and attention maps while pruning (and the task's logit / similarity KD)
    descriptor = dataclasses.replace(TrainingSearch.descriptor, kd=KD(hidden=1.0, attention=1.0))

    def run(
        self,
        model: nn.Module,
        target: float,
        train_data: Dataset,
        loss_fn: Callable | None = None,
        steps: int = 300,
        lr: float = 1e-4,
        batch_size: int = 64,
        metric: str = "params",
        align: int = 8,
        units: str | tuple[str, ...] = "heads,neurons",
        allocation: str = "global",
        max_ratio: float = MAX_RATIO,
        gate_lr: float = 0.01,
        lagrangian_lr: float = 0.01,
        warmup: float = 0.5,
        temperature: float = 2 / 3,
        head_init: float = INIT[UnitKind.HEADS],
        neuron_init: float = INIT[UnitKind.NEURONS],
        seed: int = 0,
        progress: bool = True,
        **loop: Any,
    ) -> Result:
        """Learn the gates for ``steps`` training steps on a copy of ``model`` (the original is not changed), then
        return the deterministic plan and the searched weights. ``loop`` goes to the training loop (grad_accum,
        mixed_precision, output_dir, checkpoint_every, resume: a resumed search restores gates and multipliers)."""
        config = ModalAdaptiveConfig.pick(locals())
        if loss_fn is None:
            raise ValueError("modal-adaptive trains its gates on a loss: pass loss_fn (vltrim.plan / compress: task)")
        integer("steps", steps, 1)
        budget = Budget(target, metric, align, allocation, max_ratio)
        train_data = calibration_data(train_data, model, "train_data")
        work = copy.deepcopy(model)
        groups = prunable_groups(work, units)
        if any(g.kind not in INIT for g in groups):
            raise ValueError("modal-adaptive gates attention heads and FFN neurons: units must be 'heads,neurons'")
        gates = Gates(groups, metric, {UnitKind.HEADS: head_init, UnitKind.NEURONS: neuron_init}, temperature)
        state = _Search(gates, target, round(warmup * steps))
        handles = masks.attach(get_adapter(work), work, gates.gates)
        try:
            train(
                work,
                train_data,
                state.loss(loss_fn),
                steps,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                desc=f"modal-adaptive search to {target:.0%}",
                progress=progress,
                after_backward=state,
                after_step=state.after_step,
                schedule="constant",
                param_groups=[
                    {"params": gates.log_alphas(), "lr": gate_lr, "weight_decay": 0.0},
                    {"params": [gates.lambdas], "lr": lagrangian_lr, "weight_decay": 0.0, "maximize": True},
                ],
                **loop,
            )
        finally:
            handles.remove()
        keep = select(groups, gates.scores(), budget)
        fold_gates(work, groups, gates)
        settings = config.plan_settings(
            units=sorted({g.kind.value for g in groups}), steps=steps, lr=lr, batch_size=batch_size, seed=seed
        )
        plan = plan_from_keep(work, groups, keep, budget, self.name, settings)
        return Result(plan, work.eval(), {"search_log": state.log})


def fold_gates(model: nn.Module, groups: list[Group], gates: Gates) -> None:
    """Multiply every unit's deterministic gate value into the weights: the kept units keep the scale they were
    searched with (removed units are sliced away), so the pruned model computes what the gated one did in eval."""
    adapter = get_adapter(model)
    gates.resample(False)
    for g in groups:
        adapter.fold(model, g, gates.gates[g.name].values().detach())
