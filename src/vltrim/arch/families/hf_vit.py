"""ViT and DeiT (HF transformers v5): backbones and image classifiers."""

from __future__ import annotations

from torch import nn
from transformers import (
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
    ViTForImageClassification,
    ViTModel,
)

from vltrim.arch.base import TransformerAdapter
from vltrim.arch.inputs import image_inputs, patch_tokens
from vltrim.arch.registry import register
from vltrim.structure.slicing import AttentionSpec, BlockSpec, Tower


def vit_block(layer: nn.Module) -> BlockSpec:
    a = layer.attention
    return BlockSpec(
        AttentionSpec(a, a.q_proj, a.k_proj, a.v_proj, a.o_proj, "num_attention_heads", "head_dim"),
        layer.mlp.fc1,
        layer.mlp.fc2,
    )


def backbone(model: nn.Module) -> nn.Module:
    for attr in ("vit", "deit"):
        if hasattr(model, attr):
            return getattr(model, attr)
    return model


@register(
    ViTModel, ViTForImageClassification, DeiTModel, DeiTForImageClassification, DeiTForImageClassificationWithTeacher
)
class ViTAdapter(TransformerAdapter):
    """ViT (CLS token) and DeiT (CLS + distillation token): one vision tower."""

    def towers(self, model: nn.Module) -> list[Tower]:
        root = backbone(model)
        extra = 2 if type(root).__name__.startswith("DeiT") else 1
        cfgs = [root.config] + ([model.config] if model.config is not root.config else [])
        return [Tower("vision", "vision", root.layers, vit_block, patch_tokens(root.config) + extra, cfgs)]

    def reference_inputs(self, model: nn.Module, batch_size: int = 1) -> dict:
        return image_inputs(backbone(model).config, batch_size)
