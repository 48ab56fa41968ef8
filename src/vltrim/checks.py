"""Option checks shared by the API, the training loop and the CLI: every bad value fails before any work,
with a message that names the option and the value it got."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn


def integer(name: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum]; numpy integers and whole floats are taken, bools, floats with a
    fraction and strings are refused."""
    if isinstance(value, bool) or _is_np_bool(value) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {bounds}, got {value}")
    return value


def number(name: str, value: Any, low: float = 0.0, high: float = math.inf, low_open: bool = True) -> float:
    """``value`` as a finite float in (low, high] (or [low, high] with ``low_open=False``); numpy numbers are taken,
    bools, strings, NaN and inf are refused."""
    if isinstance(value, bool) or _is_np_bool(value) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    bracket = "(" if low_open else "["
    if not math.isfinite(v) or v < low or (low_open and v == low) or v > high:
        raise ValueError(f"{name} must be a finite number in {bracket}{low:g}, {high:g}], got {value!r}")
    return v


def _is_np_bool(value: Any) -> bool:
    return type(value).__name__ == "bool_" and type(value).__module__ == "numpy"


def text(name: str, value: Any) -> str:
    """A string option (a name, a list of names separated by commas); anything else is refused naming it."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r} ({type(value).__name__})")
    return value


def path(name: str, value: Any) -> Path:
    """A file-system path option (str or os.PathLike, not empty) as a Path."""
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        raise TypeError(
            f"{name} must be a path (a non-empty str or pathlib.Path), got {value!r} ({type(value).__name__})"
        )
    return Path(value)


def flag(name: str, value: Any) -> bool:
    """A true/false option; strings such as 'no' or 'false' are refused rather than read as true."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r} ({type(value).__name__})")
    return value


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """One of ``allowed`` (strings); anything else, unhashable values included, is refused naming the option."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def device(name: str, value: Any) -> torch.device:
    """A torch device that exists here ('cpu', 'cuda', 'cuda:1', a torch.device); else a ValueError naming the option."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError) as e:
        why = (str(e).splitlines() or [""])[0][:120]
        raise ValueError(f"{name} must be a torch device such as 'cpu' or 'cuda', got {value!r} ({why})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} is {value!r}, but this torch sees no CUDA GPU; use 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{name} is {value!r}, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


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
