"""MPNet (HF transformers v5): MPNetModel and its sequence classifier (all-mpnet-base-v2 and other sentence encoders).

BERT-like layers (attention q / k / v / o, intermediate / output dense) with one relative position bias per head that
the encoder computes once from its own table and hands to every layer. A layer whose heads were sliced runs through
`SlicedMPNetSelfAttention`: it adds the kept heads' bias by their original indices (`kept_heads`) and keeps the
original softmax scale when head dims shrink; the table itself (one value per original head and bucket) is untouched,
head dims never meet it. Positions start after the padding index, as in RoBERTa."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import MPNetForSequenceClassification, MPNetModel
from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention

from vltrim.arch.families.hf_bert import BertAdapter
from vltrim.arch.patches import forward_patch
from vltrim.arch.registry import register
from vltrim.structure.slicing import AttentionSite, BlockSpec, kept_heads, original_head_dim


@forward_patch(MPNetSelfAttention)
class SlicedMPNetSelfAttention(MPNetSelfAttention):
    """MPNet's attention at any width: the shared position bias of the kept heads only, the original scale."""

    def forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs):  # noqa: ANN001
        hd = self.attention_head_size
        q, k, v = (p(hidden_states).unflatten(-1, (-1, hd)).transpose(1, 2) for p in (self.q, self.k, self.v))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(original_head_dim(self, hd))
        if position_bias is not None:
            idx = torch.as_tensor(kept_heads(self, self.num_attention_heads), device=scores.device)
            scores = scores + position_bias.index_select(1, idx)
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        out = self.o(torch.matmul(probs, v).transpose(1, 2).flatten(2))
        return (out, probs) if output_attentions else (out,)


def mpnet_block(layer: nn.Module) -> BlockSpec:
    s = layer.attention.attn
    site = AttentionSite(s, s.q, s.k, s.v, s.o, "num_attention_heads", "attention_head_size", "all_head_size")
    return BlockSpec(site, layer.intermediate.dense, layer.output.dense)


@register(MPNetModel, MPNetForSequenceClassification)
class MPNetAdapter(BertAdapter):
    """One text tower; the encoder's relative position table is shared by every layer and never pruned."""

    root_attr = "mpnet"
    block = staticmethod(mpnet_block)
    reserved_positions = 2
    token_types = False
