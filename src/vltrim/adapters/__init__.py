"""Adapters: one file per model family, registered for the model classes they handle."""

from __future__ import annotations

from torch import nn

from .base import TransformerAdapter

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


from . import hf_bert, hf_clip, hf_dual_encoder, hf_siglip, hf_vit  # noqa: E402,F401  (registration)

__all__ = [
    "TransformerAdapter",
    "register",
    "get_adapter",
    "model_class",
    "registered_class",
    "class_name",
    "supported_classes",
    "UnsupportedModelError",
]
