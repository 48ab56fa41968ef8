"""Models by name or by directory: "reference" (the built-in CLIP teacher), "tiny:<Class>" (a tiny random model of
a supported class) or a directory vltrim saved (``io.load``); a path that exists always wins over a name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vltrim import io
from vltrim.checks import device as checked_device
from vltrim.reference import load_reference
from vltrim.zoo import tiny_model


def load(path: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> nn.Module:
    """``io.load`` (a saved directory, verified and bit-exact), or where no such path exists, ``"reference"`` (the
    built-in CLIP teacher) and ``"tiny:<Class>"`` (a tiny random model of that class), as the CLI's MODEL argument."""
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be True or False, got {verify!r}")
    named = named_model(path, device)
    if named is not None:
        return named
    return io.load(path, device=device, verify=verify)


def is_named_model(name: Any) -> bool:
    """Whether ``name`` is 'reference' or 'tiny:<Class>' and no path of that name exists (a path always wins)."""
    return isinstance(name, str) and (name == "reference" or name.startswith("tiny:")) and not Path(name).exists()


def named_model(name: Any, device: str | torch.device = "cpu") -> nn.Module | None:
    """'reference' (the built-in CLIP teacher) or 'tiny:<Class>' (a tiny random model) when ``is_named_model``;
    None for anything else."""
    if not is_named_model(name):
        return None
    device = checked_device("device", device)
    if name == "reference":
        return load_reference().to(device)
    return tiny_model(name[len("tiny:") :]).to(device)
