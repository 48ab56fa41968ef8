"""SigLIP (HF transformers v5): SiglipModel and its towers. Blocks are CLIP-shaped; pooling heads are kept whole."""

from __future__ import annotations

from transformers import SiglipModel, SiglipTextModel, SiglipVisionModel

from vltrim.arch.families.hf_clip import CLIPAdapter
from vltrim.arch.registry import register


@register(SiglipModel, SiglipVisionModel, SiglipTextModel)
class SiglipAdapter(CLIPAdapter):
    """SigLIP: no CLS token in the vision tower; text is padded, without an attention mask."""

    vision_types = (SiglipModel, SiglipVisionModel)
    text_types = (SiglipModel, SiglipTextModel)
    cls_tokens = 0
    text_attention_mask = False
