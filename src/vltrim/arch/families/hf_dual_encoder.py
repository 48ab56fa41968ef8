"""VisionTextDualEncoderModel: any supported vision tower + any supported text tower, trained CLIP-style."""

from __future__ import annotations

from torch import nn
from transformers import VisionTextDualEncoderModel

from vltrim.arch.base import TransformerAdapter
from vltrim.arch.registry import get_adapter, register
from vltrim.structure.slicing import Tower


@register(VisionTextDualEncoderModel)
class DualEncoderAdapter(TransformerAdapter):
    """Delegates to the towers' own adapters; the parent config's sub-configs follow the layer counts."""

    def towers(self, model: nn.Module) -> list[Tower]:
        out = []
        for name, sub, cfg in (
            ("vision", model.vision_model, model.config.vision_config),
            ("text", model.text_model, model.config.text_config),
        ):
            for t in get_adapter(sub).towers(sub):
                t.name, t.modality = name, name
                if all(cfg is not c for c in t.configs):
                    t.configs.append(cfg)
                out.append(t)
        return out

    def reference_inputs(self, model: nn.Module, batch_size: int = 1) -> dict:
        inputs = get_adapter(model.vision_model).reference_inputs(model.vision_model, batch_size)
        text = get_adapter(model.text_model).reference_inputs(model.text_model, batch_size)
        text.pop("token_type_ids", None)
        return {**inputs, **text}
