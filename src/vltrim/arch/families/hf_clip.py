"""CLIP (HF transformers v5): CLIPModel and its vision / text towers, with or without projection."""

from __future__ import annotations

from torch import nn
from transformers import (
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

from vltrim.arch.base import TransformerAdapter
from vltrim.arch.inputs import image_inputs, patch_tokens, text_inputs
from vltrim.arch.registry import register
from vltrim.structure.slicing import AttentionSpec, BlockSpec, Tower


def clip_block(layer: nn.Module) -> BlockSpec:
    """CLIP-style encoder layer: self_attn.{q,k,v,out}_proj, mlp.fc1/fc2 (SigLIP's too)."""
    a = layer.self_attn
    return BlockSpec(
        AttentionSpec(a, a.q_proj, a.k_proj, a.v_proj, a.out_proj, "num_heads", "head_dim"),
        layer.mlp.fc1,
        layer.mlp.fc2,
    )


def _unique(*objs) -> list:
    return [o for i, o in enumerate(objs) if o is not None and all(o is not p for p in objs[:i])]


@register(CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection, CLIPTextModel, CLIPTextModelWithProjection)
class CLIPAdapter(TransformerAdapter):
    """Contrastive two-tower models whose towers hold ``encoder.layers`` of CLIP-style blocks."""

    vision_types: tuple[type, ...] = (CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection)
    text_types: tuple[type, ...] = (CLIPModel, CLIPTextModel, CLIPTextModelWithProjection)
    cls_tokens = 1  # tokens the vision tower adds to the patches
    text_attention_mask = True

    def _roots(self, model: nn.Module) -> list[tuple[str, nn.Module, object]]:
        """(modality, tower root module, the parent config's copy of its config or None)."""
        out = []
        if isinstance(model, self.vision_types):
            out.append(("vision", getattr(model, "vision_model", model), getattr(model.config, "vision_config", None)))
        if isinstance(model, self.text_types):
            out.append(("text", getattr(model, "text_model", model), getattr(model.config, "text_config", None)))
        return out

    def _tokens(self, modality: str, cfg) -> int:
        return patch_tokens(cfg) + self.cls_tokens if modality == "vision" else cfg.max_position_embeddings

    def towers(self, model: nn.Module) -> list[Tower]:
        return [
            Tower(m, m, root.encoder.layers, clip_block, self._tokens(m, root.config), _unique(root.config, parent_cfg))
            for m, root, parent_cfg in self._roots(model)
        ]

    def reference_inputs(self, model: nn.Module, batch_size: int = 1) -> dict:
        inputs = {}
        for m, root, _ in self._roots(model):
            if m == "vision":
                inputs.update(image_inputs(root.config, batch_size))
            else:
                inputs.update(text_inputs(root.config, batch_size, self._tokens(m, root.config)))
                if not self.text_attention_mask:
                    inputs.pop("attention_mask")
        return inputs
