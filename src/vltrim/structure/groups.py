"""Prunable groups: the units a method may remove, their modality and their exact cost; and the singular
directions of a Linear that a factorisation may remove (what `structure.costs` prices and `select.cut` ranks)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum


class UnitKind(str, Enum):
    """Granularity of a prunable unit."""

    HEADS = "heads"  # whole attention heads (q,k,v rows + out-proj columns)
    HEAD_DIMS = "head_dims"  # head_dim channels shared by all heads of a layer and by q,k,v
    NEURONS = "neurons"  # FFN intermediate neurons (fc1 rows + fc2 columns)
    LAYERS = "layers"  # whole transformer blocks of one tower

    def __str__(self) -> str:  # so f-strings and tables print "heads", not "UnitKind.HEADS"
        return self.value


WIDTH_KINDS = (UnitKind.HEADS, UnitKind.HEAD_DIMS, UnitKind.NEURONS)


@dataclass(frozen=True)
class Group:
    """One set of prunable units at one place in the model.

    ``params_per_unit`` and ``macs_per_unit`` are exact, computed from tensor shapes for the adapter's
    reference input (batch 1). ``unit_width`` is how many channels one unit spans (head_dim for a
    head, 1 for a head_dim channel or a neuron), used to align kept widths.
    """

    name: str
    kind: UnitKind
    modality: str
    size: int
    params_per_unit: int
    macs_per_unit: int
    unit_width: int = 1

    def cost_per_unit(self, metric: str) -> int:
        if metric == "params":
            return self.params_per_unit
        if metric == "macs":
            return self.macs_per_unit
        raise ValueError(f"unknown cost metric {metric!r}; use 'params' or 'macs'")

    def align_step(self, align: int) -> int:
        """Number of units that make one alignment step (kept width stays a multiple of ``align``)."""
        if self.kind == UnitKind.LAYERS or align <= 1:
            return 1
        return align // math.gcd(align, self.unit_width)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d


@dataclass
class Directions:
    """The singular directions of one Linear of shape (``out``, ``inp``) that a factorisation may remove.

    Its ``size`` is min(out, inp); removing ``n`` leaves rank size - n. ``tokens`` is its tower's reference token
    count (the MACs of one direction are (in+out) * tokens). What removing them saves is not additive: a layer
    saves only once r*(in+out) < in*out (see `structure.costs`)."""

    name: str
    out: int
    inp: int
    tokens: int

    @property
    def size(self) -> int:
        return min(self.out, self.inp)


def attention_costs(
    hidden: int,
    heads: int,
    head_dim: int,
    q_tokens: int,
    kv_tokens: int,
    bias: bool,
    kv_hidden: int | None = None,
    q_per_kv: int = 1,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Exact (params, MACs) of one head unit and of one head_dim channel (all heads) of an attention site.

    Per channel, a query head owns a q row and an out-projection column and runs the two attention matmuls (QK^T
    and AV: q_tokens*kv_tokens MACs each); a key/value head owns a k row and a v row, which read ``kv_hidden``
    inputs (another tower's width in cross-attention) over ``kv_tokens``. A head unit is one key/value head with
    its ``q_per_kv`` query heads (GQA; 1 without), and ``heads`` counts query heads.
    """
    kv_hidden = hidden if kv_hidden is None else kv_hidden
    b = 1 if bias else 0
    kv_heads = heads // q_per_kv
    pq, pkv = (hidden + b) + hidden, 2 * (kv_hidden + b)
    mq, mkv = 2 * q_tokens * hidden + 2 * q_tokens * kv_tokens, 2 * kv_tokens * kv_hidden
    unit = ((q_per_kv * pq + pkv) * head_dim, (q_per_kv * mq + mkv) * head_dim)
    return unit, (heads * pq + kv_heads * pkv, heads * mq + kv_heads * mkv)


def ffn_costs(hidden: int, tokens: int, bias: bool = True, rows: int = 1) -> tuple[int, int]:
    """Exact (params, MACs) of one FFN neuron: ``rows`` input rows (+bias; 2 in a gated FFN) and one fc2 column."""
    return (rows + 1) * hidden + (rows if bias else 0), (rows + 1) * tokens * hidden
