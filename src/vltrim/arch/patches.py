"""Forward patches: a family whose attention reshapes with a width it cached at construction (BLIP's vision attention
splits its fused qkv with ``num_heads`` and ``embed_dim // num_heads``) registers a subclass whose forward reads the
current shapes; slicing a site swaps the module's class to it (`patch_`).

The patch is recorded by the module's class and replayed by everything that rebuilds a pruned model through
`apply_plan`: `vltrim.load` and the saved modeling_vltrim.py (which loads with vltrim). A patch subclass defines only
``forward`` (no new state), so weights and state-dict keys do not change."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_PATCHES: dict[type, type] = {}


def forward_patch(original: type[nn.Module]) -> Callable[[type], type]:
    """Class decorator in a family file: ``@forward_patch(BlipAttention) class SlicedBlipAttention(BlipAttention)``."""

    def deco(patched: type) -> type:
        if not issubclass(patched, original):
            raise TypeError(f"forward patch {patched.__name__} must subclass {original.__name__}")
        extra = set(vars(patched)) - {"forward", "__module__", "__qualname__", "__doc__", "__firstlineno__",
                                      "__static_attributes__"}  # fmt: skip
        if extra:
            raise TypeError(f"forward patch {patched.__name__} may define only forward, not {sorted(extra)}")
        _PATCHES[original] = patched
        return patched

    return deco


def patch_(module: nn.Module) -> bool:
    """Give ``module`` its class's forward patch, if one is registered (True when it has one now)."""
    patched = _PATCHES.get(type(module))
    if patched is not None:
        module.__class__ = patched
    return type(module) in _PATCHES.values()


def patched_modules(model: nn.Module) -> dict[str, str]:
    """Module name -> patch class name of every patched module (what `load` must reproduce)."""
    patches = set(_PATCHES.values())
    return {n: type(m).__name__ for n, m in model.named_modules() if type(m) in patches}
