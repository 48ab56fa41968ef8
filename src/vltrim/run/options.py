"""compress's options, declared once: `CompressOptions` has one field per parameter of `vltrim.compress` (same
names, defaults and order; a test keeps the two equal), each field's metadata giving its scope:

- ``shared``: an option of the whole run, and of the whole chain (model, data, task, seed, work_dir, counts, flags);
- ``stage``: may differ per chain stage (target, budget, steps, rates, loss weights: `vltrim.run.chain.STAGE_OPTIONS`);
- ``method``: a setting of one method (method_settings, depth_share): per stage only in a chain;
- ``chain``: ``method`` itself, one method's name or the chain's stages (a stage's method is its name).

Whoever needs compress's option names (the chain's stage options, the study's ``compress_options``, the command
line's ``--then`` options) reads them here instead of listing them again or reading compress's signature."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from vltrim.structure.plan import Plan

Stage = (
    str | tuple[str, dict[str, Any]]
)  # a chain entry: a method name, or (name, its own compress options and settings)

SCOPES = ("shared", "stage", "method", "chain")


def _option(scope: str, default: Any = MISSING) -> Any:
    """A field of `CompressOptions` in ``scope`` (one of `SCOPES`)."""
    assert scope in SCOPES, scope
    return field(default=default, metadata={"scope": scope})


@dataclass(frozen=True)
class CompressOptions:
    """Every option of `vltrim.compress`, in its order, with its default (``model`` has none) and scope."""

    model: nn.Module = _option("shared")
    method: str | Sequence[Stage] = _option("chain", "upop")
    target: float = _option("stage", 0.5)
    task: str | None = _option("shared", None)  # None: the first task that fits the model
    train_data: Any = _option("shared", None)
    eval_data: Any = _option("shared", None)
    calib_data: Any = _option("shared", None)
    search_steps: int = _option("stage", 300)
    retrain_steps: int = _option("stage", 300)
    kd_weight: float = _option("stage", 1.0)
    kd_hidden: float | None = _option("stage", None)
    kd_embed: float | None = _option("stage", None)
    kd_attention: float | None = _option("stage", None)
    task_weight: float = _option("stage", 1.0)
    lr: float = _option("stage", 1e-4)
    retrain_lr: float = _option("stage", 2e-4)
    batch_size: int | None = _option("shared", None)
    metric: str = _option("stage", "params")
    align: int = _option("stage", 8)
    units: str | None = _option("stage", None)
    allocation: str | None = _option("stage", None)
    max_ratio: float | None = _option("stage", None)
    depth_share: float | None = _option("method", None)
    retrain_schedule: str = _option("stage", "cosine")
    eval_every: int = _option("shared", 0)
    latency_batch: int = _option("shared", 8)
    progress: bool = _option("shared", True)
    seed: int = _option("shared", 0)
    grad_accum: int = _option("shared", 1)
    mixed_precision: str = _option("shared", "no")
    work_dir: str | Path | None = _option("shared", None)
    checkpoint_every: int = _option("shared", 0)
    resume: bool = _option("shared", False)
    override: bool = _option("shared", False)
    plan: Plan | None = _option("shared", None)
    method_settings: dict[str, Any] | None = _option("method", None)
    evaluate_before: bool = _option("shared", True)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option's name, in compress's order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every option that has a default (all but ``model``): its default, in compress's order."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    @classmethod
    def of_scope(cls, *scopes: str) -> tuple[str, ...]:
        """The names of the options in any of ``scopes`` (see `SCOPES`), in compress's order."""
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown:
            raise ValueError(f"unknown scope {unknown[0]!r}; scopes: {', '.join(SCOPES)}")
        return tuple(f.name for f in fields(cls) if f.metadata["scope"] in scopes)

    @classmethod
    def scope(cls, name: str) -> str:
        """The scope of option ``name`` (KeyError when compress has no such option)."""
        return {f.name: f.metadata["scope"] for f in fields(cls)}[name]

    def kwargs(self) -> dict[str, Any]:
        """Every option as compress's keyword arguments, in its order (the values themselves, not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
