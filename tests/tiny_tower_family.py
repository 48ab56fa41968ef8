"""A model family defined outside vltrim, in one file: a tiny custom Transformer tower and its adapter.

Importing this module registers it (the adapter with `vltrim.arch.register`, a tiny instance with
`vltrim.zoo.register_tiny`); conftest adds it to the generic tests, so masked == sliced, save / load and the cost
checks run on it as on the built-in families. Nothing else in vltrim names it."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from vltrim.arch import TransformerAdapter, register
from vltrim.structure.slicing import AttentionSpec, BlockSpec, Tower
from vltrim.zoo import register_tiny

NAME = "TinyTowerModel"


class TinyTowerConfig(PretrainedConfig):
    model_type = "vltrim-test-tiny-tower"

    def __init__(self, vocab_size=40, hidden_size=32, num_attention_heads=4, intermediate_size=48,
                 num_hidden_layers=3, max_position_embeddings=12, **kwargs):  # fmt: skip
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_attention_heads, self.num_hidden_layers = num_attention_heads, num_hidden_layers
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)


class TinyAttention(nn.Module):
    """Reshapes with -1 heads and its own ``head_dim``; the softmax scale is fixed at construction."""

    def __init__(self, cfg: TinyTowerConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.query, self.key, self.value, self.out = (nn.Linear(cfg.hidden_size, cfg.hidden_size) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (f(x).view(b, t, -1, self.head_dim).transpose(1, 2) for f in (self.query, self.key, self.value))
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, t, -1))


class TinyBlock(nn.Module):
    def __init__(self, cfg: TinyTowerConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.hidden_size), nn.LayerNorm(cfg.hidden_size)
        self.attention = TinyAttention(cfg)
        self.up, self.down = (
            nn.Linear(cfg.hidden_size, cfg.intermediate_size),
            nn.Linear(cfg.intermediate_size, cfg.hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm2(x))))


class TinyTowerModel(PreTrainedModel):
    config_class = TinyTowerConfig
    base_model_prefix = "tower"

    def __init__(self, config: TinyTowerConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Parameter(torch.zeros(config.max_position_embeddings, config.hidden_size))
        self.blocks = nn.ModuleList(TinyBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.1)
            nn.init.zeros_(module.bias)
        elif isinstance(module, TinyTowerModel):
            nn.init.normal_(module.position, std=0.1)

    def forward(self, input_ids: torch.Tensor, **_) -> BaseModelOutput:
        x = self.embed(input_ids) + self.position[: input_ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return BaseModelOutput(last_hidden_state=self.norm(x))


def block_spec(layer: TinyBlock) -> BlockSpec:
    a = layer.attention
    return BlockSpec(AttentionSpec(a, a.query, a.key, a.value, a.out, "num_heads", "head_dim"), layer.up, layer.down)


@register(TinyTowerModel)
class TinyTowerAdapter(TransformerAdapter):
    """One text tower: where its blocks are, how to read one, and a reference input."""

    def towers(self, model: TinyTowerModel) -> list[Tower]:
        return [Tower("text", "text", model.blocks, block_spec, model.config.max_position_embeddings, [model.config])]

    def reference_inputs(self, model: TinyTowerModel, batch_size: int = 1) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (batch_size, model.config.max_position_embeddings), generator=g)
        return {"input_ids": ids}


register_tiny(NAME, lambda: TinyTowerModel(TinyTowerConfig()))
