"""Soft masks as forward hooks: scale units in the forward pass without copying the model.

A mask value of 0 for a unit gives exactly the function of the model with that unit sliced away; 1 is
the identity. Values come from a mask parametrisation (`MaskParam`) read at every forward: fixed values, updated in
place or trained by a method (`ScalarMask`: UPop's scalars, gradients flow to a tensor with ``requires_grad``), k
ablations at once (`BatchedMask`: MoPE), or hard-concrete gates drawn afresh for each training forward and
deterministic in eval (`HardConcreteGate`: L0 pruning). A plain tensor is taken as scalar (1-D) or batched (2-D)."""

from __future__ import annotations

import math

import torch
from torch import nn

from vltrim.arch.patches import hookable
from vltrim.structure.slicing import AttentionSite, BlockSpec, Tower


class HandleGroup:
    """Several hook handles removed together."""

    def __init__(self, handles: list) -> None:
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


# ---- mask parametrisations ------------------------------------------------------------------------------------
class MaskParam:
    """Where a group's unit values come from: ``values()`` is read by every hook of one forward (so all hooks of a
    group see the same draw); ``resample(training)`` runs once before each forward of its tower (`attach`)."""

    def values(self) -> torch.Tensor:
        raise NotImplementedError

    def resample(self, training: bool) -> None:
        """Draw this forward's values (no-op for fixed values)."""


class ScalarMask(MaskParam):
    """One value per unit, the caller's tensor itself (not a copy: updates and gradients reach it)."""

    def __init__(self, values: torch.Tensor) -> None:
        self.tensor = values

    def values(self) -> torch.Tensor:
        return self.tensor


class BatchedMask(ScalarMask):
    """k ablations at once, shape [k, units]: the batch is k blocks of items, block j is scaled by row j."""


class HardConcreteGate(nn.Module, MaskParam):
    """Hard-concrete gates of L0 pruning (Louizos et al. 2018): one log-alpha per unit; in training a fresh
    stretched, clamped sample per forward of its tower (``per_forward=False``: only when `draw` is called, e.g. once
    per training step), in eval the deterministic gate clamp(sigmoid(log_alpha) * (r - l) + l)."""

    def __init__(
        self,
        size: int,
        init: float = 0.0,
        temperature: float = 2 / 3,
        limits: tuple = (-0.1, 1.1),
        per_forward: bool = True,
    ) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((size,), float(init)))
        self.temperature, (self.low, self.high) = temperature, limits
        self.per_forward = per_forward
        self._draw: torch.Tensor | None = None

    def resample(self, training: bool) -> None:
        if not training:
            self._draw = None
        elif self.per_forward or self._draw is None:
            self.draw()

    def draw(self) -> None:
        """A fresh training sample, held until the next draw (or an eval forward)."""
        u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (-u).log1p() + self.log_alpha) / self.temperature)
        self._draw = (s * (self.high - self.low) + self.low).clamp(0, 1)

    def values(self) -> torch.Tensor:
        if self._draw is not None:
            return self._draw
        return (torch.sigmoid(self.log_alpha) * (self.high - self.low) + self.low).clamp(0, 1)

    def prob_open(self) -> torch.Tensor:
        """P(gate > 0) per unit, differentiable in log-alpha (what an expected-cost penalty sums)."""
        return torch.sigmoid(self.log_alpha - self.temperature * math.log(-self.low / self.high))


MaskValues = torch.Tensor | MaskParam


def as_param(values: MaskValues) -> MaskParam:
    """A tensor as its parametrisation (1-D scalar, 2-D batched); a `MaskParam` as is."""
    if isinstance(values, MaskParam):
        return values
    return BatchedMask(values) if values.dim() == 2 else ScalarMask(values)


def _scale(x: torch.Tensor, m: torch.Tensor, unit_dims: int = 1) -> torch.Tensor:
    """``x`` times unit values ``m`` over its last ``unit_dims`` dims. With one more leading dim, ``m`` holds
    k ablations (batched masks): the batch is k blocks of items, and block j is scaled by ``m[j]``."""
    m = m.to(dtype=x.dtype, device=x.device)
    if m.dim() == unit_dims:
        return x * m
    k = m.shape[0]
    xs = x.unflatten(0, (k, -1))
    return (xs * m.view(k, *[1] * (xs.dim() - 1 - unit_dims), *m.shape[1:])).flatten(0, 1)


def _per_channel(m: torch.Tensor, heads: int) -> torch.Tensor:
    """head_dim values repeated for each of ``heads`` heads (the channel order of q, k or v rows)."""
    return m.repeat(*[1] * (m.dim() - 1), heads)


def mask_heads(a: AttentionSite, values: MaskValues) -> HandleGroup:
    """Scale each head unit's slice of the out-projection input (its only way into the residual stream); with GQA
    a unit's query heads are adjacent there."""
    p, units, width = as_param(values), a.units, a.q_per_kv * a.head_dim

    def pre(_mod, args):
        m = p.values()
        y = _scale(args[0].unflatten(-1, (units, width)), m.unsqueeze(-1), unit_dims=2).flatten(-2)
        return (y, *args[1:])

    return _with_patch(a, [a.o.register_forward_pre_hook(pre)])


