"""RoBERTa and XLM-R (HF transformers v5): RobertaModel, XLMRobertaModel and their sequence classifiers. Their layers
are BERT's (`hf_bert.bert_block`); positions start after the padding index, so a sequence holds
max_position_embeddings - 2 tokens."""

from __future__ import annotations

from torch import nn
from transformers import (
    RobertaForSequenceClassification,
    RobertaModel,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from vltrim.arch.base import TransformerAdapter
from vltrim.arch.families.hf_bert import REFERENCE_TOKENS, bert_block
from vltrim.arch.inputs import text_inputs
from vltrim.arch.registry import register
from vltrim.structure.slicing import Tower


def _root(model: nn.Module) -> nn.Module:
    return model.roberta if hasattr(model, "roberta") else model


@register(RobertaModel, RobertaForSequenceClassification, XLMRobertaModel, XLMRobertaForSequenceClassification)
class RobertaAdapter(TransformerAdapter):
    """One text tower of BERT-style layers."""

    def _tokens(self, cfg) -> int:
        return min(REFERENCE_TOKENS, cfg.max_position_embeddings - 2)

    def towers(self, model: nn.Module) -> list[Tower]:
        root = _root(model)
        cfgs = [root.config] + ([model.config] if model.config is not root.config else [])
        return [Tower("text", "text", root.encoder.layer, bert_block, self._tokens(root.config), cfgs)]

    def reference_inputs(self, model: nn.Module, batch_size: int = 1) -> dict:
        cfg = _root(model).config
        return text_inputs(cfg, batch_size, self._tokens(cfg))
