"""What a run in a work directory was started with (work_dir/run.json), so a resume can refuse changed options.

A checkpoint only means something for the options that made it: resuming a search with another target,
step count, batch size, seed, data or model silently mixes two runs (a plan that removes 35% while
plan.json says 50%). `check_resume` lists every difference and refuses unless the user overrides. The data is
compared by content (`vltrim.data.fingerprint`: every item), so one changed item of the same-size train, eval or
calibration data is named; a run.json written before data fingerprints existed cannot vouch for its data, which
is a difference too."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vltrim.data.fingerprint import data_changes

RUN_FILE = "run.json"
LEGACY_KEYS = ("train_data_size", "calib_data_size")  # recorded before data fingerprints; the fingerprints replace them


class ResumeMismatchError(ValueError):
    """Resuming a work directory with options, data or a model other than the ones its checkpoints were made with."""


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the class, the names, dtypes, shapes and bytes of every tensor of the state dict."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """A JSON-comparable form of an option value (floats as repr, so 0.1 compares exactly)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'name: checkpoint A, now B' for every option that differs (options missing on one side included)."""
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k, "<not recorded>"), now.get(k, "<not recorded>")
        if a != b:
            out.append(f"{k}: checkpoints made with {a!r}, now {b!r}")
    return out


def _recorded(record: Path) -> dict[str, Any]:
    """run.json as a dict with a "settings" object; ResumeMismatchError naming the file if unreadable or malformed."""
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ResumeMismatchError(f"{record} is unreadable ({type(e).__name__}: {e})") from None
    settings = saved.get("settings") if isinstance(saved, dict) else None
    if not isinstance(settings, dict):
        raise ResumeMismatchError(f'{record} is not a vltrim run record (no "settings" object)')
    return saved


def _differences_from(record: Path, now: dict[str, Any], data: dict[str, Any] | None) -> list[str]:
    """The differences between run.json and ``now`` (options) and ``data`` (fingerprints; None: not compared): the
    data first, each named; an unreadable or malformed run.json is itself one."""
    try:
        saved = _recorded(record)
    except ResumeMismatchError as e:
        return [str(e)]
    settings = {k: v for k, v in saved["settings"].items() if k not in LEGACY_KEYS}
    found = []
    if data is not None:
        then = saved.get("data")
        if isinstance(then, dict):
            found = data_changes(then, data)
        else:
            found = [
                f"{record} records no fingerprint of the data (written by an older vltrim), so it cannot tell "
                "whether the train, eval and calibration data are the ones the checkpoints were made with"
            ]
    return found + differences(settings, now)


def check_resume(
    work_dir: Path, settings: dict[str, Any], resume: bool, override: bool, data: dict[str, Any] | None = None
) -> list[str]:
    """Before a run in ``work_dir``: refuse a resume whose settings differ from run.json, or whose ``data``
    fingerprints (``{"train_data": ..., "eval_data": ..., "calib_data": ...}``, see `vltrim.data.fingerprint`)
    differ from the recorded ones (unless ``override``), then record both. Returns the differences that were
    overridden (empty if none)."""
    now = _plain(settings)
    record = work_dir / RUN_FILE
    diffs: list[str] = []
    if resume and record.exists():
        diffs = _differences_from(record, now, data)
    elif resume and any(work_dir.glob("*/checkpoint-*")):
        diffs = [f"{record} is missing, so the options of the checkpoints in {work_dir} cannot be checked"]
    if diffs and not override:
        raise ResumeMismatchError(
            f"cannot resume {work_dir} with other options or data:\n  "
            + "\n  ".join(diffs)
            + "\nrerun with the original options and data, use another work_dir, or pass override=True "
            "(CLI: --override) to resume anyway"
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(RUN_FILE + ".tmp")
    body: dict[str, Any] = {"format": "vltrim.run", "settings": now}
    if data is not None:
        body["data"] = data
    tmp.write_text(json.dumps({**body, "overridden": diffs}, indent=1))
    tmp.replace(record)
    return diffs
