"""Soft masks as forward hooks: scale units in the forward pass without copying the model.

A mask value of 0 for a unit gives exactly the function of the model with that unit sliced away; 1 is
the identity. Values are read at every forward, so a method can update them in place (or train them:
gradients flow to a mask tensor with ``requires_grad``)."""

from __future__ import annotations

import torch
from torch import nn

from vltrim.structure.slicing import AttentionSpec, BlockSpec, Tower


class HandleGroup:
    """Several hook handles removed together."""

    def __init__(self, handles: list) -> None:
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _scale(x: torch.Tensor, m: torch.Tensor, unit_dims: int = 1) -> torch.Tensor:
    """``x`` times unit values ``m`` over its last ``unit_dims`` dims. With one more leading dim, ``m`` holds
    k ablations (batched masks): the batch is k blocks of items, and block j is scaled by ``m[j]``."""
    m = m.to(dtype=x.dtype, device=x.device)
    if m.dim() == unit_dims:
        return x * m
    k = m.shape[0]
    xs = x.unflatten(0, (k, -1))
    return (xs * m.view(k, *[1] * (xs.dim() - 1 - unit_dims), *m.shape[1:])).flatten(0, 1)


def mask_heads(a: AttentionSpec, m: torch.Tensor) -> HandleGroup:
    """Scale each head's slice of the out-projection input (its only way into the residual stream)."""
    heads, hd = a.num_heads, a.head_dim

    def pre(_mod, args):
        x = args[0]
        y = _scale(x.unflatten(-1, (heads, hd)), m.unsqueeze(-1), unit_dims=2).flatten(-2)
        return (y, *args[1:])

    return HandleGroup([a.o.register_forward_pre_hook(pre)])


def mask_head_dims(a: AttentionSpec, m: torch.Tensor) -> HandleGroup:
    """Scale channel c of every head in q and v: q.k loses the channel's term, v its output column."""
    heads = a.num_heads

    def post(_mod, _args, out):
        return _scale(out, m.repeat(*[1] * (m.dim() - 1), heads))

    return HandleGroup([a.q.register_forward_hook(post), a.v.register_forward_hook(post)])


def mask_neurons(b: BlockSpec, m: torch.Tensor) -> HandleGroup:
    """Scale FFN neurons at the input of fc2."""

    def pre(_mod, args):
        return (_scale(args[0], m), *args[1:])

    return HandleGroup([b.fc2.register_forward_pre_hook(pre)])


def mask_layers(t: Tower, m: torch.Tensor) -> HandleGroup:
    """Blend each block with the identity: m*block(x) + (1-m)*x; 0 is the block removed."""

    def make(i: int):
        def post(_mod, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            mi = m[..., i]
            blended = _scale(y, mi, unit_dims=0) + _scale(x, 1 - mi, unit_dims=0)
            return (blended, *out[1:]) if isinstance(out, tuple) else blended

        return post

    return HandleGroup([layer.register_forward_hook(make(i), with_kwargs=True) for i, layer in enumerate(t.layers)])


def attach(adapter, model: nn.Module, values: dict[str, torch.Tensor]) -> HandleGroup:
    """Register masks for several groups at once (``values``: group name -> tensor of its size)."""
    groups = {g.name: g for g in adapter.groups(model)}
    handles = []
    for name, v in values.items():
        if name not in groups:
            raise KeyError(f"no group {name!r} in this {type(model).__name__}")
        if v.shape[-1] != groups[name].size:
            raise ValueError(f"mask for {name} has {v.numel()} values, the group has {groups[name].size} units")
        handles.append(adapter.mask(model, groups[name], v))
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
    "attach",
    "plan_masks",
    "mask_heads",
    "mask_head_dims",
    "mask_neurons",
    "mask_layers",
]
