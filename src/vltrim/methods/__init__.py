"""Compression methods: one file each, registered by name. A method returns a Plan; it never edits the model."""

from vltrim.methods import (  # noqa: F401  (registration)
    distill,
    heads,
    l1,
    lowrank,
    magnitude,
    modal_adaptive,
    mope,
    random,
    taylor,
    upop,
)
from vltrim.methods.registry import (
    _METHODS,
    BUDGET_OPTIONS,
    KD,
    Descriptor,
    Method,
    MethodConfig,
    Result,
    SearchResult,
    TrainingSearch,
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
    "TrainingSearch",
    "available",
    "get_method",
    "register",
    "_METHODS",
]
