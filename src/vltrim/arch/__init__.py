"""Model structure: adapters (one family file each), their registry, masks and applying a plan.

Importing this package registers every built-in family."""

from vltrim.arch import families  # noqa: F401  (registration)
from vltrim.arch.base import TransformerAdapter
from vltrim.arch.patches import forward_patch
from vltrim.arch.registry import (
    UnsupportedModelError,
    class_name,
    get_adapter,
    model_class,
    register,
    registered_class,
    supported_classes,
)

__all__ = [
    "TransformerAdapter",
    "forward_patch",
    "register",
    "get_adapter",
    "model_class",
    "registered_class",
    "class_name",
    "supported_classes",
    "UnsupportedModelError",
]
