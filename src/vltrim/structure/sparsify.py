"""Sparse Linear weights (method-independent): which weights a pattern zeroes, checking a pattern holds, keeping
zeros at zero while retraining, and the 2:4 GPU kernels.

Weights stay dense tensors holding their zeros (the plan stores no masks). The pruned positions are a pure
function of the weights and the plan entry, so ``apply_plan`` is reproducible: ``unstructured`` zeroes the
``round(sparsity * numel)`` smallest |w| of the Linear (ties broken by position); ``2:4`` zeroes the 2 smallest
|w| of every 4 consecutive weights along the input dimension. Weights already zero are the smallest, so they
stay pruned (a chain of sparsify plans only adds zeros)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

PATTERNS = ("unstructured", "2:4")
SEMI = 4  # group length of the 2:4 pattern (along the input dimension)
TAG = "_vltrim_sparsity"  # on a sparsified nn.Linear: list of (pattern, sparsity) it must hold (kept when layers move)


def pruned_count(numel: int, sparsity: float) -> int:
    """Weights an unstructured entry zeroes: ``round(sparsity * numel)`` (exact for sparsity = k / numel)."""
    return int(round(sparsity * numel))


def check_semi_shape(weight: torch.Tensor, name: str = "this Linear") -> None:
    """ValueError naming ``name`` unless in_features is a multiple of 4 (2:4 groups run along the input dim)."""
    if weight.shape[-1] % SEMI:
        raise ValueError(
            f"2:4 sparsity needs in_features divisible by {SEMI}; {name} has in_features={weight.shape[-1]}"
        )


def prune_mask(weight: torch.Tensor, pattern: str, sparsity: float, name: str = "this Linear") -> torch.Tensor:
    """Boolean mask (True = zero it) of the weights ``pattern`` prunes, chosen by smallest |w| (stable on ties)."""
    mag = weight.detach().abs()
    if pattern == "2:4":
        check_semi_shape(weight, name)
        groups = mag.reshape(mag.shape[0], -1, SEMI)
        order = torch.sort(groups, dim=-1, stable=True).indices[..., : SEMI // 2]
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True).reshape(weight.shape)
    if pattern != "unstructured":
        raise ValueError(f"sparsity pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    k = pruned_count(weight.numel(), sparsity)
    order = torch.sort(mag.flatten(), stable=True).indices[:k]
    return (
        torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
        .scatter_(0, order, True)
        .reshape(weight.shape)
    )


def sparsify_linear_(
    lin: nn.Linear, pattern: str, sparsity: float, zero: bool = True, name: str = "this Linear"
) -> None:
    """Zero the weights ``pattern`` prunes in ``lin`` (in place) and tag ``lin`` with the pattern it must hold;
    ``zero=False`` only tags it (``load``: the zeros come from the file and are verified after loading)."""
    if zero:
        mask = prune_mask(lin.weight, pattern, sparsity, name)
        with torch.no_grad():
            lin.weight.masked_fill_(mask, 0)
    setattr(lin, TAG, [*getattr(lin, TAG, []), (pattern, float(sparsity))])


def pattern_problem(weight: torch.Tensor, pattern: str, sparsity: float) -> str | None:
    """Why ``weight`` does not hold ``pattern`` at ``sparsity`` (exact zeros counted), or None when it does."""
    zero = weight.detach() == 0
    if pattern == "2:4":
        if weight.shape[-1] % SEMI:
            return f"in_features={weight.shape[-1]} is not divisible by {SEMI}"
        per_group = zero.reshape(weight.shape[0], -1, SEMI).sum(-1)
        bad = int((per_group < SEMI // 2).sum())
        if bad:
            return f"{bad} of {per_group.numel()} groups of 4 weights along the input dimension have fewer than 2 zeros (2:4)"
        return None
    need, have = pruned_count(weight.numel(), sparsity), int(zero.sum())
    return (
        None
        if have >= need
        else f"{have} of {weight.numel()} weights are zero, the plan records {need} ({sparsity:.4g})"
    )


def sparsified(model: nn.Module) -> list[nn.Linear]:
    """Linears of ``model`` that a sparsify plan tagged, in module order."""
    return [m for m in model.modules() if isinstance(m, nn.Linear) and getattr(m, TAG, None)]


def check_sparsity(model: nn.Module, names: dict[int, str] | None = None) -> list[tuple[str, str]]:
    """(Linear name, problem) for every tagged Linear whose weights break a pattern it was given; [] when all hold."""
    names = names or {}
    out = []
    for i, lin in enumerate(sparsified(model)):
        for pattern, s in getattr(lin, TAG):
            why = pattern_problem(lin.weight, pattern, s)
            if why:
                out.append((names.get(id(lin), f"sparsified Linear #{i}"), why))
    return out


# ---- retraining ---------------------------------------------------------------------------------
class FrozenZeros:
    """Handle of ``freeze_zeros``: ``remove()`` drops the gradient hooks; ``rezero_()`` zeroes the frozen positions
    again (after an optimizer whose state predates the pruning moved them)."""

    def __init__(self, masks: list[tuple[nn.Parameter, torch.Tensor]], handles: list[Any]) -> None:
        self.masks, self.handles = masks, handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def rezero_(self) -> None:
        with torch.no_grad():
            for w, keep in self.masks:
                w.mul_(keep)

    def __enter__(self) -> FrozenZeros:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def freeze_zeros(model: nn.Module, linears: Iterable[nn.Linear] | None = None) -> FrozenZeros:
    """Keep the zero weights of sparsified Linears at zero while training: a gradient hook zeroes their gradient.

    ``linears`` defaults to the Linears sparsify plans tagged. With zero gradients, SGD (momentum included), Adam
    and AdamW (weight decay included: decay of w = 0 is 0) leave them exactly 0, provided the optimizer is created
    after pruning (old momentum would move them; ``rezero_()`` repairs that)."""
    lins = list(sparsified(model) if linears is None else linears)
    if not lins:
        raise ValueError(f"freeze_zeros: {type(model).__name__} has no sparsified Linear (apply a sparsify plan first)")
    masks, handles = [], []
    for lin in lins:
        keep = (lin.weight.detach() != 0).to(lin.weight.dtype)
        masks.append((lin.weight, keep))
        handles.append(lin.weight.register_hook(lambda g, keep=keep: g * keep))
    return FrozenZeros(masks, handles)


# ---- GPU kernels --------------------------------------------------------------------------------
def to_semi_structured(model: nn.Module) -> nn.Module:
    """Store every 2:4-tagged Linear's weight as ``torch.sparse.to_sparse_semi_structured`` (in place) so matmuls use
    the semi-structured sparse kernels; RuntimeError saying why when not possible (no CUDA, CPU weights, dtype)."""
    lins = [m for m in sparsified(model) if any(p == "2:4" for p, _ in getattr(m, TAG))]
    if not lins:
        raise ValueError(f"to_semi_structured: {type(model).__name__} has no Linear sparsified with the 2:4 pattern")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "to_semi_structured needs a CUDA GPU (semi-structured sparse kernels); this torch sees none, "
            "so 2:4 weights stay dense here (same results, no speedup)"
        )
    for lin in lins:
        w = lin.weight
        if w.device.type != "cuda":
            raise RuntimeError(f"to_semi_structured: weights are on {w.device}; move the model to CUDA first")
        if w.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(
                f"to_semi_structured: weights are {w.dtype}; the 2:4 kernels take float16 or bfloat16 "
                "(model.half() or model.to(torch.bfloat16) first)"
            )
    from torch.sparse import to_sparse_semi_structured

    for lin in lins:
        lin.weight = nn.Parameter(to_sparse_semi_structured(lin.weight.detach()), requires_grad=False)
    return model
