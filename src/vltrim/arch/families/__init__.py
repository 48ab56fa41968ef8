"""Model families: one file each; importing a file registers its adapter (see arch.registry)."""

from vltrim.arch.families import (  # noqa: F401  (registration)
    hf_bert,
    hf_blip,
    hf_clip,
    hf_dinov2,
    hf_distilbert,
    hf_dpt,
    hf_dual_encoder,
    hf_modernbert,
    hf_mpnet,
    hf_roberta,
    hf_siglip,
    hf_speech,
    hf_vit,
)
