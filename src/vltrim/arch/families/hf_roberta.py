"""RoBERTa and XLM-R (HF transformers v5): RobertaModel, XLMRobertaModel and their sequence classifiers. Their layers
are BERT's: the BERT adapter with RoBERTa's backbone attribute, positions that start after the padding index
(a sequence holds max_position_embeddings - 2 tokens) and no token types."""

from __future__ import annotations

from transformers import (
    RobertaForSequenceClassification,
    RobertaModel,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from vltrim.arch.families.hf_bert import BertAdapter
from vltrim.arch.registry import register


@register(RobertaModel, RobertaForSequenceClassification, XLMRobertaModel, XLMRobertaForSequenceClassification)
class RobertaAdapter(BertAdapter):
    """One text tower of BERT-style layers."""

    root_attr = "roberta"
    reserved_positions = 2
    token_types = False
