"""DINOv2 (HF transformers v5): Dinov2Model and Dinov2ForImageClassification.

ViT-like layers (attention q / k / v / o_proj) with layer scale: each block's residual branches are scaled per hidden
channel (lambda1), and the hidden size is never pruned, so layer scale is sliced with nothing. The FFN is fc1 -> GELU
-> fc2 or, with ``use_swiglu_ffn``, SwiGLU (silu(gate_proj) * up_proj -> down_proj): the core's gated FFN, where a
neuron is a row of each input and a column of down_proj (`BlockSpec.gate`). Tokens: the CLS token and the patches of
the config's image size (positions are interpolated for other sizes)."""

from __future__ import annotations

from torch import nn
from transformers import Dinov2ForImageClassification, Dinov2Model

from vltrim.arch.base import TransformerAdapter
from vltrim.arch.inputs import image_inputs, patch_tokens
from vltrim.arch.registry import register
from vltrim.structure.slicing import AttentionSite, BlockSpec, Tower


def dinov2_block(layer: nn.Module) -> BlockSpec:
    a, ff = layer.attention, layer.mlp
    site = AttentionSite(a, a.q_proj, a.k_proj, a.v_proj, a.o_proj, "num_attention_heads", "head_dim")
    if hasattr(ff, "gate_proj"):
        return BlockSpec(site, ff.up_proj, ff.down_proj, gate=ff.gate_proj)
    return BlockSpec(site, ff.fc1, ff.fc2)


@register(Dinov2Model, Dinov2ForImageClassification)
class Dinov2Adapter(TransformerAdapter):
    """One vision tower."""

    def _root(self, model: nn.Module) -> nn.Module:
        return model.dinov2 if hasattr(model, "dinov2") else model

    def towers(self, model: nn.Module) -> list[Tower]:
        root = self._root(model)
        cfgs = [root.config] + ([model.config] if model.config is not root.config else [])
        return [Tower("vision", "vision", root.encoder.layer, dinov2_block, patch_tokens(root.config) + 1, cfgs)]

    def reference_inputs(self, model: nn.Module, batch_size: int = 1) -> dict:
        return image_inputs(self._root(model).config, batch_size)
