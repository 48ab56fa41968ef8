"""VisionTextDualEncoderModel: any supported vision tower + any supported text tower, trained CLIP-style."""

from __future__ import annotations

from torch import nn
from transformers import VisionTextDualEncoderModel

from vltrim.arch.base import TransformerAdapter
from vltrim.arch.registry import UnsupportedModelError, get_adapter, register, supported_classes
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
            for t in _tower_adapter(model, name).towers(sub):
                t.name, t.modality = name, name
                if all(cfg is not c for c in t.configs):
                    t.configs.append(cfg)
                out.append(t)
        return out

    def reference_inputs(self, model: nn.Module, batch_size: int = 1) -> dict:
        inputs = _tower_adapter(model, "vision").reference_inputs(model.vision_model, batch_size)
        text = _tower_adapter(model, "text").reference_inputs(model.text_model, batch_size)
        text.pop("token_type_ids", None)
        return {**inputs, **text}


def _tower_adapter(model: nn.Module, modality: str) -> TransformerAdapter:
    """The adapter of the ``modality`` tower; an error naming the tower and its class when vltrim has none (the dual
    encoder itself is supported, so the registry's 'no adapter for Qwen2Model' alone would not say where it is)."""
    attr = f"{modality}_model"
    sub = getattr(model, attr)
    try:
        return get_adapter(sub)
    except UnsupportedModelError:
        raise UnsupportedModelError(
            f"{type(model).__name__}: its {modality} tower ({attr}) is a {type(sub).__name__}, which vltrim has no "
            f"adapter for. Supported classes: {', '.join(supported_classes())}"
        ) from None
