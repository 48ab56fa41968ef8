"""The method contract and registry: every method is a `Method` with a typed `Config` (its settings and their
defaults) and a `Descriptor` (what it needs and does). The runner, the CLI, chains, study and `vltrim.plan` read
these; none of them looks at a method's signature or probes it for attributes."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from torch import nn

from vltrim.checks import integer, number, text
from vltrim.methods.common import DEFAULT_UNITS, parse_units, prunable_groups
from vltrim.structure.plan import Plan
from vltrim.structure.result import Result
from vltrim.structure.select import ALLOCATION, MAX_RATIO, reachable

#: the budget options (structure.select.Budget and the unit kinds) a method may take in its Config
BUDGET_OPTIONS = ("metric", "align", "units", "allocation", "max_ratio")
#: what the runner passes to a search besides the target and the Config's settings
RUNTIME_INPUTS = ("data", "train_data", "loss_fn", "task", "steps", "lr", "batch_size", "seed", "progress")


@dataclass(frozen=True)
class KD:
    """A method's defaults for compress's retraining losses (the user's kd_* options override them)."""

    hidden: float = 0.0  # every block's hidden states to its teacher block
    embed: float = 0.0  # each tower's final embedding (tasks with tower embeddings)
    attention: float = 0.0  # attention maps per block


@dataclass(frozen=True)
class Descriptor:
    """What a method needs and does, as data."""

    data: Literal["none", "optional", "required"] = "none"  # calibration / training data for its search
    trains: bool = False  # the search trains the model (``run``; its steps count as training)
    step: Literal["keep", "factorize", "sparsify"] = "keep"  # the plan step it makes (order in a chain)
    rounds: bool = False  # prunes in prune-retrain rounds through compress (``round_target``)
    calib_option: str | None = None  # the search input vltrim.plan's ``calib_data`` fills ("data", "train_data")
    runtime: tuple[str, ...] = ()  # which RUNTIME_INPUTS its search (or run) takes
    kd: KD = field(default_factory=KD)
    # settings compress's rounds set themselves (``round_target``): refused from the user when rounds > 1
    round_settings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.runtime) - set(RUNTIME_INPUTS))
        if unknown:
            raise ValueError(f"Descriptor.runtime: {unknown} are not runner inputs ({', '.join(RUNTIME_INPUTS)})")
        if self.calib_option is not None and self.calib_option not in self.runtime:
            raise ValueError(f"Descriptor.calib_option {self.calib_option!r} must be one of its runtime inputs")


C = TypeVar("C", bound="MethodConfig")


@dataclass(frozen=True)
class MethodConfig:
    """A method's own settings (and the budget options it takes) with their defaults; subclassed per method.

    A Config validates itself: building one with a bad value raises the ValueError that names the setting
    (``validate``, run by ``__post_init__``), so compress refuses a bad setting before any work and a search before
    it scores. ``to_dict`` / ``from_dict`` serialise it (a JSON round trip: tuples are written as lists).

    What a plan records: ``plan_settings(**found)``, by default the serialised config with what the search found or
    was given (``found``) over it. A method whose plans record something else (the unit kinds it cut rather than the
    ones asked, its seed and batch size, a count it resolved) overrides ``plan_settings`` and says in its Config's
    docstring what is recorded; saved plans stay as they were."""

    def __post_init__(self) -> None:
        check_budget_options({k: getattr(self, k) for k in self.budget()})
        self.validate()

    def validate(self) -> None:
        """Refuse a bad value of a setting (a ValueError naming it); nothing to refuse by default."""

    def to_dict(self) -> dict[str, Any]:
        """Every setting by name, JSON-ready (tuples as lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """The Config ``to_dict`` wrote (validated); an unknown key is refused, a missing one takes its default."""
        unknown = sorted(set(d) - cls.names())
        if unknown:
            raise ValueError(f"{unknown} are not settings of {cls.__name__}; it takes {', '.join(sorted(cls.names()))}")
        defaults = cls.defaults()
        return cls(
            **{k: tuple(v) if isinstance(defaults[k], tuple) and isinstance(v, list) else v for k, v in d.items()}
        )

    @classmethod
    def pick(cls: type[C], values: Mapping[str, Any]) -> C:
        """The Config of the settings among ``values`` (e.g. a search's arguments), validated."""
        return cls(**{k: values[k] for k in cls.names() if k in values})

    def plan_settings(self, **found: Any) -> dict[str, Any]:
        """The settings a plan of this config records: the serialised config, ``found`` over it (see the class)."""
        return {**self.to_dict(), **found}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting's default, by name."""
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            for f in dataclasses.fields(cls)
        }

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def settings(cls) -> frozenset[str]:
        """The method's own settings: its Config without the budget options."""
        return cls.names() - set(BUDGET_OPTIONS)

    @classmethod
    def budget(cls) -> tuple[str, ...]:
        """The budget options the method takes, in BUDGET_OPTIONS order."""
        return tuple(k for k in BUDGET_OPTIONS if k in cls.names())


