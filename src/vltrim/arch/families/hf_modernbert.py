"""ModernBERT (HF transformers v5): ModernBertModel and its sequence classifier (ModernBERT-based embedders).

Each layer's attention is one fused ``Wqkv`` (rows q | k | v) with rotary position embeddings, global or sliding-window
(local) by the layer's type; its FFN is a GLU whose ``Wi`` holds both halves (act(a) * b -> Wo): the core's fused-qkv
site, gated FFN (a neuron is a pair of Wi rows, `BlockSpec.fc1_parts`) and rotary head_dims (a unit is the pair of
channels one rotation mixes, `AttentionSite.rotary`). A layer whose head dims were sliced runs through
`SlicedModernBertAttention`: the kept channels' cos / sin, the original softmax scale. Removing layers keeps each
layer's attention type (the config lists the kept layers' types)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import ModernBertForSequenceClassification, ModernBertModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.modernbert.modeling_modernbert import (
    ModernBertAttention,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from vltrim.arch.families.hf_bert import BertAdapter
from vltrim.arch.patches import forward_patch
from vltrim.arch.registry import register
from vltrim.structure.slicing import AttentionSite, BlockSpec, kept_dims, original_head_dim


@forward_patch(ModernBertAttention)
class SlicedModernBertAttention(ModernBertAttention):
    """ModernBERT's attention at any width: rotary cos / sin of the kept head-dim channels, the original scale."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):  # noqa: ANN001
        shape, hd = hidden_states.shape[:-1], self.head_dim
        q, k, v = (x.transpose(1, 2) for x in self.Wqkv(hidden_states).view(*shape, 3, -1, hd).unbind(dim=-3))
        cos, sin = position_embeddings
        if cos.shape[-1] != hd:
            idx = torch.as_tensor(kept_dims(self, hd), device=cos.device)
            cos, sin = cos.index_select(-1, idx), sin.index_select(-1, idx)
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attend(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=original_head_dim(self, hd) ** -0.5,
            sliding_window=self.sliding_window,
            deterministic=self.deterministic_flash_attn,
            **kwargs,
        )
        return self.out_drop(self.Wo(out.reshape(*shape, -1).contiguous())), weights


def modernbert_block(layer: nn.Module) -> BlockSpec:
    a, ff = layer.attn, layer.mlp
    site = AttentionSite.fused(a, a.Wqkv, a.Wo, "num_heads", "head_dim", rotary=True)
    return BlockSpec(site, ff.Wi, ff.Wo, fc1_parts=2)


@register(ModernBertModel, ModernBertForSequenceClassification)
class ModernBertAdapter(BertAdapter):
    """One text tower (the backbone of a classifier is ``model``)."""

    root_attr = "model"
    layers_path = "layers"
    block = staticmethod(modernbert_block)
    token_types = False
