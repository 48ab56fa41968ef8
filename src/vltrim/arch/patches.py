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

import weakref
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
    """Give ``module`` its class's forward patch for good, if one is registered (True when it has one now); a mask
    holding the patch (`hookable`) no longer takes it away when removed."""
    patched = _PATCHES.get(type(module))
    if patched is not None:
        module.__class__ = patched
    _MASK_USERS.pop(module, None)
    return type(module) in _PATCHES.values()


def patched_modules(model: nn.Module) -> dict[str, str]:
    """Module name -> patch class name of every patched module (what `load` must reproduce)."""
    patches = set(_PATCHES.values())
    return {n: type(m).__name__ for n, m in model.named_modules() if type(m) in patches}


_MASK_USERS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()  # masks holding a patch


class _Unpatch:
    """A mask's hold on its module's patch (a hook-like handle): the last ``remove()`` puts the original class back."""

    def __init__(self, module: nn.Module, original: type) -> None:
        self.module, self.original, self.held = module, original, True

    def remove(self) -> None:
        if not self.held:
            return
        self.held = False
        if self.module not in _MASK_USERS:  # patched for good meanwhile (sliced or factorised in place)
            return
        _MASK_USERS[self.module] -= 1
        if self.module in _MASK_USERS and _MASK_USERS[self.module] == 0:
            del _MASK_USERS[self.module]
            self.module.__class__ = self.original


def patch_opaque_(module: nn.Module) -> None:
    """Give ``module`` its patch when its class's own forward calls none of its Linears (one of them was replaced)."""
    if type(module) in _OPAQUE or module in _MASK_USERS:
        patch_(module)


def hookable(module: nn.Module) -> _Unpatch | None:
    """Give ``module`` its patch while a mask is attached when its class's forward calls none of its Linears
    (`forward_patch` ``opaque``); the class comes back when the last mask holding the patch is removed. None when
    nothing needs holding (no patch needed, or patched for good by slicing)."""
    if module in _MASK_USERS:
        _MASK_USERS[module] += 1
        return _Unpatch(module, _original(type(module)))
    if type(module) not in _OPAQUE:
        return None
    original = type(module)
    module.__class__ = _PATCHES[original]
    _MASK_USERS[module] = 1
    return _Unpatch(module, original)


def _original(patched: type) -> type:
    return next(o for o, p in _PATCHES.items() if p is patched)
