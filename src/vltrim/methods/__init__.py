"""Compression methods: one file each, registered by name. A method returns a Plan; it never edits the model."""

from vltrim.methods import distill, heads, l1, lowrank, magnitude, mope, random, taylor, upop  # noqa: F401  (registration)
from vltrim.methods.registry import (
    _METHODS,
    BUDGET_OPTIONS,
    KD,
    Descriptor,
    Method,
    MethodConfig,
    Result,
    SearchResult,
    available,
    get_method,
    register,
)

__all__ = [
    "BUDGET_OPTIONS",
    "KD",
    "Descriptor",
    "Method",
    "MethodConfig",
    "Result",
    "SearchResult",
    "available",
    "get_method",
    "register",
    "_METHODS",
]
