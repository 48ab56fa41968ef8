"""DPT (HF transformers v5): DPTModel and DPTForSemanticSegmentation over their plain ViT backbone.

One vision tower: the ViT layers (``dpt.encoder.layer``), BERT-style attention (``attention.attention.{query, key,
value}``, ``attention.output.dense``) with the softmax scale cached at construction, and the FFN
``intermediate.dense`` -> ``output.dense``. Tokens: the CLS token and the patches of the config's image size (a
hybrid config's BiT backbone makes the same grid, its position table says so).

The segmenter's neck reads the hidden states of the layers listed in ``backbone_out_indices`` by their index in the
stack: removing a layer would make the neck read other layers (and too few of them once an indexed layer is gone),
which no mask of the unpruned model computes. So a segmenter keeps its depth: it offers no layers group (its width
groups prune as in any ViT). The bare DPTModel has no neck and keeps its layers group. The patch embedding (and a
hybrid's BiT backbone) is the front end; the neck and the head, which no method prunes, are the rest of the
model's cost."""

from __future__ import annotations

from torch import nn
from transformers import DPTForSemanticSegmentation, DPTModel

from vltrim.arch.base import TransformerAdapter
from vltrim.arch.families.hf_bert import bert_block
from vltrim.arch.inputs import image_inputs, patch_tokens
from vltrim.arch.registry import register
from vltrim.structure.groups import Group, UnitKind
from vltrim.structure.slicing import BlockSpec, Tower


def dpt_block(layer: nn.Module) -> BlockSpec:
    return bert_block(layer, self_attr="attention")


@register(DPTModel, DPTForSemanticSegmentation)
class DPTAdapter(TransformerAdapter):
    """One vision tower; a model whose neck reads layers by index (the segmenter) offers no layers group."""

    def _root(self, model: nn.Module) -> nn.Module:
        return model.dpt if isinstance(getattr(model, "dpt", None), nn.Module) else model

    def towers(self, model: nn.Module) -> list[Tower]:
        root = self._root(model)
        cfgs = [root.config] + ([model.config] if model.config is not root.config else [])
        return [Tower("vision", "vision", root.encoder.layer, dpt_block, patch_tokens(root.config) + 1, cfgs)]

    def groups(self, model: nn.Module) -> list[Group]:
        out = super().groups(model)
        if hasattr(model, "neck"):
            out = [g for g in out if g.kind != UnitKind.LAYERS]
        return out

    def reference_inputs(self, model: nn.Module, batch_size: int = 1) -> dict:
        return image_inputs(self._root(model).config, batch_size)

    def front_end(self, model: nn.Module) -> list[nn.Module]:
        return [self._root(model).embeddings]
