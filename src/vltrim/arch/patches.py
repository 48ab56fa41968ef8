"""Forward patches: a family whose attention reshapes with a width it cached at construction (BLIP's vision attention
splits its fused qkv with ``num_heads`` and ``embed_dim // num_heads``) registers a subclass whose forward reads the
current shapes; slicing a site swaps the module's class to it (`patch_`).

A class whose original forward does not call its Linears (WavLM's attention hands their weights to
``F.multi_head_attention_forward``) registers its patch with ``opaque=True``: masks of its heads and head dims run it
through the patch for as long as they are attached (`hookable`), and a factorised Linear of it gets the patch for good
(`patch_opaque_`).

The patch is recorded by the module's class and replayed by everything that rebuilds a pruned model through
`apply_plan`: `vltrim.load` and the saved modeling_vltrim.py (which loads with vltrim). A patch subclass defines only
``forward`` (no new state), so weights and state-dict keys do not change."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_PATCHES: dict[type, type] = {}
_OPAQUE: set[type] = set()  # originals whose forward calls none of their Linears (masks and factors need the patch)


def forward_patch(original: type[nn.Module], opaque: bool = False) -> Callable[[type], type]:
    """Class decorator in a family file: ``@forward_patch(BlipAttention) class SlicedBlipAttention(BlipAttention)``;
    ``opaque``: the original forward calls none of its Linears (see the module docstring)."""

    def deco(patched: type) -> type:
        if not issubclass(patched, original):
            raise TypeError(f"forward patch {patched.__name__} must subclass {original.__name__}")
        extra = set(vars(patched)) - {"forward", "__module__", "__qualname__", "__doc__", "__firstlineno__",
                                      "__static_attributes__"}  # fmt: skip
        if extra:
            raise TypeError(f"forward patch {patched.__name__} may define only forward, not {sorted(extra)}")
        _PATCHES[original] = patched
        if opaque:
            _OPAQUE.add(original)
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


class _Unpatch:
    """Puts a module's original class back (a hook-like handle: ``remove()``)."""

    def __init__(self, module: nn.Module, original: type) -> None:
        self.module, self.original = module, original

    def remove(self) -> None:
        self.module.__class__ = self.original


def patch_opaque_(module: nn.Module) -> None:
    """Give ``module`` its patch when its class's own forward calls none of its Linears (one of them was replaced)."""
    if type(module) in _OPAQUE:
        patch_(module)


def hookable(module: nn.Module) -> _Unpatch | None:
    """Give ``module`` its patch while a mask is attached when its class's forward calls none of its Linears
    (`forward_patch` ``opaque``); the returned handle's ``remove()`` restores the class. None when nothing changed."""
    original = type(module)
    if original not in _OPAQUE:
        return None
    patch_(module)
    return _Unpatch(module, original)
