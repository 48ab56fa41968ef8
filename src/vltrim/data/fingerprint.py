"""Content fingerprints of a run's data, so a resumed or cached run is known to be the same run.

`fingerprint` streams SHA-256 over every item of a map-style dataset, in order: each tensor's dtype, shape and
bytes, each text, each file's bytes (a path in an item), numbers, lists and dicts (keys sorted), plus what
evaluation reads beside the items (``class_texts``, ``captions_by_label``). One changed item, anywhere, changes it.

A DataLoader's dataset is fingerprinted in full like any other: vltrim draws its own seeded batches from the whole
dataset (not the loader's sampler), so every item of it may be drawn. Streaming (iterable) datasets are refused as
train / eval data, so there is nothing read item by item that could not be fingerprinted up front.

`data_changes` compares two records of ``{option: fingerprint}`` and names what changed (train data / eval data /
calibration data), or that a record made by an older vltrim has no fingerprint to compare."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "sha256-items-v1"
EXTRAS = ("class_texts", "captions_by_label")  # what evaluation reads from a dataset beside its items
NAMES = {"train_data": "train data", "eval_data": "eval data", "calib_data": "calibration data"}


def _feed(h: Any, v: Any) -> None:
    """Update ``h`` with a type-tagged, unambiguous encoding of ``v`` (recursing into containers)."""
    if torch.is_tensor(v):
        t = v.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        h.update(f"N{a.dtype}{a.shape}:".encode())
        h.update(a.tobytes() if a.dtype != object else repr(a.tolist()).encode())
    elif isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        h.update(f"S{len(b)}:".encode() + b)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        h.update(f"B{len(b)}:".encode() + b)
    elif isinstance(v, bool) or v is None:
        h.update(f"K{v}".encode())
    elif isinstance(v, (int, float, np.number)):
        h.update(f"F{float(v).hex() if isinstance(v, float) and math.isfinite(v) else repr(v)}".encode())
    elif isinstance(v, os.PathLike):
        _feed_file(h, Path(v))
    elif isinstance(v, Mapping):
        h.update(f"D{len(v)}:".encode())
        for k in sorted(v, key=str):
            _feed(h, str(k))
            _feed(h, v[k])
    elif isinstance(v, (list, tuple)):
        h.update(f"L{len(v)}:".encode())
        for x in v:
            _feed(h, x)
    elif hasattr(v, "tobytes") and hasattr(v, "size") and hasattr(v, "mode"):  # a PIL image
        h.update(f"I{v.mode}{v.size}:".encode())
        h.update(v.tobytes())
    else:  # any other object: its type and repr (an object whose repr is its address cannot be fingerprinted)
        h.update(f"O{type(v).__qualname__}:{repr(v)}".encode())


def _feed_file(h: Any, path: Path) -> None:
    """A file named in an item: its bytes (streamed), or that it is missing."""
    h.update(b"P")
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        h.update(f"unreadable:{path}:{type(e).__name__}".encode())


def fingerprint(data: Any) -> dict[str, Any]:
    """``{"items": n, "sha256": ...}``: SHA-256 streamed over every item of the map-style ``data`` in order (and the
    ``class_texts`` / ``captions_by_label`` evaluation reads); reads each item once."""
    h = hashlib.sha256(FORMAT.encode())
    n = len(data)
    h.update(f"n{n}:".encode())
    for i in range(n):
        _feed(h, data[i])
    for name in EXTRAS:
        extra = getattr(data, name, None)
        if extra is not None:
            _feed(h, name)
            _feed(h, extra)
    return {"items": n, "sha256": h.hexdigest()}


def _items(fp: Any) -> str:
    return f"{fp['items']} items" if isinstance(fp, dict) and "items" in fp else "no data"


def data_change(option: str, then: Any, now: Any) -> str | None:
    """What changed in ``option``'s data between two fingerprints (None: nothing); names the data, e.g.
    'train data (train_data): other content, same size (40 items)'."""
    if then == now:
        return None
    what = f"{NAMES.get(option, option)} ({option})"
    if then is None or now is None:
        return f"{what}: {_items(then)} then, {_items(now)} now"
    if not isinstance(then, dict) or "sha256" not in then:
        return f"{what}: recorded without a content fingerprint (an older vltrim), so it cannot be checked"
    if then.get("items") == now.get("items"):
        return f"{what}: other content, same size ({then.get('items')} items)"
    return f"{what}: other content ({then.get('items')} items then, {now.get('items')} now)"


def data_changes(then: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """`data_change` for every option of ``now`` (train_data, eval_data, calib_data): what changed, in that order."""
    return [c for k in now if (c := data_change(k, then.get(k, _MISSING), now[k])) is not None]


_MISSING = {"items": None}  # an option a record does not have: reported as 'recorded without a fingerprint'