@dataclass(frozen=True)
class BudgetConfig(MethodConfig):
    """The budget options of a method that cuts units of groups (a subclass may redefine a default, e.g. units)."""

    metric: str = "params"
    align: int = 8
    units: str | tuple[str, ...] = DEFAULT_UNITS
    allocation: str = ALLOCATION
    max_ratio: float = MAX_RATIO


def check_budget_options(values: Mapping[str, Any]) -> None:
    """The budget options a Config holds (metric, align, units, allocation, max_ratio; see `BUDGET_OPTIONS`), each
    refused with a ValueError naming it when its type or value is wrong (align 2.5, '8' or None; units 5), before a
    search turns it into a raw Python error."""
    if "metric" in values:
        text("metric", values["metric"])
    if "align" in values:
        align = values["align"]
        if not isinstance(align, numbers.Integral) or isinstance(align, bool):  # 8.0 too: a search slices by it
            raise ValueError(f"align must be an integer >= 1 (e.g. 8), got {align!r} ({type(align).__name__})")
        integer("align", align, 1)
    if "units" in values:
        units = values["units"]
        if not isinstance(units, (str, list, tuple)) or not all(isinstance(u, str) for u in units):
            raise ValueError(
                f"units must be a string like 'head_dims,neurons' (or a list of unit names), got {units!r} "
                f"({type(units).__name__})"
            )
        parse_units(units)
    if "allocation" in values:
        text("allocation", values["allocation"])
    if "max_ratio" in values:
        number("max_ratio", values["max_ratio"], high=1.0)


SearchResult = Result  # the name a search's result had first


class Method:
    """A compression method: ``search`` returns a Plan and never edits the model. Subclasses set ``name``,
    ``Config`` and ``descriptor``; training methods (``descriptor.trains``) implement ``run``, round-based ones
    ``round_target``."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    descriptor: ClassVar[Descriptor] = Descriptor()

    def search(self, model: nn.Module, target: float, **settings: Any) -> Plan:
        raise NotImplementedError

    def search_result(self, model: nn.Module, target: float, **settings: Any) -> Result:
        """The plan with the search's artefacts (none by default)."""
        return Result(self.search(model, target, **settings))

    def reach(self, model: nn.Module, **settings: Any) -> float | None:
        """The largest ``target`` this method can meet on ``model`` with these settings (a share of the prunable
        metric of its unit kinds, given align and max_ratio), or None where its target means something else (distill:
        layers; lowrank, magnitude: their own shares)."""
        if self.descriptor.step != "keep" or not issubclass(self.Config, BudgetConfig):
            return None
        c = self.Config.pick(settings)
        return reachable(prunable_groups(model, c.units), c.metric, c.align, c.max_ratio)

    def task_settings(self, task: Any, loss: Any) -> dict[str, Any]:
        """What vltrim.plan's ``task`` gives the search: ``loss`` (the task's loss as compress derives it, see
        `vltrim.tasks.loss.search_loss`), or the task's name; nothing by default."""
        return {}

    def round_target(self, *args: Any, **settings: Any) -> Any:
        raise NotImplementedError(f"{self.name} does not prune in rounds")


class TrainingSearch(Method):
    """A method whose search trains a copy of the model on the task loss (``run``; its steps count as training):
    vltrim.plan's ``task`` gives it the loss, and its plan is ``run``'s."""

    descriptor: ClassVar[Descriptor] = Descriptor(
        data="required",
        trains=True,
        calib_option="train_data",
        runtime=("train_data", "loss_fn", "steps", "lr", "batch_size", "seed", "progress"),
    )

    def task_settings(self, task: Any, loss: Any) -> dict[str, Any]:
        """What vltrim.plan's ``task`` gives the search: the task's loss, trained on (as the search's ``loss_fn``)."""
        return {"loss_fn": loss}

    def search(self, model: nn.Module, target: float, **settings: Any) -> Plan:
        return self.run(model, target, **settings).plan

    def run(self, model: nn.Module, target: float, **settings: Any) -> Result:
        raise NotImplementedError


_METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: register a method under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register takes a Method subclass, got {cls!r}")
    _METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def available() -> list[str]:
    return sorted(_METHODS)
