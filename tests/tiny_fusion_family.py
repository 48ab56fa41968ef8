"""A fusion model defined in one test file, built to exercise the attention-site spec the next families need: a
vision tower whose attention is one fused qkv Linear that reshapes with widths it cached (BLIP's vision attention
does: it needs a forward patch once sliced), and a text tower whose blocks hold a grouped-query self-attention (4
query heads over 2 key/value heads) and a cross-attention to the image tokens (keys and values read the vision
width; its groups join the 'fusion' modality).

Importing this module registers it (adapter, forward patch, tiny instance); conftest adds it to the generic tests."""

from __future__ import annotations

import functools

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vltrim.arch import TransformerAdapter, forward_patch, register
from vltrim.arch.inputs import image_inputs, text_inputs
from vltrim.structure.slicing import AttentionSite, BlockSpec, Tower
from vltrim.zoo import register_tiny

NAME = "TinyFusionModel"


class TinyFusionConfig(PretrainedConfig):
    model_type = "vltrim-test-tiny-fusion"

    def __init__(self, vocab_size=40, text_hidden=32, text_heads=4, text_kv_heads=2, vision_hidden=24,
                 vision_heads=3, intermediate_size=40, vision_layers=2, text_layers=2, max_position_embeddings=10,
                 image_size=8, patch_size=4, num_channels=3, **kwargs):  # fmt: skip
        self.vocab_size, self.text_hidden, self.text_heads, self.text_kv_heads = (
            vocab_size, text_hidden, text_heads, text_kv_heads,
        )  # fmt: skip
        self.vision_hidden, self.vision_heads, self.intermediate_size = vision_hidden, vision_heads, intermediate_size
        self.vision_layers, self.text_layers, self.max_position_embeddings = (
            vision_layers, text_layers, max_position_embeddings,
        )  # fmt: skip
        self.image_size, self.patch_size, self.num_channels = image_size, patch_size, num_channels
        super().__init__(**kwargs)


class FusedAttention(nn.Module):
    """BLIP-style: one qkv Linear, reshaped with the cached ``num_heads`` and ``embed_dim // num_heads``."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = hidden, heads, hidden // heads
        self.scale = self.head_dim**-0.5
        self.qkv, self.projection = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1) @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, embed_dim = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, embed_dim // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.projection(self._attend(q, k, v).transpose(1, 2).reshape(b, t, self.embed_dim))


@forward_patch(FusedAttention)
class SlicedFusedAttention(FusedAttention):
    """The same computation at the sliced width: heads and head dims read from the module, not the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.projection(self._attend(q, k, v).transpose(1, 2).reshape(b, t, -1))


