"""The method registry: each method file registers its method by name."""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from vltrim.structure.plan import Plan


class Method(Protocol):
    name: str

    def search(self, model: nn.Module, target: float, **settings: Any) -> Plan: ...


_METHODS: dict[str, Method] = {}


def register(cls):
    """Class decorator: register a method under its ``name``."""
    _METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def available() -> list[str]:
    return sorted(_METHODS)
