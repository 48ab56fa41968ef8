"""BLIP (HF transformers v5): BlipModel, BlipForImageTextRetrieval (ITC + ITM), BlipForQuestionAnswering (question
encoder + answer decoder) and BlipForConditionalGeneration (captioning decoder).

Towers: ``vision`` (one fused qkv per block), ``text`` (the question / caption encoder: self-attention, and the
cross-attention to the image tokens where the class's forward runs it) and ``decoder`` (the answer / caption decoder:
self-attention and cross-attention to the image tokens, or to the question tokens in VQA). Every cross-attention is a
site of modality ``fusion``; its keys and values read the other tower's width and tokens, so its costs are exact.

Two forward patches keep outputs identical once sliced: the vision attention reshapes its fused qkv with the width it
cached (``embed_dim // num_heads``), and the text attention recomputes its softmax scale from its head size (the
original 1/sqrt(head_dim) must stay when head dims shrink)."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn
from transformers import (
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    BlipModel,
)
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.blip.modeling_blip import BlipAttention
from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

from vltrim.arch.base import TransformerAdapter
from vltrim.arch.inputs import image_inputs, patch_tokens, text_inputs
from vltrim.arch.patches import forward_patch
from vltrim.arch.registry import register
from vltrim.structure.slicing import AttentionSite, BlockSpec, Tower

TEXT_TOKENS = 32  # reference length of a caption / question (BLIP's own captions are at most 30-40 tokens)
ANSWER_TOKENS = 8  # reference length of a VQA answer fed to the answer decoder


@forward_patch(BlipAttention)
class SlicedBlipAttention(BlipAttention):
    """BLIP's vision attention at its sliced width: heads and head dims read from the module (it splits the fused qkv
    with ``embed_dim // num_heads`` of the input), the softmax scale it cached at construction kept."""

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        bsz, tgt_len, _ = hidden_states.size()
        qkv = self.qkv(hidden_states).reshape(bsz, tgt_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(qkv[0], qkv[1].transpose(-1, -2)) * self.scale
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        context = torch.matmul(probs, qkv[2]).permute(0, 2, 1, 3).reshape(bsz, tgt_len, -1)
        return self.projection(context), probs


def _original_head_size(attn: BlipTextSelfAttention) -> int:
    """The head size the config gives: the unpruned attention divides its scores by its square root."""
    return int(attn.config.hidden_size / attn.config.num_attention_heads)


@forward_patch(BlipTextSelfAttention)
class SlicedBlipTextSelfAttention(BlipTextSelfAttention):
    """BLIP's text self / cross-attention once sliced: the unpruned softmax scale (the original recomputes it from the
    current head size), caches as the original uses them (generation)."""

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                cache=None, **kwargs):  # fmt: skip
        mask = encoder_attention_mask if encoder_hidden_states is not None else attention_mask
        q = self.query(hidden_states).view(*hidden_states.shape[:-1], -1, self.attention_head_size).transpose(1, 2)
        k, v = _keys_values(self, hidden_states, encoder_hidden_states, cache, **kwargs)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(_original_head_size(self))
        if mask is not None:
            scores = scores + mask.to(scores.device)
        probs = nn.Softmax(dim=-1)(scores)
        context = torch.matmul(self.dropout(probs), v).permute(0, 2, 1, 3).contiguous()
        return context.view(*context.shape[:-2], self.all_head_size), probs


def _keys_values(attn: BlipTextSelfAttention, hidden_states, encoder_hidden_states, cache, **kwargs):  # noqa: ANN001
    """Keys and values, read from / written to the cache exactly as the original forward does."""
    cross = encoder_hidden_states is not None
    current = cache
    updated = False
    if cache is not None and isinstance(cache, EncoderDecoderCache):
        updated = cache.is_updated.get(attn.layer_idx)
        current = cache.cross_attention_cache if cross else cache.self_attention_cache
    if cross and cache is not None and updated:
        return current.layers[attn.layer_idx].keys, current.layers[attn.layer_idx].values
    states = encoder_hidden_states if cross else hidden_states
    shape = (*states.shape[:-1], -1, attn.attention_head_size)
    k, v = attn.key(states).view(shape).transpose(1, 2), attn.value(states).view(shape).transpose(1, 2)
    if cache is not None:
        k, v = current.update(k, v, attn.layer_idx, kwargs=kwargs)
        if cross and isinstance(cache, EncoderDecoderCache):
            cache.is_updated[attn.layer_idx] = True
    return k, v


# ---- blocks ---------------------------------------------------------------------------------------------------------
def vision_block(layer: nn.Module) -> BlockSpec:
    a = layer.self_attn
    return BlockSpec(
        [AttentionSite.fused(a, a.qkv, a.projection, "num_heads", "head_dim")], layer.mlp.fc1, layer.mlp.fc2
    )


