"""Deterministic reference inputs shared by the family adapters."""

from __future__ import annotations

import torch


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image_inputs(config, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """pixel_values of the config's image size and channel count."""
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    channels = getattr(config, "num_channels", 3)
    return {"pixel_values": torch.randn(batch_size, channels, size, size, generator=_gen(seed))}


def text_inputs(
    config, batch_size: int, tokens: int, seed: int = 1, token_types: bool = False
) -> dict[str, torch.Tensor]:
    """input_ids of ``tokens`` ids ending in the config's eos id (when it lies in the vocabulary)."""
    ids = torch.randint(0, config.vocab_size, (batch_size, tokens), generator=_gen(seed))
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int) and 0 <= eos < config.vocab_size:
        ids[ids == eos] = 0
        ids[:, -1] = eos
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if token_types:
        out["token_type_ids"] = torch.zeros_like(ids)
    return out


def patch_tokens(config) -> int:
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    return (size // patch) ** 2
