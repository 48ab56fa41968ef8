"""`magnitude`: zero the smallest |w| of the block Linears (q, k, v, o, fc1, fc2 of every tower; not embeddings or
heads): unstructured, with one global threshold (scope 'global', L1 across layers) or the same share per Linear
(scope 'layer'), or the 2:4 semi-structured pattern (2 of every 4 weights along the input dimension: 50%).

The plan records, per Linear, the pattern and the share its weights must have zeroed; for scope 'global' that is
what the global threshold gave the Linear, so applying the plan (k smallest |w| per Linear) is exactly the global
cut and reproducible from the plan alone. Weights stay dense: params and MACs do not change (``achieved`` says
so); only 2:4 on a CUDA GPU (structure/sparsify.py ``to_semi_structured``) turns zeros into speed.

Iterative pruning (prune, retrain, prune more) uses ``sparsity_schedule``: round ``step`` of ``rounds`` plans the
schedule's sparsity; weights already zero are the smallest, so each round's plan keeps the earlier zeros.
``compress(method="magnitude", method_settings={"rounds": R})`` runs the R rounds with retraining in between
(`round_target`), the zeros frozen while it retrains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vltrim.arch import class_name, get_adapter
from vltrim.checks import choice, integer, number
from vltrim.measure import count_macs, count_params
from vltrim.methods.registry import Descriptor, Method, MethodConfig, register
from vltrim.structure.plan import Plan
from vltrim.structure.sparsify import PATTERNS, check_semi_shape, prune_mask

SCOPES = ("global", "layer")


def sparsity_schedule(target: float, rounds: int, initial: float = 0.0) -> list[float]:
    """Sparsity after each of ``rounds`` prune-retrain rounds, ending at ``target``: the cubic schedule of Zhu & Gupta
    (2017), s_t = target + (initial - target) (1 - t/rounds)^3, which prunes most while the weights are redundant."""
    target = number("target", target, high=1.0)
    rounds = integer("rounds", rounds, 1)
    initial = number("initial", initial, high=target, low_open=False)
    return [target + (initial - target) * (1 - t / rounds) ** 3 for t in range(1, rounds + 1)]


def global_counts(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, int]:
    """Weights each Linear loses under one global magnitude cut of ``round(sparsity * total)`` weights; ties at the
    threshold go to the earlier Linears (what a stable sort of all |w| in this order would give)."""
    mags = {n: w.detach().abs().flatten().float() for n, w in weights.items()}
    total = sum(m.numel() for m in mags.values())
    k = int(round(sparsity * total))
    if k == 0:
        return dict.fromkeys(weights, 0)
    thr = torch.cat(list(mags.values())).kthvalue(k).values
    out = {n: int((m < thr).sum()) for n, m in mags.items()}
    left = k - sum(out.values())
    for n, m in mags.items():
        take = min(left, int((m == thr).sum()))
        out[n] += take
        left -= take
    return out


def _check(target: float, pattern: str, scope: str, rounds: int, step: int | None) -> tuple[float, int, int]:
    """The search's options, each error naming its option; (this round's sparsity, rounds, step)."""
    choice("pattern", pattern, PATTERNS)
    choice("scope", scope, SCOPES)
    target = number("target", target, high=1.0)
    if target >= 1.0:
        raise ValueError(
            f"target must be a sparsity in (0, 1) (a share of the block-Linear weights to zero), got {target!r}"
        )
    rounds = integer("rounds", rounds, 1)
    step = rounds if step is None else integer("step", step, 1, rounds)
    return sparsity_schedule(target, rounds)[step - 1], rounds, step


def _achieved(model: nn.Module, lins: dict[str, nn.Linear], entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Exact zeros the plan leaves in the block Linears (earlier zeros included), and the unchanged dense counts."""
    total = zeros = new = 0
    for n, lin in lins.items():
        w = lin.weight.detach()
        z = w == 0
        if n in entries:
            m = prune_mask(w, entries[n]["pattern"], entries[n]["sparsity"], n)
            new += int((m & ~z).sum())
            z = z | m
        total, zeros = total + w.numel(), zeros + int(z.sum())
    params, macs = count_params(model), count_macs(model, get_adapter(model).reference_inputs(model, 1))
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters()) - new
    return {
        "sparsity": zeros / total,
        "prunable_params": total,
        "zero_weights": zeros,
        "nonzero_params": nonzero,
        "model_params_before": params,
        "model_params_after": params,
        "model_macs_before": macs,
        "model_macs_after": macs,
        "layers_sparsified": len(entries),
        "layers_sparsifiable": len(lins),
        "note": "zeros are stored in dense weights: params and MACs are unchanged; 2:4 on a CUDA GPU can run faster",
    }