class SplitAttention(nn.Module):
    """Separate q, k, v; grouped-query (``kv_heads`` < ``heads``) or cross (keys / values from ``kv_hidden`` states)."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, kv_hidden: int | None = None):
        super().__init__()
        kv_hidden = kv_hidden or hidden
        self.num_heads, self.num_kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(hidden, heads * self.head_dim)
        self.k, self.v = (nn.Linear(kv_hidden, kv_heads * self.head_dim) for _ in range(2))
        self.o = nn.Linear(heads * self.head_dim, hidden)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, t, _ = x.shape
        q = self.q(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k, v = (f(context).view(b, context.shape[1], -1, self.head_dim).transpose(1, 2) for f in (self.k, self.v))
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.o((attn @ v).transpose(1, 2).reshape(b, t, -1))


def _ffn(hidden: int, inner: int) -> nn.ModuleDict:
    return nn.ModuleDict({"up": nn.Linear(hidden, inner), "down": nn.Linear(inner, hidden)})


class VisionBlock(nn.Module):
    def __init__(self, cfg: TinyFusionConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.vision_hidden), nn.LayerNorm(cfg.vision_hidden)
        self.attention = FusedAttention(cfg.vision_hidden, cfg.vision_heads)
        self.ffn = _ffn(cfg.vision_hidden, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.ffn["down"](torch.nn.functional.gelu(self.ffn["up"](self.norm2(x))))


class TextBlock(nn.Module):
    def __init__(self, cfg: TinyFusionConfig):
        super().__init__()
        h = cfg.text_hidden
        self.norms = nn.ModuleList(nn.LayerNorm(h) for _ in range(3))
        self.self_attention = SplitAttention(h, cfg.text_heads, cfg.text_kv_heads)
        self.cross_attention = SplitAttention(h, cfg.text_heads, cfg.text_heads, kv_hidden=cfg.vision_hidden)
        self.ffn = _ffn(h, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention(self.norms[0](x))
        x = x + self.cross_attention(self.norms[1](x), image)
        return x + self.ffn["down"](torch.nn.functional.gelu(self.ffn["up"](self.norms[2](x))))


class TinyFusionModel(PreTrainedModel):
    config_class = TinyFusionConfig
    base_model_prefix = "fusion"

    def __init__(self, config: TinyFusionConfig):
        super().__init__(config)
        c = config
        self.patches = nn.Conv2d(c.num_channels, c.vision_hidden, c.patch_size, stride=c.patch_size)
        self.vision_blocks = nn.ModuleList(VisionBlock(c) for _ in range(c.vision_layers))
        self.embed = nn.Embedding(c.vocab_size, c.text_hidden)
        self.position = nn.Parameter(torch.zeros(c.max_position_embeddings, c.text_hidden))
        self.text_blocks = nn.ModuleList(TextBlock(c) for _ in range(c.text_layers))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.2)
            nn.init.normal_(module.bias, std=0.1)
        elif isinstance(module, TinyFusionModel):
            nn.init.normal_(module.position, std=0.1)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, **_) -> BaseModelOutputWithPooling:
        image = self.patches(pixel_values).flatten(2).transpose(1, 2)
        for block in self.vision_blocks:
            image = block(image)
        x = self.embed(input_ids) + self.position[: input_ids.shape[1]]
        for block in self.text_blocks:
            x = block(x, image)
        return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=image.mean(1))


def vision_block(layer: VisionBlock) -> BlockSpec:
    a = layer.attention
    site = AttentionSite.fused(a, a.qkv, a.projection, "num_heads", "head_dim")
    return BlockSpec([site], layer.ffn["up"], layer.ffn["down"])


def text_block(layer: TextBlock, image_tokens: int) -> BlockSpec:
    s, c = layer.self_attention, layer.cross_attention
    sites = [
        AttentionSite(s, s.q, s.k, s.v, s.o, "num_heads", "head_dim", kv_heads_attr="num_kv_heads"),
        AttentionSite(
            c,
            c.q,
            c.k,
            c.v,
            c.o,
            "num_heads",
            "head_dim",
            kv_heads_attr="num_kv_heads",
            name="crossattn",
            kv_tokens=image_tokens,
            modality="fusion",
        ),  # fmt: skip
    ]
    return BlockSpec(sites, layer.ffn["up"], layer.ffn["down"])


@register(TinyFusionModel)
class TinyFusionAdapter(TransformerAdapter):
    """A vision tower and a text tower whose blocks cross-attend to the image tokens."""

    def towers(self, model: TinyFusionModel) -> list[Tower]:
        c = model.config
        image_tokens = (c.image_size // c.patch_size) ** 2
        return [
            Tower("vision", "vision", model.vision_blocks, vision_block, image_tokens),
            Tower(
                "text",
                "text",
                model.text_blocks,
                functools.partial(text_block, image_tokens=image_tokens),
                c.max_position_embeddings,
            ),  # fmt: skip
        ]

    def reference_inputs(self, model: TinyFusionModel, batch_size: int = 1) -> dict[str, torch.Tensor]:
        c = model.config
        ids = text_inputs(c, batch_size, c.max_position_embeddings)["input_ids"]
        return {"input_ids": ids, **image_inputs(c, batch_size)}


register_tiny(NAME, lambda: TinyFusionModel(TinyFusionConfig()))
