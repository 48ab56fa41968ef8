"""Adapter base: a model family describes its towers; groups, costs, masks and slicing are generic."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vltrim.arch import masks
from vltrim.structure.factorize import FactorizedLinear, factorize_linear, replace_module_
from vltrim.structure.groups import Group, UnitKind, attention_costs, ffn_costs
from vltrim.structure.slicing import BlockSpec, Tower, keep_head_dims_, keep_heads_, keep_layers_, keep_neurons_


class TransformerAdapter:
    """Base for adapters of encoder-style Transformers.

    Subclasses implement ``towers`` (where the layer stacks are and how to read one block) and
    ``reference_inputs``; everything else is shared so every method works on every family."""

    #: model classes this adapter handles (set by the registry decorator)
    model_classes: tuple[type, ...] = ()

    # ---- what a family must describe ----------------------------------------------------------
    def towers(self, model: nn.Module) -> list[Tower]:
        raise NotImplementedError

    def reference_inputs(self, model: nn.Module, batch_size: int = 1) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, model: nn.Module, inputs: dict[str, Any]) -> Any:
        """Run the model on inputs (overridable when a family needs a particular call)."""
        return model(**inputs)

    # ---- groups -------------------------------------------------------------------------------
    def groups(self, model: nn.Module) -> list[Group]:
        """Every prunable group of the model as it is now, with exact per-unit costs."""
        out: list[Group] = []
        for t in self.towers(model):
            layer_params, layer_macs = [], []
            for i, layer in enumerate(t.layers):
                b = t.block(layer)
                out.extend(self._block_groups(t, i, b))
                layer_params.append(sum(p.numel() for p in layer.parameters()))
                layer_macs.append(self._block_macs(t, b))
            if len(t.layers):
                out.append(
                    Group(
                        name=f"{t.name}.layers",
                        kind=UnitKind.LAYERS,
                        modality=t.modality,
                        size=len(t.layers),
                        params_per_unit=round(sum(layer_params) / len(layer_params)),
                        macs_per_unit=round(sum(layer_macs) / len(layer_macs)),
                    )
                )
        return out

    def _block_groups(self, t: Tower, i: int, b: BlockSpec) -> list[Group]:
        """Width groups of one block; a group with a factorised Linear is left out (it cannot be sliced)."""
        a = b.attn
        bias = a.q.bias is not None
        (hp, hm), (dp, dm) = attention_costs(a.q.in_features, a.num_heads, a.head_dim, t.tokens, t.tokens, bias)
        np_, nm = ffn_costs(b.fc1.in_features, t.tokens, b.fc1.bias is not None)
        pre = f"{t.name}.layers.{i}"
        out = []
        if not _factorised(a.q, a.k, a.v, a.o):
            out += [
                Group(f"{pre}.attn.heads", UnitKind.HEADS, t.modality, a.num_heads, hp, hm, a.head_dim),
                Group(f"{pre}.attn.head_dims", UnitKind.HEAD_DIMS, t.modality, a.head_dim, dp, dm, 1),
            ]
        if not _factorised(b.fc1, b.fc2):
            out.append(Group(f"{pre}.mlp.neurons", UnitKind.NEURONS, t.modality, b.fc1.out_features, np_, nm, 1))
        return out

    def _block_macs(self, t: Tower, b: BlockSpec) -> int:
        a = b.attn
        (_, hm), _ = attention_costs(a.q.in_features, a.num_heads, a.head_dim, t.tokens, t.tokens, a.q.bias is not None)
        dense = hm * a.num_heads + ffn_costs(b.fc1.in_features, t.tokens)[1] * b.fc1.out_features
        saved = sum(
            f.in_features * f.out_features - f.rank * (f.in_features + f.out_features)
            for f in (a.q, a.k, a.v, a.o, b.fc1, b.fc2)
            if isinstance(f, FactorizedLinear)
        )
        return dense - t.tokens * saved

    # ---- Linear layers (the factorize step) ---------------------------------------------------
    def linears(self, model: nn.Module) -> dict[str, nn.Module]:
        """Every block Linear by stable name ('vision.layers.3.attn.q' ... '.attn.o', '.mlp.fc1', '.mlp.fc2'),
        dense (nn.Linear) or already factorised (FactorizedLinear)."""
        out: dict[str, nn.Module] = {}
        for t in self.towers(model):
            for i, layer in enumerate(t.layers):
                b, pre = t.block(layer), f"{t.name}.layers.{i}"
                a = b.attn
                out.update(
                    {
                        f"{pre}.attn.q": a.q,
                        f"{pre}.attn.k": a.k,
                        f"{pre}.attn.v": a.v,
                        f"{pre}.attn.o": a.o,
                        f"{pre}.mlp.fc1": b.fc1,
                        f"{pre}.mlp.fc2": b.fc2,
                    }
                )
        return out

    def factorize(
        self, model: nn.Module, name: str, rank: int, scales: list[float] | None = None, compute: bool = True
    ) -> None:
        """Replace the dense Linear ``name`` by its rank-``rank`` FactorizedLinear (in place)."""
        lin = self.linears(model)[name]
        replace_module_(model, lin, factorize_linear(lin, rank, scales, compute))

    @staticmethod
    def group_linears(group_name: str) -> list[str]:
        """Names of the Linears a width group slices ('...attn.heads' -> its q, k, v, o; '...mlp.neurons' -> fc1, fc2)."""
        pre, kind = group_name.rsplit(".", 1)
        if kind in (UnitKind.HEADS.value, UnitKind.HEAD_DIMS.value):
            return [f"{pre}.{x}" for x in ("q", "k", "v", "o")]
        return [f"{pre}.{x}" for x in ("fc1", "fc2")] if kind == UnitKind.NEURONS.value else []

    def locate(self, model: nn.Module, name: str) -> tuple[Tower, int | None, BlockSpec | None]:
        """Tower, layer index and block of a group name like 'vision.layers.3.mlp.neurons'."""
        for t in self.towers(model):
            if name == f"{t.name}.layers":
                return t, None, None
            if name.startswith(f"{t.name}.layers."):
                i = int(name[len(t.name) + len(".layers.") :].split(".")[0])
                return t, i, t.block(t.layers[i])
        raise KeyError(f"no group {name!r} in {type(model).__name__}")

    # ---- masks and slicing --------------------------------------------------------------------
    def mask(self, model: nn.Module, group: Group, values: torch.Tensor) -> masks.HandleGroup:
        """Scale the units of ``group`` by ``values`` in every forward until the handle is removed."""
        t, _, b = self.locate(model, group.name)
        if group.kind == UnitKind.HEADS:
            return masks.mask_heads(b.attn, values)
        if group.kind == UnitKind.HEAD_DIMS:
            return masks.mask_head_dims(b.attn, values)
        if group.kind == UnitKind.NEURONS:
            return masks.mask_neurons(b, values)
        return masks.mask_layers(t, values)

    def slice(self, model: nn.Module, group: Group, keep: list[int]) -> None:
        """Physically keep only units ``keep`` of ``group`` (in place)."""
        t, _, b = self.locate(model, group.name)
        if group.kind == UnitKind.HEADS:
            keep_heads_(b.attn, keep)
        elif group.kind == UnitKind.HEAD_DIMS:
            keep_head_dims_(b.attn, keep)
        elif group.kind == UnitKind.NEURONS:
            keep_neurons_(b, keep)
        else:
            keep_layers_(t, keep)


def _factorised(*mods: nn.Module) -> bool:
    return any(isinstance(m, FactorizedLinear) for m in mods)