@dataclass(frozen=True)
class MagnitudeConfig(MethodConfig):
    """Settings of magnitude: single weights (unstructured or 2:4), in rounds if asked.

    Its plans record the serialised config with ``step`` resolved (None: the last round, ``rounds``). Compress runs
    every round itself, so it refuses ``step`` with rounds > 1 (the descriptor's ``round_settings``)."""

    pattern: str = "unstructured"
    scope: str = "global"
    rounds: int = 1
    step: int | None = None

    def validate(self) -> None:
        choice("pattern", self.pattern, PATTERNS)
        choice("scope", self.scope, SCOPES)
        rounds = integer("rounds", self.rounds, 1)
        if self.step is not None:
            integer("step", self.step, 1, rounds)


@register
class MagnitudeMethod(Method):
    """Magnitude (L1) weight pruning of the block Linears: unstructured (global or per layer) or 2:4."""

    name = "magnitude"
    Config = MagnitudeConfig
    descriptor = Descriptor(step="sparsify", rounds=True, round_settings=("step",))

    def round_target(
        self, model: nn.Module, start: nn.Module, target: float, step: int, rounds: int, **settings: Any
    ) -> tuple[float, dict[str, Any]]:
        """Round ``step`` of compress's prune-retrain rounds: the search of round ``step`` of the cubic schedule to
        ``target`` (the schedule counts every zero of the block Linears, so ``start`` is not needed)."""
        return target, {**settings, "rounds": rounds, "step": step}

    def search(
        self,
        model: nn.Module,
        target: float = 0.5,
        pattern: str = "unstructured",
        scope: str = "global",
        rounds: int = 1,
        step: int | None = None,
    ) -> Plan:
        """A sparsify plan zeroing the smallest |w|: ``target`` of the block-Linear weights (round ``step`` of
        ``rounds`` of the cubic schedule when rounds > 1), or 2:4 (``target`` ignored: 50% by construction)."""
        config = MagnitudeConfig.pick(locals())
        sparsity, rounds, step = _check(target, pattern, scope, rounds, step)
        lins = {n: m for n, m in get_adapter(model).linears(model).items() if isinstance(m, nn.Linear)}
        if not lins:
            raise ValueError(f"magnitude: {type(model).__name__} has no dense block Linear to sparsify")
        if pattern == "2:4":
            for n, m in lins.items():
                check_semi_shape(m.weight, repr(n))
            entries = {n: {"pattern": "2:4", "sparsity": 0.5} for n in lins}
        else:
            sizes = {n: m.weight.numel() for n, m in lins.items()}
            counts = (
                global_counts({n: m.weight for n, m in lins.items()}, sparsity)
                if scope == "global"
                else {n: int(round(sparsity * s)) for n, s in sizes.items()}
            )
            entries = {n: {"pattern": "unstructured", "sparsity": k / sizes[n]} for n, k in counts.items() if k}
            if not entries:
                raise ValueError(
                    f"target {sparsity:.3g} zeroes no weight of {type(model).__name__}'s block Linears; raise target"
                )
        goal = (
            {"sparsity": 0.5, "pattern": pattern}
            if pattern == "2:4"
            else {
                "sparsity": sparsity,
                "pattern": pattern,
                "scope": scope,
                **({"final_sparsity": float(target)} if rounds > 1 else {}),
            }
        )
        return Plan(
            class_name(model),
            {},
            {},
            {},
            method=self.name,
            settings=config.plan_settings(rounds=rounds, step=step),
            target=goal,
            achieved=_achieved(model, lins, entries),
            sparsify=entries,
        )
