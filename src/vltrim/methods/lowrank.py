"""`lowrank`: replace block Linears by their truncated SVD (in -> r -> out), ranks chosen by one global ranking
of singular directions by exact cost (mode 'global') or per layer by kept energy (mode 'energy').

A direction's score is its share of its layer's energy (sigma^2 / sum sigma^2, so layers of any scale compare)
divided by its exact cost (in+out params, times the tower's reference tokens for MACs). A layer saves only once
r*(in+out) < in*out, so the cut counts real savings and a layer whose rank would not save stays dense (not in
the plan). Data-aware (``data=``): the SVD is of W diag(s), s = RMS of each input feature on the calibration
batches, then unscaled, so truncation minimises the output error on those inputs rather than the weight error;
the scales are stored in the plan, so applying it needs no data."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vltrim.arch import class_name, get_adapter
from vltrim.checks import flag, integer, kept_modes, number
from vltrim.data.calibration import calibration_data, check_batch_values, class_count, is_item, text_vocab_rows
from vltrim.measure import count_macs, count_params
from vltrim.methods.common import checked_batches
from vltrim.methods.registry import Descriptor, Method, MethodConfig, register
from vltrim.structure.costs import cost_of
from vltrim.structure.factorize import saves_params
from vltrim.structure.groups import Directions
from vltrim.structure.plan import Plan
from vltrim.structure.select import Budget, cut, removal_chunks
from vltrim.train.loop import batches

MODES = ("global", "energy")
ENERGY_TOL = 1e-9  # kept energy within this of the asked share counts as reaching it (float rounding of a full rank)
SCALE_DIGITS = 6  # significant digits of the data-aware scales stored in the plan (the SVD uses the rounded values)


@dataclass
class Layer(Directions):
    """One factorable Linear: its shape, the MAC weight of its tower and the energy share of each direction."""

    energy: torch.Tensor  # float64, descending, sums to 1

    def cost(self, metric: str) -> int:
        """Exact cost of one kept direction (in+out params; times tokens for MACs)."""
        return (self.inp + self.out) * (self.tokens if metric == "macs" else 1)

    def dense(self, metric: str) -> int:
        return self.inp * self.out * (self.tokens if metric == "macs" else 1)

    def saved(self, rank: int | None, metric: str) -> int:
        """Cost removed at ``rank`` (0 when dense or when the rank would not save): `structure.costs`'s exact cost."""
        return 0 if rank is None else cost_of(metric).saved(self, self.size - rank)


# ---- calibration statistics ---------------------------------------------------------------------
def input_scales(
    model: nn.Module, linears: dict[str, nn.Linear], batches: Iterable[dict[str, Any]]
) -> dict[str, torch.Tensor]:
    """RMS of each input feature of each Linear over every token of ``batches`` in eval mode (float64, floored at
    1e-6 of the layer's largest so it stays > 0, rounded to SCALE_DIGITS as stored in the plan)."""
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
    counts = dict.fromkeys(linears, 0)

    def hook(name: str):
        def pre(_mod, args):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            sums[name] += x.pow(2).sum(0).cpu()
            counts[name] += x.shape[0]

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    adapter, keys, dev = get_adapter(model), _forward_keys(model), next(model.parameters()).device
    try:
        with torch.no_grad(), kept_modes(model):
            model.eval()
            for batch in batches:
                adapter.forward(
                    model,
                    {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items() if keys is None or k in keys},
                )
    finally:
        for h in handles:
            h.remove()
    if not any(counts.values()):
        raise ValueError("lowrank: the calibration data gave no batch (data is empty?)")
    out = {}
    for n, s in sums.items():
        rms = (s / max(counts[n], 1)).sqrt()
        out[n] = _round(rms.clamp_min(max(float(rms.max()) * 1e-6, 1e-12)))
    return out


def _forward_keys(model: nn.Module) -> set[str] | None:
    """Argument names the model's forward takes (None if it takes **kwargs): batch keys like labels are dropped."""
    params = inspect.signature(model.forward).parameters
    return None if any(p.kind == p.VAR_KEYWORD for p in params.values()) else set(params)


def _round(t: torch.Tensor) -> torch.Tensor:
    return torch.tensor([float(f"{v:.{SCALE_DIGITS}g}") for v in t.tolist()], dtype=torch.float64)


