"""Model families: one file each; importing a file registers its adapter (see arch.registry)."""

from vltrim.arch.families import hf_bert, hf_blip, hf_clip, hf_dual_encoder, hf_roberta, hf_siglip, hf_speech, hf_vit  # noqa: F401  (registration)