def _text_site(attention: nn.Module, **kw) -> AttentionSite:
    s = attention.self
    return AttentionSite(
        s, s.query, s.key, s.value, attention.output.dense, "num_attention_heads", "attention_head_size",
        "all_head_size", **kw,
    )  # fmt: skip


def text_block(layer: nn.Module, cross_tokens: int | None) -> BlockSpec:
    """A BERT-style BLIP text layer: self-attention, the cross-attention when the forward runs it (``cross_tokens``:
    the key/value tokens it reads; None: left whole) and the FFN."""
    sites = [_text_site(layer.attention)]
    if cross_tokens is not None and hasattr(layer, "crossattention"):
        sites.append(_text_site(layer.crossattention, name="crossattn", kv_tokens=cross_tokens, modality="fusion"))
    return BlockSpec(sites, layer.intermediate.dense, layer.output.dense)


def _tokens(cfg, want: int) -> int:
    return min(want, cfg.max_position_embeddings)


@register(BlipModel, BlipForImageTextRetrieval, BlipForQuestionAnswering, BlipForConditionalGeneration)
class BlipAdapter(TransformerAdapter):
    """A vision tower, and a text encoder and / or a decoder whose cross-attention reads the image (or the question)."""

    def towers(self, model: nn.Module) -> list[Tower]:
        cfg = model.config
        image = patch_tokens(cfg.vision_config) + 1
        text, answer = self._text_tokens(model), self._decoder_tokens(model)
        vision = model.vision_model
        out = [
            Tower(
                "vision",
                "vision",
                vision.encoder.layers,
                vision_block,
                image,
                _unique(vision.config, cfg.vision_config),
            )
        ]
        encoder = self._text_encoder(model)
        if encoder is not None:
            cross = None if isinstance(model, BlipModel) else image  # BlipModel's forward runs no cross-attention
            out.append(Tower("text", "text", encoder.encoder.layer, functools.partial(text_block, cross_tokens=cross),
                             text, self._layer_configs(model, encoder)))  # fmt: skip
        if hasattr(model, "text_decoder"):
            decoder = model.text_decoder.bert
            cross = text if encoder is not None else image  # VQA's decoder reads the question, captioning's the image
            out.append(Tower("decoder", "decoder", decoder.encoder.layer, functools.partial(text_block, cross_tokens=cross),
                             answer, self._layer_configs(model, decoder)))  # fmt: skip
        return out

    @staticmethod
    def _text_encoder(model: nn.Module) -> nn.Module | None:
        return getattr(model, "text_encoder", None) or getattr(model, "text_model", None)

    @staticmethod
    def _layer_configs(model: nn.Module, stack: nn.Module) -> list:
        """Configs whose layer count follows this stack: none when the question encoder and the answer decoder share
        one text config (VQA), which then keeps the unpruned count."""
        if hasattr(model, "text_encoder") and hasattr(model, "text_decoder"):
            return []
        return _unique(stack.config, model.config.text_config)

    def _text_tokens(self, model: nn.Module) -> int:
        return _tokens(model.config.text_config, TEXT_TOKENS)

    def _decoder_tokens(self, model: nn.Module) -> int:
        want = ANSWER_TOKENS if hasattr(model, "text_encoder") else TEXT_TOKENS
        return _tokens(model.config.text_config, want)

    def paired_inputs(self, model: nn.Module) -> bool:
        return not isinstance(model, BlipModel)  # BlipModel's forward embeds images and texts apart (ITC)

    def forward(self, model: nn.Module, inputs: dict[str, Any]) -> Any:
        """The model's forward; for VQA also the answer decoder's ``logits`` (its forward returns only a loss): read by
        a hook, so a DDP wrapper's forward still runs."""
        net = getattr(model, "module", model)
        if not isinstance(net, BlipForQuestionAnswering):
            return model(**inputs)
        seen: list[Any] = []
        handle = net.text_decoder.register_forward_hook(lambda _m, _a, out: seen.append(out))
        try:
            out = model(**inputs)
        finally:
            handle.remove()
        out["logits"] = seen[-1].logits
        return out

    def reference_inputs(self, model: nn.Module, batch_size: int = 1) -> dict[str, torch.Tensor]:
        cfg = model.config
        if isinstance(model, BlipForConditionalGeneration):
            text = text_inputs(cfg.text_config, batch_size, self._decoder_tokens(model))
        else:
            text = text_inputs(cfg.text_config, batch_size, self._text_tokens(model))
        out = {**image_inputs(cfg.vision_config, batch_size), **text}
        if isinstance(model, BlipForQuestionAnswering):
            answer = text_inputs(cfg.text_config, batch_size, self._decoder_tokens(model), seed=2)
            out |= {"decoder_input_ids": answer["input_ids"], "decoder_attention_mask": answer["attention_mask"]}
        return out


def _unique(*objs) -> list:
    return [o for i, o in enumerate(objs) if o is not None and all(o is not p for p in objs[:i])]
