"""Physical slicing of Linear layers and attention blocks, in place (method-independent)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class AttentionSpec:
    """Where one attention layer keeps its projections and its shape attributes.

    The attention forward must reshape with -1 heads and pass its own scale attribute, which is left
    untouched when head_dims shrink (the original 1/sqrt(head_dim) keeps outputs identical)."""

    module: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    heads_attr: str
    head_dim_attr: str
    all_head_size_attr: str | None = None

    @property
    def num_heads(self) -> int:
        return self.q.out_features // self.head_dim

    @property
    def head_dim(self) -> int:
        return int(getattr(self.module, self.head_dim_attr))


@dataclass
class BlockSpec:
    """One transformer block as the generic code sees it: an attention and an FFN (fc1 -> act -> fc2)."""

    attn: AttentionSpec
    fc1: nn.Linear
    fc2: nn.Linear


@dataclass
class Tower:
    """One encoder stack (vision, text or fusion): its layer list and how to read a block."""

    name: str
    modality: str
    layers: nn.ModuleList
    block: Callable[[nn.Module], BlockSpec]
    tokens: int  # tokens of the reference input, for MAC costs
    configs: list[Any] = field(default_factory=list)  # config objects whose num_hidden_layers follows the tower


def slice_linear_(lin: nn.Linear, out_idx: Sequence[int] | None = None, in_idx: Sequence[int] | None = None) -> None:
    """Keep only rows ``out_idx`` and columns ``in_idx`` of a Linear, in place."""
    w = lin.weight.data
    b = lin.bias.data if lin.bias is not None else None
    if out_idx is not None:
        idx = torch.as_tensor(list(out_idx), dtype=torch.long, device=w.device)
        w = w.index_select(0, idx)
        b = b.index_select(0, idx) if b is not None else None
    if in_idx is not None:
        w = w.index_select(1, torch.as_tensor(list(in_idx), dtype=torch.long, device=w.device))
    lin.weight = nn.Parameter(w.contiguous(), requires_grad=lin.weight.requires_grad)
    if b is not None:
        lin.bias = nn.Parameter(b.contiguous(), requires_grad=lin.bias.requires_grad)
    lin.out_features, lin.in_features = w.shape


def head_channels(heads: Sequence[int], head_dim: int) -> list[int]:
    """q/k/v row indices of whole heads."""
    return [h * head_dim + c for h in heads for c in range(head_dim)]


def head_dim_channels(num_heads: int, head_dim: int, dims: Sequence[int]) -> list[int]:
    """q/k/v row indices of the given head_dim channels, in every head."""
    return [h * head_dim + c for h in range(num_heads) for c in dims]


def _slice_attention_rows(a: AttentionSpec, rows: list[int]) -> None:
    for lin in (a.q, a.k, a.v):
        slice_linear_(lin, out_idx=rows)
    slice_linear_(a.o, in_idx=rows)


def _sync_attrs(a: AttentionSpec, heads: int, head_dim: int) -> None:
    setattr(a.module, a.heads_attr, heads)
    setattr(a.module, a.head_dim_attr, head_dim)
    if a.all_head_size_attr:
        setattr(a.module, a.all_head_size_attr, heads * head_dim)


def keep_heads_(a: AttentionSpec, keep: Sequence[int]) -> None:
    hd = a.head_dim
    _slice_attention_rows(a, head_channels(keep, hd))
    _sync_attrs(a, len(keep), hd)


def keep_head_dims_(a: AttentionSpec, keep: Sequence[int]) -> None:
    heads, hd = a.num_heads, a.head_dim
    _slice_attention_rows(a, head_dim_channels(heads, hd, keep))
    _sync_attrs(a, heads, len(keep))


def keep_neurons_(b: BlockSpec, keep: Sequence[int]) -> None:
    slice_linear_(b.fc1, out_idx=keep)
    slice_linear_(b.fc2, in_idx=keep)


def keep_layers_(t: Tower, keep: Sequence[int]) -> None:
    kept = [t.layers[i] for i in sorted(keep)]
    while len(t.layers):
        del t.layers[len(t.layers) - 1]
    for layer in kept:
        t.layers.append(layer)
    for cfg in t.configs:
        cfg.num_hidden_layers = len(kept)
