"""Option checks shared by the API, the training loop and the CLI: every bad value fails before any work,
with a message that names the option and the value it got."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

from torch import nn


def integer(name: str, value: Any, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``; bools, floats with a fraction and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def number(name: str, value: Any, low: float = 0.0, high: float = math.inf, low_open: bool = True) -> float:
    """``value`` as a finite float in (low, high] (or [low, high] with ``low_open=False``); NaN and inf are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    bracket = "(" if low_open else "["
    if not math.isfinite(v) or v < low or (low_open and v == low) or v > high:
        raise ValueError(f"{name} must be a finite number in {bracket}{low:g}, {high:g}], got {value!r}")
    return v


def flag(name: str, value: Any) -> bool:
    """A true/false option; strings such as 'no' or 'false' are refused rather than read as true."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r} ({type(value).__name__})")
    return value


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def usable_model(model: Any, option: str = "model") -> None:
    """A torch module with real (not meta) weights and an adapter; else a clear error before any work."""
    from .adapters import get_adapter

    if not isinstance(model, nn.Module):
        raise TypeError(f"{option} must be a torch nn.Module, got {type(model).__name__}")
    get_adapter(model)
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(f"{option} ({type(model).__name__}) has weights on the meta device (e.g. loaded with "
                         "init_empty_weights or device_map='meta'): load real weights first")


@contextmanager
def kept_modes(*models: nn.Module) -> Iterator[None]:
    """Restore each module's (and submodule's) train/eval mode on exit: our functions switch to eval to
    evaluate or time, and must not leave a caller's model switched."""
    saved = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        yield
    finally:
        for modes in saved:
            for m, training in modes:
                m.training = training
