"""Self-supervised speech Transformers (HF transformers v5): HuBERT, wav2vec 2.0 and WavLM, bare or with a sequence
classification head.

One ``audio`` tower: the Transformer layers. The CNN feature encoder, the feature projection and the positional
convolution run on every input and are not Transformer blocks: no method prunes them, and their cost is reported apart
(`front_end`). Frames (the tower's tokens) follow the audio length: the CNN's output length for the reference clip
(``REFERENCE_SECONDS`` at 16 kHz, 49 frames at the usual 320x stride).

WavLM's attention adds a gated relative position bias per head: the bias table lives in the first layer and is shared
by every layer, each head's gate reads its own slice of the layer input. Its forward hands the projection weights to
``F.multi_head_attention_forward`` (nothing to hook), so masks and slicing run it through `SlicedWavLMAttention`, which
reads the kept heads' bias and gate inputs by their original indices and keeps the original softmax scale; the gate
constant is sliced with the heads, and the shared table survives the removal of its layer (a tower module)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    HubertForSequenceClassification,
    HubertModel,
    Wav2Vec2ForSequenceClassification,
    Wav2Vec2Model,
    WavLMForSequenceClassification,
    WavLMModel,
)
from transformers.models.wavlm.modeling_wavlm import WavLMAttention

from vltrim.arch.base import TransformerAdapter
from vltrim.arch.inputs import audio_inputs
from vltrim.arch.patches import forward_patch
from vltrim.arch.registry import register
from vltrim.structure.slicing import AttentionSite, BlockSpec, Tower, kept_heads

SAMPLING_RATE = 16_000  # every checkpoint of these families reads 16 kHz audio
REFERENCE_SECONDS = 1.0  # the clip MAC costs refer to (a spoken command; measure 10 s clips with explicit inputs)
GATE_OUTPUTS = 8  # WavLM's gru_rel_pos_linear: 8 outputs per head


@forward_patch(WavLMAttention, opaque=True)
class SlicedWavLMAttention(WavLMAttention):
    """WavLM's attention with hookable projections at any width: q, k, v and out_proj called as modules, heads and
    head dims read from the weights, each kept head's position bias and gate input selected by its original index,
    the softmax scale the module cached kept."""

    def forward(self, hidden_states, attention_mask=None, position_bias=None, index=0, **kwargs):  # noqa: ANN001
        bsz, t, _ = hidden_states.shape
        if position_bias is None:  # the first layer: the shared table's bias, for every original head
            bias = self.compute_bias(t, t)
            position_bias = bias.unsqueeze(0).repeat(bsz, 1, 1, 1).view(-1, t, t)
        heads = kept_heads(self, self.num_heads)
        idx = torch.as_tensor(heads, device=hidden_states.device)
        gate_in = hidden_states.unflatten(-1, (-1, self.gru_rel_pos_linear.in_features)).transpose(1, 2)[:, idx]
        proj = self.gru_rel_pos_linear(gate_in).unflatten(-1, (2, GATE_OUTPUTS // 2)).sum(-1)
        gate_a, gate_b = torch.sigmoid(proj).chunk(2, dim=-1)
        gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0
        bias = gate * position_bias.view(bsz, -1, t, t)[:, idx]
        q, k, v = (p(hidden_states).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # fmt: skip
        scores = torch.matmul(q * self.scaling, k.transpose(-1, -2)) + bias
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask.ne(1)[:, None, None, :], float("-inf"))
        probs = nn.functional.softmax(scores, dim=-1)
        context = torch.matmul(nn.functional.dropout(probs, self.dropout, self.training), v)
        return self.out_proj(context.transpose(1, 2).flatten(2)), probs, position_bias


def speech_block(layer: nn.Module) -> BlockSpec:
    """A HuBERT / wav2vec 2.0 / WavLM encoder layer: attention.{q,k,v,out}_proj, feed_forward.{intermediate,output}_dense
    (WavLM: its gate constant per head, its gate's cost, the first layer's shared position table)."""
    a = layer.attention
    extra: dict = {}
    if isinstance(a, WavLMAttention):
        extra = {"head_params": ((a, "gru_rel_pos_const", 1),),
                 "head_extra": (1, GATE_OUTPUTS * a.gru_rel_pos_linear.in_features)}  # fmt: skip
    site = AttentionSite(a, a.q_proj, a.k_proj, a.v_proj, a.out_proj, "num_heads", "head_dim", **extra)
    tower = {"attention.rel_attn_embed": a.rel_attn_embed} if hasattr(a, "rel_attn_embed") else {}
    ff = layer.feed_forward
    return BlockSpec(site, ff.intermediate_dense, ff.output_dense, tower_modules=tower)


def backbone(model: nn.Module) -> nn.Module:
    """The bare encoder (HubertModel, Wav2Vec2Model, WavLMModel) of a model with or without a head."""
    for attr in ("hubert", "wav2vec2", "wavlm"):
        if isinstance(getattr(model, attr, None), nn.Module):
            return getattr(model, attr)
    return model


def frames(model: nn.Module, samples: int) -> int:
    """Encoder frames (tokens) the CNN feature encoder makes of ``samples`` audio samples."""
    return int(backbone(model)._get_feat_extract_output_lengths(samples))


@register(
    HubertModel,
    HubertForSequenceClassification,
    Wav2Vec2Model,
    Wav2Vec2ForSequenceClassification,
    WavLMModel,
    WavLMForSequenceClassification,
)
class SpeechAdapter(TransformerAdapter):
    """One audio tower over the CNN front end's frames. A classifier that sums every layer's output with learned
    weights (``use_weighted_layer_sum``) keeps its depth: it offers no layers group."""

    def _samples(self) -> int:
        return round(REFERENCE_SECONDS * SAMPLING_RATE)

    def towers(self, model: nn.Module) -> list[Tower]:
        root = backbone(model)
        cfgs = [root.config] + ([model.config] if model.config is not root.config else [])
        layers = root.encoder.layers
        return [Tower("audio", "audio", layers, speech_block, frames(model, self._samples()), cfgs)]

    def groups(self, model: nn.Module):
        out = super().groups(model)
        if getattr(model.config, "use_weighted_layer_sum", False):
            out = [g for g in out if g.kind.value != "layers"]
        return out

    def reference_inputs(self, model: nn.Module, batch_size: int = 1) -> dict:
        return audio_inputs(batch_size, self._samples())

    def front_end(self, model: nn.Module) -> list[nn.Module]:
        root = backbone(model)
        return [root.feature_extractor, root.feature_projection, root.encoder.pos_conv_embed]
