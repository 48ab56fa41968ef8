"""Switching transformers attention to its eager path for a while: the flop counter does not see CPU SDPA kernels,
and attention distillation needs the probabilities that only the eager path returns."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


def _configs(modules: Iterable[nn.Module]) -> dict[int, Any]:
    """The transformers configs of ``modules`` and their sub-configs (vision / text), each once."""
    out: dict[int, Any] = {}
    todo = [getattr(m, "config", None) for m in modules]
    while todo:
        c = todo.pop()
        if c is None or id(c) in out or not hasattr(c, "_attn_implementation_internal"):
            continue
        out[id(c)] = c
        todo += [getattr(c, k, None) for k in getattr(c, "sub_configs", {})]
    return out


@contextmanager
def eager_attention(modules: Iterable[nn.Module]) -> Iterator[int]:
    """Run ``modules`` (a model's ``modules()``, or some attention modules) with eager attention: every config they
    read is set to 'eager' and put back exactly on exit, so the caller's model is not changed for good (the towers'
    mask construction reads the same configs, so masks follow). Yields how many configs were switched."""
    configs = _configs(modules)
    before = {k: c._attn_implementation_internal for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation_internal = "eager"
        yield len(configs)
    finally:
        for k, c in configs.items():
            c._attn_implementation_internal = before[k]
