"""The family registry: each family file registers its adapter for the model classes it handles."""

from __future__ import annotations

from typing import Any

from torch import nn

from vltrim.arch.base import TransformerAdapter

_REGISTRY: dict[type, TransformerAdapter] = {}


def register(*classes: type):
    """Class decorator: register an adapter for these model classes (subclasses match too)."""

    def deco(cls: type[TransformerAdapter]) -> type[TransformerAdapter]:
        inst = cls()
        inst.model_classes = classes
        for c in classes:
            _REGISTRY[c] = inst
        return cls

    return deco


class UnsupportedModelError(TypeError):
    """The model's class has no adapter."""


def supported_classes() -> list[str]:
    return sorted(c.__name__ for c in _REGISTRY)


def get_adapter(model: nn.Module) -> TransformerAdapter:
    """The adapter for ``model`` (looked up along its class hierarchy), or a clear error."""
    for klass in type(model).__mro__:
        if klass in _REGISTRY:
            return _REGISTRY[klass]
    raise UnsupportedModelError(
        f"vltrim has no adapter for {type(model).__name__}. Supported classes: {', '.join(supported_classes())}"
    )


def registered_class(model: nn.Module) -> type:
    """The registered transformers class ``model`` is (an instance of a subclass, e.g. the class of a directory's
    modeling_vltrim.py, counts as its registered base): plans and saved directories name this class."""
    for klass in type(model).__mro__:
        if klass in _REGISTRY:
            return klass
    get_adapter(model)  # raises UnsupportedModelError with the supported classes
    raise AssertionError("unreachable")


def class_name(model: nn.Module) -> str:
    """Name of ``registered_class(model)``, the ``model_class`` a plan for it records."""
    return registered_class(model).__name__


def model_class(name: str) -> type:
    """The registered model class called ``name`` (used to rebuild saved models)."""
    for c in _REGISTRY:
        if c.__name__ == name:
            return c
    raise UnsupportedModelError(f"unknown model class {name!r}. Supported classes: {', '.join(supported_classes())}")


def usable_model(model: Any, option: str = "model") -> None:
    """A torch module with real (not meta) weights and an adapter; else a clear error before any work."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{option} must be a torch nn.Module, got {type(model).__name__}")
    get_adapter(model)
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(
            f"{option} ({type(model).__name__}) has weights on the meta device (e.g. loaded with "
            "init_empty_weights or device_map='meta'): load real weights first"
        )
