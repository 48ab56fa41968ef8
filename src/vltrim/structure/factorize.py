"""Factorised Linear layers: W (out x in) replaced by in -> rank -> out from a truncated SVD (method-independent).

The split is balanced: with W diag(s) = U S V^T (s: optional positive per-input-feature scales, 1 for plain SVD),
``first.weight = sqrt(S_r) V_r^T diag(1/s)`` and ``second.weight = U_r sqrt(S_r)``, so second(first(x)) applies
the rank-r truncation of W and both factors have the same scale (better conditioned for fine-tuning)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FactorizedLinear(nn.Module):
    """y = second(first(x)): a rank-``rank`` Linear stored as in -> rank (no bias) -> out (the original bias).

    ``in_features``, ``out_features`` and ``bias`` read like an nn.Linear's, so code reading shapes still works."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @property
    def bias(self) -> nn.Parameter | None:
        return self.second.bias

    def dense_weight(self) -> torch.Tensor:
        """The (out x in) matrix this layer applies: second.weight @ first.weight."""
        return self.second.weight @ self.first.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, rank={self.rank}, out_features={self.out_features}, bias={self.bias is not None}"


def saves_params(out_features: int, in_features: int, rank: int) -> bool:
    """Whether rank ``rank`` stores fewer weights than the dense matrix: r*(in+out) < in*out (biases are equal)."""
    return rank * (in_features + out_features) < in_features * out_features


def truncated_factors(
    weight: torch.Tensor, rank: int, scales: Sequence[float] | torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, second) weights of the rank-``rank`` SVD of ``weight`` (of ``weight diag(scales)``, then unscaled),
    computed in float64 and returned in ``weight``'s dtype."""
    w = weight.detach().double()
    s = None if scales is None else torch.as_tensor(scales, dtype=torch.float64, device=w.device)
    u, sv, vh = torch.linalg.svd(w * s if s is not None else w, full_matrices=False)
    root = sv[:rank].sqrt()
    first = root[:, None] * vh[:rank]
    if s is not None:
        first = first / s
    second = u[:, :rank] * root
    return first.to(weight.dtype), second.to(weight.dtype)


def factorize_linear(
    lin: nn.Linear, rank: int, scales: Sequence[float] | None = None, compute: bool = True
) -> FactorizedLinear:
    """A FactorizedLinear holding the rank-``rank`` truncation of ``lin`` (same device, dtype and bias); with
    ``compute=False`` only the shapes are built (weights uninitialised: ``load`` fills them)."""
    w = lin.weight
    f = FactorizedLinear(lin.in_features, lin.out_features, rank, lin.bias is not None, device=w.device, dtype=w.dtype)
    if compute:
        first, second = truncated_factors(w, rank, scales)
        with torch.no_grad():
            f.first.weight.copy_(first)
            f.second.weight.copy_(second)
    if lin.bias is not None:
        with torch.no_grad():
            f.second.bias.copy_(lin.bias)
    for p in f.parameters():
        p.requires_grad_(w.requires_grad)
    return f


def replace_module_(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is a direct child of a module inside ``root`` (in place)."""
    found = False
    for parent in root.modules():
        for name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, name, new)
                found = True
    if not found:
        raise KeyError(f"{type(old).__name__} to replace is not inside {type(root).__name__}")