def calibration_batches(
    data: Any, num_batches: int, batch_size: int, seed: int, model: nn.Module | None = None
) -> Iterable[dict[str, Any]]:
    """At most ``num_batches`` input dicts from ``data``: one batch dict, a list of batch dicts, or anything compress
    takes as data (a map-style dataset, a list of item dicts, a DataLoader, a Hugging Face Dataset), batched. A dict
    whose tensors are one item's (pixel_values of 3 dimensions, token ids of 1) is an item, not a batch. Every batch
    passes the calibration check (`vltrim.data.calibration`) against ``model``."""
    if isinstance(data, Mapping) and not is_item(data):
        return _checked([data], model)
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], Mapping) and not is_item(data[0]):
        return _checked(list(data[:num_batches]), model)
    if not isinstance(data, Dataset) and _is_batch_stream(data):
        return islice(data, num_batches)  # an iterator of batches (read once): not checked ahead
    data = calibration_data([data] if isinstance(data, Mapping) else data, model, "data")
    n = min(num_batches, max(1, math.ceil(len(data) / batch_size)))
    return islice(
        checked_batches(data, batch_size, seed, model, "data")
        if model is not None
        else batches(data, batch_size, seed),
        n,
    )


def _is_batch_stream(data: Any) -> bool:
    """An iterator or generator of batch dicts (no length, no indexing): lowrank's own older input form."""
    return hasattr(data, "__next__") or (hasattr(data, "__iter__") and not hasattr(data, "__getitem__"))


def _checked(batches_: list[Any], model: nn.Module | None) -> list[Any]:
    """The batch dicts ``batches_``, each checked (vocabulary, labels, finite values) against ``model``."""
    rows = text_vocab_rows(model) if model is not None else None
    classes = class_count(model) if model is not None else None
    for i, b in enumerate(batches_):
        if not isinstance(b, Mapping):
            raise TypeError(f"data: batch {i} is a {type(b).__name__}, not a dict of input tensors")
        n = next((len(v) for v in b.values() if torch.is_tensor(v) and v.dim()), 1)
        check_batch_values(b, f"data (batch {i})", list(range(n)), rows, classes)
    return batches_


