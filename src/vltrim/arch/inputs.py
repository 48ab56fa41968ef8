"""Model inputs by modality, declared once (the data layer, the runner and the exporter read them), and the
deterministic reference inputs the family adapters build from them. A new modality's input is one entry here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ModelInput:
    """One keyword input of a model's forward."""

    name: str
    modality: str  # "vision" | "text" | "audio"
    floating: bool  # pixel values and waveforms are floats; ids and masks are integers
    sequence: bool  # axis 1 is the token sequence or the waveform's samples (a dynamic axis of an export)
    primary: bool  # it carries its modality: a dataset with this field already holds model inputs


MODEL_INPUTS: dict[str, ModelInput] = {
    i.name: i
    for i in (
        ModelInput("pixel_values", "vision", floating=True, sequence=False, primary=True),
        ModelInput("input_values", "audio", floating=True, sequence=True, primary=True),
        ModelInput("input_ids", "text", floating=False, sequence=True, primary=True),
        ModelInput("attention_mask", "text", floating=False, sequence=True, primary=False),
        ModelInput("token_type_ids", "text", floating=False, sequence=True, primary=False),
        ModelInput("decoder_input_ids", "text", floating=False, sequence=True, primary=False),
        ModelInput("decoder_attention_mask", "text", floating=False, sequence=True, primary=False),
    )
}
FLOATING_INPUTS = tuple(k for k, i in MODEL_INPUTS.items() if i.floating)
PRIMARY_INPUTS = tuple(k for k, i in MODEL_INPUTS.items() if i.primary)
SEQUENCE_INPUTS = tuple(k for k, i in MODEL_INPUTS.items() if i.sequence)


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``batch`` that are model inputs (labels, teacher targets and the like left out)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


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


def audio_inputs(batch_size: int, samples: int, seed: int = 2) -> dict[str, torch.Tensor]:
    """input_values: ``samples`` of a mono waveform per item (unit-variance noise, what a normalising feature
    extractor gives)."""
    return {"input_values": torch.randn(batch_size, samples, generator=_gen(seed))}


def patch_tokens(config) -> int:
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    return (size // patch) ** 2