def mask_head_dims(a: AttentionSite, values: MaskValues) -> HandleGroup:
    """Scale channel c of every head in q and v: q.k loses the channel's term, v its output column (in a fused qkv,
    its q and v sections); a rotary site's unit scales both channels of its pair."""
    p, heads, kv_heads, hd = as_param(values), a.num_heads, a.num_kv_heads, a.head_dim
    unit_of = torch.as_tensor([c % a.dim_units for c in range(hd)])  # each channel's unit (a rotary pair)

    def channels() -> torch.Tensor:
        m = p.values()
        return m if a.dim_units == hd else m.index_select(-1, unit_of.to(m.device))

    def make(n: int):
        def post(_mod, _args, out):
            return _scale(out, _per_channel(channels(), n))

        return post

    def fused(_mod, _args, out):
        m = channels()
        q, k, v = out.split([heads * hd, kv_heads * hd, kv_heads * hd], dim=-1)
        return torch.cat([_scale(q, _per_channel(m, heads)), k, _scale(v, _per_channel(m, kv_heads))], dim=-1)

    if a.qkv is not None:
        return _with_patch(a, [a.qkv.register_forward_hook(fused)])
    return _with_patch(a, [a.q.register_forward_hook(make(heads)), a.v.register_forward_hook(make(kv_heads))])


def _with_patch(a: AttentionSite, handles: list) -> HandleGroup:
    """The hooks of a site's mask, with the site's forward patch while they are attached when its own forward calls
    no hookable Linear (`vltrim.arch.patches.hookable`)."""
    undo = hookable(a.module)
    return HandleGroup(handles + ([undo] if undo is not None else []))


def mask_neurons(b: BlockSpec, values: MaskValues) -> HandleGroup:
    """Scale FFN neurons at the input of fc2."""
    p = as_param(values)

    def pre(_mod, args):
        return (_scale(args[0], p.values()), *args[1:])

    return HandleGroup([b.fc2.register_forward_pre_hook(pre)])


@torch.no_grad()
def fold_heads(a: AttentionSite, values: torch.Tensor) -> None:
    """Multiply each head unit's out-projection input columns by its value: the weights then compute what
    `mask_heads` with ``values`` computes (a gate's kept value made part of the model)."""
    w = a.o.weight
    w.copy_((w.unflatten(1, (a.units, a.q_per_kv * a.head_dim)) * values.to(w)[None, :, None]).flatten(1))


@torch.no_grad()
def fold_neurons(b: BlockSpec, values: torch.Tensor) -> None:
    """Multiply fc2's input columns by the neurons' values (what `mask_neurons` computes)."""
    b.fc2.weight.mul_(values.to(b.fc2.weight)[None, :])


def mask_layers(t: Tower, values: MaskValues) -> HandleGroup:
    """Blend each block with the identity: m*block(x) + (1-m)*x; 0 is the block removed."""
    p = as_param(values)

    def make(i: int):
        def post(_mod, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            mi = p.values()[..., i]
            blended = _scale(y, mi, unit_dims=0) + _scale(x, 1 - mi, unit_dims=0)
            return (blended, *out[1:]) if isinstance(out, tuple) else blended

        return post

    return HandleGroup([layer.register_forward_hook(make(i), with_kwargs=True) for i, layer in enumerate(t.layers)])


def attach(adapter, model: nn.Module, values: dict[str, MaskValues]) -> HandleGroup:
    """Register masks for several groups at once (``values``: group name -> tensor of its size or `MaskParam`); the
    parametrisations resample once per forward of their tower (before its first block, in its train / eval mode),
    so a task that calls the towers itself (BLIP's ITM, VQA) draws fresh gates as the model's own forward does."""
    groups = {g.name: g for g in adapter.groups(model)}
    params = {name: as_param(v) for name, v in values.items()}
    for name, p in params.items():  # every group checked before any hook (a bad one leaves the model as it was)
        if name not in groups:
            raise KeyError(f"no group {name!r} in this {type(model).__name__}")
        n = p.values().shape[-1]
        if n != groups[name].size:
            raise ValueError(f"mask for {name} has {n} values, the group has {groups[name].size} units")
    handles, drawn = [], {}
    for name, p in params.items():
        handles.append(adapter.mask(model, groups[name], p))
        if type(p).resample is not MaskParam.resample:
            drawn.setdefault(adapter.locate(model, name)[0].layers[0], []).append(p)
    for first, ps in drawn.items():

        def resample(mod, _args, ps=ps):
            for p in ps:
                p.resample(mod.training)

        handles.append(first.register_forward_pre_hook(resample))
    return HandleGroup(handles)


def plan_masks(plan, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Binary mask values that make a model compute what ``apply_plan(model, plan)`` computes."""
    out = {}
    for name, keep in plan.keep.items():
        m = torch.zeros(plan.sizes[name], dtype=dtype)
        m[keep] = 1
        out[name] = m
    return out


__all__ = [
    "HandleGroup",
    "MaskParam",
    "ScalarMask",
    "BatchedMask",
    "HardConcreteGate",
    "as_param",
    "attach",
    "plan_masks",
    "mask_heads",
    "mask_head_dims",
    "mask_neurons",
    "mask_layers",
]