# ---- rank choice --------------------------------------------------------------------------------
def energy_shares(weight: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    """Share of the (scaled) matrix's squared singular values held by each direction, descending."""
    w = weight.detach().double()
    sv2 = torch.linalg.svdvals(w * scales.to(w.device) if scales is not None else w).pow(2).cpu()
    total = float(sv2.sum())
    return sv2 / total if total > 0 else torch.full_like(sv2, 1.0 / len(sv2))


def aligned_up(k: int, align: int) -> int:
    """``k`` rounded up to a multiple of ``align``, at least ``align``."""
    return max(align, -(-k // align) * align)


def energy_ranks(layers: list[Layer], energy: float, align: int) -> dict[str, int]:
    """Per layer, the smallest aligned rank holding ``energy`` of its squared singular values (dense if it saves nothing)."""
    out = {}
    for ly in layers:
        cum = torch.cumsum(ly.energy, 0)
        k = int(torch.searchsorted(cum, torch.tensor(energy - ENERGY_TOL, dtype=cum.dtype))) + 1
        r = aligned_up(min(k, len(cum)), align)
        if r < min(ly.out, ly.inp) and saves_params(ly.out, ly.inp, r):
            out[ly.name] = r
    return out


def global_ranks(layers: list[Layer], budget: Budget) -> dict[str, int]:
    """One ranking of singular directions by energy share / exact cost, removed lowest first in aligned chunks
    until the real saving (a layer saves only below break-even) reaches ``budget.target`` of the dense cost.

    structure/select.py's one greedy (`cut`) over the exact cost of ``budget.metric``, which prices a layer's
    `Directions` by what its rank saves (nothing until r*(in+out) < in*out), so the stop test counts real savings."""
    metric = budget.metric
    by_name = {ly.name: ly for ly in layers}

    def score(name: str, start: int, n: int) -> float:
        ly = by_name[name]
        end = ly.size - start
        return float(ly.energy[end - n : end].mean()) / ly.cost(metric)

    removed = cut(
        layers,
        {ly.name: removal_chunks(ly.size, budget.align) for ly in layers},
        score,
        cost_of(metric),
        budget.target,
        1.0,  # no cap on a layer's share: its chunks stop at rank ``align`` anyway
        lambda reached: (
            f"lowrank: target {budget.target:.3f} of factorable {metric} is not reachable with "
            f"align={budget.align}: at most {reached:.3f} (every layer at rank {budget.align})"
        ),
    )
    ranks = {n: by_name[n].size - r for n, r in removed.items() if r}
    return {n: r for n, r in ranks.items() if by_name[n].saved(r, metric) > 0}


# ---- the plan -----------------------------------------------------------------------------------
def factor_achieved(model: nn.Module, layers: list[Layer], ranks: dict[str, int]) -> dict[str, Any]:
    """Exact shares of the factorable params and MACs removed, and whole-model counts before and after."""
    by_name = {ly.name: ly for ly in layers}
    ref = get_adapter(model).reference_inputs(model, 1)
    out: dict[str, Any] = {}
    for metric, before in (("params", count_params(model)), ("macs", count_macs(model, ref))):
        total = sum(ly.dense(metric) for ly in layers)
        gone = sum(by_name[n].saved(r, metric) for n, r in ranks.items())
        out.update(
            {
                f"prunable_{metric}": total,
                f"{metric}_removed": gone / total if total else 0.0,
                f"model_{metric}_before": before,
                f"model_{metric}_after": before - gone,
            }
        )
    out.update(layers_factorized=len(ranks), layers_factorable=len(layers))
    return out


def _check(
    mode: str, target: float, metric: str, align: int, energy: float | None
) -> tuple[Budget | None, float | None]:
    """The search's options, each error naming its option; the Budget (mode 'global') or the energy (mode 'energy')."""
    if mode not in MODES:
        raise ValueError(f"lowrank: mode must be one of {', '.join(MODES)}, got {mode!r}")
    align = integer("align", align, 1)
    if mode == "energy":
        if energy is None:
            raise ValueError(
                "lowrank: mode='energy' needs energy=, the share in (0, 1] of each layer's squared singular values to keep"
            )
        if metric not in ("params", "macs"):
            raise ValueError(f"metric must be 'params' or 'macs', got {metric!r}")
        return None, number("energy", energy, high=1.0)
    if energy is not None:
        raise ValueError("lowrank: energy= is for mode='energy'; mode='global' cuts to target")
    return Budget(target, metric, align), None


@dataclass(frozen=True)
class LowRankConfig(MethodConfig):
    """Settings of lowrank: truncated SVD ranks of every block Linear.

    Its plans record (``plan_settings``) the mode, whether the SVD was weighted by input RMS (resolved: True when
    calibration data was given and weighted was not False) and num_batches when it was; the target, metric, align
    (and energy) are in the plan's target."""

    metric: str = "params"
    align: int = 8
    mode: str = "global"
    energy: float | None = None
    weighted: bool | None = None
    num_batches: int = 8

    def validate(self) -> None:
        """The settings (target, metric and align: the budget checks them)."""
        _check(self.mode, 0.5, "params", 1, self.energy)
        if self.weighted is not None:
            flag("weighted", self.weighted)
        integer("num_batches", self.num_batches, 1)

    def plan_settings(self, **found: Any) -> dict[str, Any]:
        weighted = found["weighted"]
        return {"mode": self.mode, "weighted": weighted, **({"num_batches": self.num_batches} if weighted else {})}


@register
class LowRankMethod(Method):
    """Truncated-SVD factorisation of the block Linears (q, k, v, o, fc1, fc2 of every tower)."""

    name = "lowrank"
    Config = LowRankConfig
    descriptor = Descriptor(data="optional", step="factorize", runtime=("data", "batch_size", "seed"))

    def search(
        self,
        model: nn.Module,
        target: float = 0.5,
        metric: str = "params",
        align: int = 8,
        mode: str = "global",
        energy: float | None = None,
        data: Any = None,
        weighted: bool | None = None,
        num_batches: int = 8,
        batch_size: int = 16,
        seed: int = 0,
    ) -> Plan:
        """A factorize plan: ranks by global ranking (remove ``target`` of the factorable ``metric``) or by kept
        ``energy`` per layer; with ``data`` (and ``weighted`` not False) the SVD is weighted by input RMS."""
        config = LowRankConfig.pick(locals())
        budget, energy = _check(mode, target, metric, align, energy)
        weighted = data is not None if weighted is None else weighted
        if weighted and data is None:
            raise ValueError("lowrank: weighted=True needs calibration data (data=: input dicts or a Dataset)")
        adapter = get_adapter(model)
        lins = {n: m for n, m in adapter.linears(model).items() if isinstance(m, nn.Linear)}
        if not lins:
            raise ValueError(f"{type(model).__name__} has no dense Linear left to factorise")
        scales = (
            input_scales(
                model,
                lins,
                calibration_batches(
                    data, integer("num_batches", num_batches, 1), integer("batch_size", batch_size, 1), seed, model
                ),
            )
            if weighted
            else {}
        )
        tokens = adapter.linear_tokens(model)
        layers = [
            Layer(n, m.out_features, m.in_features, tokens[n], energy_shares(m.weight, scales.get(n)))
            for n, m in lins.items()
        ]
        ranks = global_ranks(layers, budget) if budget else energy_ranks(layers, energy, int(align))
        settings = config.plan_settings(weighted=weighted)
        goal = (
            {"target": budget.target, "metric": metric, "align": budget.align}
            if budget
            else {"energy": energy, "metric": metric, "align": int(align)}
        )
        return Plan(
            class_name(model),
            {},
            {},
            {},
            method=self.name,
            settings=settings,
            target=goal,
            achieved=factor_achieved(model, layers, ranks),
            factorize=ranks,
            factor_shapes={n: [lins[n].out_features, lins[n].in_features] for n in ranks},
            factor_scales={n: scales[n].tolist() for n in ranks if n in scales},
        )
