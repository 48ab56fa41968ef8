"""Adapter base: a model family describes its towers; groups, costs, masks and slicing are generic."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vltrim.arch import masks, patches
from vltrim.structure.factorize import FactorizedLinear, factorize_linear, replace_module_
from vltrim.structure.groups import Group, UnitKind, attention_costs, ffn_costs
from vltrim.structure.slicing import (
    AttentionSite,
    BlockSpec,
    Tower,
    keep_head_dims_,
    keep_heads_,
    keep_layers_,
    keep_neurons_,
)


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

    def input_names(self, model: nn.Module) -> tuple[str, ...]:
        """The model inputs this family feeds ``model`` (each declared by modality in `vltrim.arch.inputs`): the
        keys of its reference input unless a family says otherwise."""
        return tuple(self.reference_inputs(model, batch_size=1))

    def paired_inputs(self, model: nn.Module) -> bool:
        """True when the model reads image i with text i (a fusion encoder): one batch for all inputs. A dual encoder
        embeds its image and text batches apart (False)."""
        return False

    def front_end(self, model: nn.Module) -> list[nn.Module]:
        """Modules outside the Transformer blocks that run on every input and that no method prunes (a speech model's
        CNN feature encoder): reports give their share of params and MACs, the part pruning cannot reach."""
        return []

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
                layer_params.append(_block_params(layer, b))
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
        """Width groups of one block (heads and head_dims of each attention site, FFN neurons); a group with a
        factorised Linear is left out (it cannot be sliced)."""
        pre = f"{t.name}.layers.{i}"
        out = []
        for a in b.sites:
            (hp, hm), (dp, dm) = site_costs(t, a)
            w = a.head_dim // a.dim_units  # channels per head_dims unit
            if not _factorised(*a.projections().values()):
                modality, site = a.modality or t.modality, f"{pre}.{a.name}"
                out += [
                    Group(f"{site}.heads", UnitKind.HEADS, modality, a.units, hp, hm, a.head_dim * a.q_per_kv),
                    Group(f"{site}.head_dims", UnitKind.HEAD_DIMS, modality, a.dim_units, dp * w, dm * w, w),
                ]
        np_, nm = ffn_costs(b.fc1.in_features, t.tokens, b.fc1.bias is not None, b.rows_per_neuron)
        if not _factorised(*b.ffn_linears().values()):
            out.append(Group(f"{pre}.mlp.neurons", UnitKind.NEURONS, t.modality, b.neurons, np_, nm, 1))
        return out

    def _block_macs(self, t: Tower, b: BlockSpec) -> int:
        dense = sum(site_costs(t, a)[0][1] * a.units for a in b.sites)
        dense += ffn_costs(b.fc1.in_features, t.tokens, rows=b.rows_per_neuron)[1] * b.neurons
        tokens = block_linear_tokens(t, b)
        saved = sum(
            tokens[n] * (f.in_features * f.out_features - f.rank * (f.in_features + f.out_features))
            for n, f in block_linears(b).items()
            if isinstance(f, FactorizedLinear)
        )
        return dense - saved

    # ---- Linear layers (the factorize step) ---------------------------------------------------
    def linears(self, model: nn.Module) -> dict[str, nn.Module]:
        """Every block Linear by stable name ('vision.layers.3.attn.q' ... '.attn.o' or '.attn.qkv', '.mlp.fc1',
        '.mlp.gate' of a GLU with a separate gate, '.mlp.fc2'), dense (nn.Linear) or already factorised
        (FactorizedLinear)."""
        return {
            f"{t.name}.layers.{i}.{n}": lin
            for t in self.towers(model)
            for i, layer in enumerate(t.layers)
            for n, lin in block_linears(t.block(layer)).items()
        }

    def linear_tokens(self, model: nn.Module) -> dict[str, int]:
        """Tokens each block Linear runs on for the reference input (k, v of a cross-attention: the other tower's)."""
        return {
            f"{t.name}.layers.{i}.{n}": k
            for t in self.towers(model)
            for i, layer in enumerate(t.layers)
            for n, k in block_linear_tokens(t, t.block(layer)).items()
        }

    def factorize(
        self, model: nn.Module, name: str, rank: int, scales: list[float] | None = None, compute: bool = True
    ) -> None:
        """Replace the dense Linear ``name`` by its rank-``rank`` FactorizedLinear (in place); an attention whose own
        forward calls none of its Linears gets its forward patch (`vltrim.arch.patches.patch_opaque_`)."""
        lin = self.linears(model)[name]
        replace_module_(model, lin, factorize_linear(lin, rank, scales, compute))
        site, _, _ = name.rpartition(".")
        if not site.endswith(".mlp"):
            patches.patch_opaque_(self.site(model, site + ".heads").module)

    def group_linears(self, model: nn.Module, group_name: str) -> list[str]:
        """Names of the Linears a width group slices ('...attn.heads' -> its q, k, v, o or qkv, o; '...mlp.neurons' ->
        fc1, gate if separate, fc2; a layers group none)."""
        pre, kind = group_name.rsplit(".", 1)
        if kind == UnitKind.NEURONS.value:
            return [f"{pre}.{n}" for n in self.locate(model, group_name)[2].ffn_linears()]
        if kind in (UnitKind.HEADS.value, UnitKind.HEAD_DIMS.value):
            return [f"{pre}.{n}" for n in self.site(model, group_name).projections()]
        return []

    def locate(self, model: nn.Module, name: str) -> tuple[Tower, int | None, BlockSpec | None]:
        """Tower, layer index and block of a group name like 'vision.layers.3.mlp.neurons'."""
        for t in self.towers(model):
            if name == f"{t.name}.layers":
                return t, None, None
            if name.startswith(f"{t.name}.layers."):
                i = int(name[len(t.name) + len(".layers.") :].split(".")[0])
                return t, i, t.block(t.layers[i])
        raise KeyError(f"no group {name!r} in {type(model).__name__}")

    def site(self, model: nn.Module, name: str) -> AttentionSite:
        """The attention site of a heads / head_dims group name like 'text.layers.2.crossattn.heads'."""
        _, _, b = self.locate(model, name)
        if b is None:
            raise KeyError(f"{name!r} is not a group of an attention site")
        return b.site(name.rsplit(".", 2)[-2])

    # ---- masks and slicing --------------------------------------------------------------------
    def mask(self, model: nn.Module, group: Group, values: masks.MaskValues) -> masks.HandleGroup:
        """Scale the units of ``group`` by ``values`` (a tensor or a `masks.MaskParam`) in every forward until the
        handle is removed."""
        t, _, b = self.locate(model, group.name)
        if group.kind == UnitKind.HEADS:
            return masks.mask_heads(self.site(model, group.name), values)
        if group.kind == UnitKind.HEAD_DIMS:
            return masks.mask_head_dims(self.site(model, group.name), values)
        if group.kind == UnitKind.NEURONS:
            return masks.mask_neurons(b, values)
        return masks.mask_layers(t, values)

    def fold(self, model: nn.Module, group: Group, values: torch.Tensor) -> None:
        """Scale the weights so the unmasked model computes what ``mask(model, group, values)`` does (heads and FFN
        neurons: each scales one Linear's input columns)."""
        if group.kind == UnitKind.HEADS:
            return masks.fold_heads(self.site(model, group.name), values)
        if group.kind == UnitKind.NEURONS:
            return masks.fold_neurons(self.locate(model, group.name)[2], values)
        raise ValueError(f"mask values of {group.kind} units cannot be folded into the weights ({group.name})")

    def slice(self, model: nn.Module, group: Group, keep: list[int]) -> None:
        """Physically keep only units ``keep`` of ``group`` (in place); an attention whose class has a forward
        patch (`vltrim.arch.patches`) gets it, so it runs at its new width."""
        t, _, b = self.locate(model, group.name)
        if group.kind in (UnitKind.HEADS, UnitKind.HEAD_DIMS):
            a = self.site(model, group.name)
            (keep_heads_ if group.kind == UnitKind.HEADS else keep_head_dims_)(a, keep)
            patches.patch_(a.module)
        elif group.kind == UnitKind.NEURONS:
            keep_neurons_(b, keep)
        else:
            keep_layers_(t, keep)


def block_linears(b: BlockSpec) -> dict[str, nn.Module]:
    """A block's Linears by their name inside the block ('attn.q', 'crossattn.qkv', 'mlp.fc1', 'mlp.gate', ...)."""
    out = {f"{a.name}.{n}": lin for a in b.sites for n, lin in a.projections().items()}
    return {**out, **{f"mlp.{n}": lin for n, lin in b.ffn_linears().items()}}


def _kv_tokens(t: Tower, a: AttentionSite) -> int:
    return t.tokens if a.kv_tokens is None else a.kv_tokens


def block_linear_tokens(t: Tower, b: BlockSpec) -> dict[str, int]:
    """Tokens each of a block's Linears runs on (keys and values of a cross-attention read the other tower's)."""
    out = {}
    for a in b.sites:
        for n in a.projections():
            out[f"{a.name}.{n}"] = _kv_tokens(t, a) if n in ("k", "v") else t.tokens
    return {**out, **{f"mlp.{n}": t.tokens for n in b.ffn_linears()}}


def site_costs(t: Tower, a: AttentionSite) -> tuple[tuple[int, int], tuple[int, int]]:
    """Exact (params, MACs) of one head unit and of one head_dim channel of a site (see `attention_costs`), a head
    unit with what its query heads cost beyond the projections (`AttentionSite.head_extra`)."""
    (hp, hm), dim = attention_costs(
        a.hidden, a.num_heads, a.head_dim, t.tokens, _kv_tokens(t, a), a.bias, a.kv_hidden, a.q_per_kv
    )
    xp, xm = a.head_extra
    return (hp + a.q_per_kv * xp, hm + a.q_per_kv * xm * t.tokens), dim


def _block_params(layer: nn.Module, b: BlockSpec) -> int:
    """Parameters removing the block removes (its tower modules stay, see `BlockSpec.tower_modules`)."""
    shared = {id(p) for m in b.tower_modules.values() for p in m.parameters()}
    return sum(p.numel() for p in layer.parameters() if id(p) not in shared)


def _factorised(*mods: nn.Module) -> bool:
    return any(isinstance(m, FactorizedLinear) for m in mods)
