"""DistilBERT (HF transformers v5): DistilBertModel and its sequence classifier (DistilBERT / DistilRoBERTa-style
sentence encoders). BERT's adapter with DistilBERT's names: attention q_lin / k_lin / v_lin / out_lin over n_heads,
FFN lin1 / lin2, layers at transformer.layer, no token types."""

from __future__ import annotations

from torch import nn
from transformers import DistilBertForSequenceClassification, DistilBertModel

from vltrim.arch.families.hf_bert import BertAdapter
from vltrim.arch.registry import register
from vltrim.structure.slicing import AttentionSite, BlockSpec


def distilbert_block(layer: nn.Module) -> BlockSpec:
    a = layer.attention
    site = AttentionSite(a, a.q_lin, a.k_lin, a.v_lin, a.out_lin, "n_heads", "attention_head_size")
    return BlockSpec(site, layer.ffn.lin1, layer.ffn.lin2)


@register(DistilBertModel, DistilBertForSequenceClassification)
class DistilBertAdapter(BertAdapter):
    """One text tower (the attention keeps the softmax scale it cached, so head dims may shrink)."""

    root_attr = "distilbert"
    layers_path = "transformer.layer"
    block = staticmethod(distilbert_block)
    token_types = False
