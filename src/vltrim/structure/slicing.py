"""Physical slicing of Linear layers and attention sites, in place (method-independent)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class AttentionSite:
    """One attention of a block: self or cross, q/k/v as three Linears or one fused ``qkv`` (rows q | k | v), its
    out-projection ``o``, and the module attributes that cache its shape.

    A head unit is one key/value head with the ``heads // kv_heads`` query heads that read it (GQA; 1 without). The
    attention forward must reshape with -1 heads (or be given a forward patch, see `vltrim.arch.patches`) and keep
    its own scale: the original 1/sqrt(head_dim) keeps outputs identical when head_dims shrink. ``name`` is the
    site's place in group names ('attn' -> '...layers.3.attn.heads'); ``kv_tokens`` the key/value token count when it
    is not the queries' (cross-attention reads another tower); ``modality`` the modality its groups join (a cross
    site is 'fusion'), None for its tower's. ``head_params`` names parameters with one entry per query head along a
    dim, (module, attribute, dim), sliced with the heads (WavLM's gate constant); ``head_extra`` the (params, MACs
    per token) each query head costs beyond its projections and attention matmuls (WavLM's position-bias gate).
    ``rotary``: rotary position embeddings rotate channel c of q and k with channel c + head_dim/2, so a head_dims unit
    is that pair of channels (masking or keeping both keeps each rotation whole; the forward must select the kept
    channels' cos / sin, `kept_dims`)."""

    module: nn.Module
    q: nn.Linear | None
    k: nn.Linear | None
    v: nn.Linear | None
    o: nn.Linear
    heads_attr: str
    head_dim_attr: str
    all_head_size_attr: str | None = None
    qkv: nn.Linear | None = None
    name: str = "attn"
    kv_tokens: int | None = None
    modality: str | None = None
    kv_heads_attr: str | None = None
    head_params: tuple[tuple[nn.Module, str, int], ...] = ()
    head_extra: tuple[int, int] = (0, 0)
    rotary: bool = False

    @classmethod
    def fused(cls, module: nn.Module, qkv: nn.Linear, o: nn.Linear, heads_attr: str, head_dim_attr: str,
              **kw: Any) -> AttentionSite:  # fmt: skip
        """A site whose q, k and v are one Linear (rows q | k | v)."""
        return cls(module, None, None, None, o, heads_attr, head_dim_attr, qkv=qkv, **kw)

    @property
    def head_dim(self) -> int:
        return int(getattr(self.module, self.head_dim_attr))

    @property
    def dim_units(self) -> int:
        """head_dims units: channels, or channel pairs of a rotary site."""
        return self.head_dim // 2 if self.rotary else self.head_dim

    def dim_channels(self, units: Sequence[int]) -> list[int]:
        """The head-dim channels (ascending) that head_dims units ``units`` own."""
        half = self.head_dim // 2
        return sorted(c for u in units for c in ((u, u + half) if self.rotary else (u,)))

    @property
    def q_per_kv(self) -> int:
        """Query heads per key/value head (1 without GQA); slicing whole units keeps it."""
        if self.kv_heads_attr is None:
            return 1
        return int(getattr(self.module, self.heads_attr)) // int(getattr(self.module, self.kv_heads_attr))

    @property
    def num_kv_heads(self) -> int:
        if self.k is not None:
            return self.k.out_features // self.head_dim
        return self.qkv.out_features // (self.head_dim * (self.q_per_kv + 2))

    @property
    def num_heads(self) -> int:
        """Query heads."""
        if self.q is not None:
            return self.q.out_features // self.head_dim
        return self.num_kv_heads * self.q_per_kv

    @property
    def units(self) -> int:
        """Head units (key/value heads; the query heads when there is no GQA)."""
        return self.num_kv_heads

    @property
    def hidden(self) -> int:
        """Input width of the queries."""
        return (self.q if self.q is not None else self.qkv).in_features

    @property
    def kv_hidden(self) -> int:
        """Input width of keys and values (another tower's width in cross-attention)."""
        return (self.k if self.k is not None else self.qkv).in_features

    @property
    def bias(self) -> bool:
        return (self.q if self.q is not None else self.qkv).bias is not None

    def projections(self) -> dict[str, nn.Module]:
        """Its Linears by short name: q, k, v, o, or qkv, o (the names `linears` and low-rank use)."""
        if self.qkv is not None:
            return {"qkv": self.qkv, "o": self.o}
        return {"q": self.q, "k": self.k, "v": self.v, "o": self.o}

    def inputs(self) -> list[nn.Module]:
        """The Linears that read the block's hidden states before the heads (q, k, v or qkv)."""
        return [m for n, m in self.projections().items() if n != "o"]


AttentionSpec = AttentionSite  # the name before attention sites


@dataclass
class BlockSpec:
    """One transformer block as the generic code sees it: its attention sites (self, then cross if any) and an FFN
    (fc1 -> act -> fc2). ``tower_modules`` are modules held by this block but read by the whole tower, by their path
    in the block (WavLM's relative position table in its first layer): they survive the block's removal (moved to the
    first kept block, same path) and are not part of its cost.

    A gated (GLU) FFN computes fc2(act(a) * b): a neuron is one column of fc2 and one row of each input half. Its halves
    are either one fused fc1 holding ``fc1_parts`` blocks of rows (ModernBERT's Wi: rows a | b, ``fc1_parts=2``) or fc1
    and a separate ``gate`` Linear (DINOv2's SwiGLU up_proj and gate_proj). Neurons stay one unit kind for methods."""

    sites: list[AttentionSite]
    fc1: nn.Linear
    fc2: nn.Linear
    tower_modules: dict[str, nn.Module] = field(default_factory=dict)
    gate: nn.Linear | None = None
    fc1_parts: int = 1

    @property
    def neurons(self) -> int:
        """FFN neurons (fc2's input width)."""
        return self.fc2.in_features

    def ffn_inputs(self) -> dict[str, tuple[nn.Module, int]]:
        """The FFN's input Linears by short name ('fc1', 'gate'), each with its blocks of ``neurons`` rows."""
        return {"fc1": (self.fc1, self.fc1_parts), **({"gate": (self.gate, 1)} if self.gate is not None else {})}

    def ffn_linears(self) -> dict[str, nn.Module]:
        """Every FFN Linear by short name: fc1, gate (when separate), fc2."""
        return {**{n: lin for n, (lin, _) in self.ffn_inputs().items()}, "fc2": self.fc2}

    @property
    def rows_per_neuron(self) -> int:
        """Input rows one neuron owns (1 for fc1 -> act -> fc2, 2 for a GLU)."""
        return sum(parts for _, parts in self.ffn_inputs().values())

    def __post_init__(self) -> None:
        if isinstance(self.sites, AttentionSite):
            self.sites = [self.sites]
        names = [s.name for s in self.sites]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a block needs attention sites with distinct names, got {names}")

    @property
    def attn(self) -> AttentionSite:
        """The first site (the block's self-attention)."""
        return self.sites[0]

    def site(self, name: str) -> AttentionSite:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no attention site {name!r} in this block (sites: {[s.name for s in self.sites]})")


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


def site_rows(a: AttentionSite, kind: str, keep: Sequence[int]) -> dict[str, list[int]]:
    """Per projection of ``a`` (`AttentionSite.projections`), the rows (for o: the columns) that units ``keep`` of
    ``kind`` ('heads': head units, 'head_dims': channels of every head) own."""
    hd, r, heads, kv_heads = a.head_dim, a.q_per_kv, a.num_heads, a.num_kv_heads
    if kind == "heads":
        q = head_channels([u * r + j for u in keep for j in range(r)], hd)
        kv = head_channels(keep, hd)
    elif kind == "head_dims":
        dims = a.dim_channels(keep)
        q, kv = head_dim_channels(heads, hd, dims), head_dim_channels(kv_heads, hd, dims)
    else:
        raise ValueError(f"an attention site has heads and head_dims, not {kind!r}")
    if a.qkv is not None:
        k0, v0 = heads * hd, (heads + kv_heads) * hd
        return {"qkv": q + [k0 + i for i in kv] + [v0 + i for i in kv], "o": q}
    return {"q": q, "k": kv, "v": kv, "o": q}


KEPT_HEADS_ATTR = "vltrim_kept_heads"  # a sliced attention module's query heads, as indices of the unpruned ones


def kept_heads(module: nn.Module, heads: int) -> list[int]:
    """The original indices of the query heads ``module`` (now of ``heads`` heads) kept: what a forward that reads a
    per-head tensor computed outside the site with every original head (a shared position bias) selects."""
    return list(getattr(module, KEPT_HEADS_ATTR, range(heads)))


KEPT_DIMS_ATTR = "vltrim_kept_dims"  # a sliced attention module's head-dim channels, as indices of the unpruned ones
HEAD_DIM_ATTR = "vltrim_head_dim"  # its head_dim before any slicing


def kept_dims(module: nn.Module, head_dim: int) -> list[int]:
    """The original indices of the head-dim channels ``module`` (now of ``head_dim`` channels) kept: what a forward
    that reads a per-channel tensor made for the full width (rotary cos / sin) selects."""
    return list(getattr(module, KEPT_DIMS_ATTR, range(head_dim)))


def original_head_dim(module: nn.Module, head_dim: int) -> int:
    """``module``'s head_dim before slicing (``head_dim`` when unsliced): the softmax scale a forward that computes it
    from the current width must keep."""
    return int(getattr(module, HEAD_DIM_ATTR, head_dim))


def _keep_site_units_(a: AttentionSite, kind: str, keep: Sequence[int]) -> None:
    heads, kv_heads, hd = a.num_heads, a.num_kv_heads, a.head_dim
    lins = a.projections()
    for name, rows in site_rows(a, kind, keep).items():
        slice_linear_(lins[name], **({"in_idx": rows} if name == "o" else {"out_idx": rows}))
    if kind == "heads":
        q_heads = [u * a.q_per_kv + j for u in keep for j in range(a.q_per_kv)]
        _slice_head_params_(a, q_heads)
        before = kept_heads(a.module, heads)
        setattr(a.module, KEPT_HEADS_ATTR, [before[h] for h in q_heads])
        heads, kv_heads = len(keep) * a.q_per_kv, len(keep)
    else:
        setattr(a.module, HEAD_DIM_ATTR, original_head_dim(a.module, hd))
        before, channels = kept_dims(a.module, hd), a.dim_channels(keep)
        setattr(a.module, KEPT_DIMS_ATTR, [before[c] for c in channels])
        hd = len(channels)
    setattr(a.module, a.heads_attr, heads)
    if a.kv_heads_attr:
        setattr(a.module, a.kv_heads_attr, kv_heads)
    setattr(a.module, a.head_dim_attr, hd)
    if a.all_head_size_attr:
        setattr(a.module, a.all_head_size_attr, heads * hd)


def _slice_head_params_(a: AttentionSite, q_heads: Sequence[int]) -> None:
    """Keep the entries of query heads ``q_heads`` in every per-head parameter of the site."""
    for module, attr, dim in a.head_params:
        p = getattr(module, attr)
        idx = torch.as_tensor(list(q_heads), dtype=torch.long, device=p.device)
        setattr(module, attr, nn.Parameter(p.data.index_select(dim, idx).contiguous(), requires_grad=p.requires_grad))


def keep_heads_(a: AttentionSite, keep: Sequence[int]) -> None:
    """Keep head units ``keep`` of a site (with GQA, each a key/value head and its query heads)."""
    _keep_site_units_(a, "heads", keep)


def keep_head_dims_(a: AttentionSite, keep: Sequence[int]) -> None:
    """Keep head_dims units ``keep`` (channels; pairs of a rotary site) of every head of a site (queries, keys and
    values alike)."""
    _keep_site_units_(a, "head_dims", keep)


def neuron_rows(b: BlockSpec, keep: Sequence[int]) -> dict[str, list[int]]:
    """Per FFN input Linear (`BlockSpec.ffn_inputs`), the rows that neurons ``keep`` own (each block of rows alike)."""
    n = b.neurons
    return {name: [p * n + k for p in range(parts) for k in keep] for name, (_, parts) in b.ffn_inputs().items()}


def keep_neurons_(b: BlockSpec, keep: Sequence[int]) -> None:
    ins = b.ffn_inputs()
    for name, rows in neuron_rows(b, keep).items():
        slice_linear_(ins[name][0], out_idx=rows)
    slice_linear_(b.fc2, in_idx=keep)


def keep_layers_(t: Tower, keep: Sequence[int]) -> None:
    """Keep blocks ``keep`` of a tower, renumbered: a module's ``layer_idx`` (the slot of its layer in a generation
    cache) becomes its new position, the tower's configs count the kept layers (and list the kept layers' types),
    and the tower modules of removed blocks move to the first kept block (`BlockSpec.tower_modules`)."""
    kept = [t.layers[i] for i in sorted(keep)]
    if kept:
        _move_tower_modules_(t, [layer for i, layer in enumerate(t.layers) if i not in set(keep)], kept[0])
    while len(t.layers):
        del t.layers[len(t.layers) - 1]
    for j, layer in enumerate(kept):
        t.layers.append(layer)
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = j
    for cfg in t.configs:
        types = getattr(cfg, "layer_types", None)  # one entry per layer (ModernBERT's local / global attention)
        if isinstance(types, list) and len(types) == cfg.num_hidden_layers:
            cfg.layer_types = [types[i] for i in sorted(keep)]
        cfg.num_hidden_layers = len(kept)


def _move_tower_modules_(t: Tower, removed: Sequence[nn.Module], first: nn.Module) -> None:
    """Give ``first`` the tower modules of the ``removed`` blocks that it lacks, at the same path."""
    for layer in removed:
        for path, module in t.block(layer).tower_modules.items():
            parent, _, attr = path.rpartition(".")
            holder = first.get_submodule(parent) if parent else first
            if getattr(holder, attr, None) is None:
                setattr(holder, attr, module)
