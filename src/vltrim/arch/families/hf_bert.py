"""BERT-like encoders (HF transformers v5): BertModel (MiniLM, sentence encoders) and classifiers."""

from __future__ import annotations

from torch import nn
from transformers import BertForSequenceClassification, BertModel

from vltrim.arch.base import TransformerAdapter
from vltrim.arch.inputs import text_inputs
from vltrim.arch.registry import register
from vltrim.structure.slicing import AttentionSpec, BlockSpec, Tower

REFERENCE_TOKENS = 128  # sequence length that MAC costs refer to (capped by max_position_embeddings)


def bert_block(layer: nn.Module, self_attr: str = "self") -> BlockSpec:
    """A BERT-style layer: attention.<self_attr>.{query, key, value}, attention.output.dense, intermediate / output
    dense (DPT's ViT layers name their self-attention ``attention``)."""
    s = getattr(layer.attention, self_attr)
    attn = AttentionSpec(
        s,
        s.query,
        s.key,
        s.value,
        layer.attention.output.dense,
        "num_attention_heads",
        "attention_head_size",
        "all_head_size",
    )
    return BlockSpec(attn, layer.intermediate.dense, layer.output.dense)


@register(BertModel, BertForSequenceClassification)
class BertAdapter(TransformerAdapter):
    """One text tower; cross-attention layers of a decoder config are left whole. A BERT-style family differs only in
    its backbone attribute, where its layer list lies, how a layer reads, the positions it reserves and whether it
    reads token types (`hf_roberta.py`, `hf_distilbert.py`, `hf_mpnet.py`, `hf_modernbert.py`)."""

    root_attr = "bert"  # the backbone of a model with a head
    layers_path = "encoder.layer"  # the layer list in the backbone
    block = staticmethod(bert_block)  # how one layer reads
    reserved_positions = 0  # positions a sequence cannot use (RoBERTa's start after the padding index)
    token_types = True

    def _root(self, model: nn.Module) -> nn.Module:
        return getattr(model, self.root_attr) if hasattr(model, self.root_attr) else model

    def _tokens(self, cfg) -> int:
        return min(REFERENCE_TOKENS, cfg.max_position_embeddings - self.reserved_positions)

    def towers(self, model: nn.Module) -> list[Tower]:
        root = self._root(model)
        cfgs = [root.config] + ([model.config] if model.config is not root.config else [])
        layers = root.get_submodule(self.layers_path)
        return [Tower("text", "text", layers, self.block, self._tokens(root.config), cfgs)]

    def reference_inputs(self, model: nn.Module, batch_size: int = 1) -> dict:
        cfg = self._root(model).config
        return text_inputs(cfg, batch_size, self._tokens(cfg), token_types=self.token_types)
