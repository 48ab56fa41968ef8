"""Public entry points: inspect a model, make a plan (apply_plan, plans_of and base_config live in arch.apply)."""

from __future__ import annotations

from typing import Any

from torch import nn

from vltrim.arch.apply import BASE_CONFIG_ATTR, PLANS_ATTR, apply_plan, base_config, masked, plans_of
from vltrim.arch.registry import get_adapter, usable_model
from vltrim.checks import number, text
from vltrim.data.calibration import calibration_data
from vltrim.methods import Method, available, get_method
from vltrim.methods.registry import check_budget_options
from vltrim.structure.groups import Group
from vltrim.structure.plan import Plan
from vltrim.tasks import TASKS, Task, default_task, get_task
from vltrim.tasks.loss import search_loss

__all__ = ["BASE_CONFIG_ATTR", "PLANS_ATTR", "apply_plan", "base_config", "inspect", "masked", "plan", "plans_of"]


def inspect(model: nn.Module) -> list[Group]:
    """Prunable groups of ``model``: name, kind, modality, size and exact per-unit costs."""
    return get_adapter(model).groups(model)


def plan(
    model: nn.Module,
    method: str = "l1",
    target: float = 0.5,
    calib_data: Any = None,
    task: str | None = None,
    **settings: Any,
) -> Plan:
    """Run a search method and return its Plan (the model is not changed).

    Data-driven methods (heads, mope, taylor, upop) take ``calib_data`` (anything compress takes as data: a map-style
    dataset of dict items, a list of dicts, a DataLoader, a Hugging Face Dataset) and ``task`` (a task name, e.g.
    'retrieval', 'classification', 'sentence-embedding', or BLIP's 'itm-retrieval', 'vqa', 'captioning'; None: the
    first task that fits ``model``, as the CLI picks it, and an error naming ``task`` when none does). The task gives the method what it scores with: the task's
    loss (heads, taylor: scored on calib_data; upop: trained on calib_data) or its metric (mope). The loss is the one
    compress searches with (`vltrim.tasks.loss.search_loss`): the task loss, the task's distillation from ``model``
    itself (the unpruned model) and the method's default distillation weights, so the plan is the one compress's
    search makes with the same method, task and data.
    The methods' own spellings still work: ``data=`` + ``loss_fn=`` (heads, taylor), ``train_data=`` + ``loss_fn=``
    (upop), ``data=`` + ``task=`` (mope); one of them together with the option that gives the same input
    (calib_data with data= / train_data=, task with loss_fn=) is refused.
    Data-free methods (l1, random, magnitude, lowrank, distill) refuse ``calib_data`` and ``task`` (lowrank's
    input-weighted SVD takes its data as ``data=``). A setting the method does not take is a TypeError naming
    the method and the setting."""
    usable_model(model)
    m = get_method(text("method", method))
    target = number("target", target, high=1.0)
    check_budget_options({k: settings[k] for k in m.Config.budget() if k in settings})
    if calib_data is not None or task is not None:
        settings = {**settings, **_calibration(model, method, m, calib_data, task, settings)}
    try:
        return m.search(model, target=target, **settings)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            name = str(e).split("unexpected keyword argument")[-1].strip()
            raise TypeError(f"method {method!r} got an unknown setting {name}: {e}") from None
        raise


def _calibration(
    model: nn.Module, method: str, m: Method, calib_data: Any, task: str | None, settings: dict[str, Any]
) -> dict[str, Any]:
    """The search settings that ``calib_data`` and ``task`` give method ``m`` (see `plan`); refused for a method
    that does not score on calibration data, and where a setting of ``settings`` gives the same input."""
    option = m.descriptor.calib_option
    if option is None:
        takers = [n for n in available() if get_method(n).descriptor.calib_option is not None]
        given = " and ".join(k for k, v in (("calib_data", calib_data), ("task", task)) if v is not None)
        raise ValueError(
            f"method {method!r} takes no calib_data or task (got {given}): it does not score units with a task "
            f"on calibration data; the methods that do: {', '.join(takers)}"
        )
    if calib_data is not None and option in settings:
        raise ValueError(f"method {method!r}: calib_data and {option}= are the same input (its data); pass one")
    t = get_task(text("task", task)) if task is not None else _default_task(model)
    t.check(model)  # the task gives the search its loss or metric: it must fit, with or without calib_data
    given = {option: calibration_data(calib_data, model)} if calib_data is not None else {}
    given.update(m.task_settings(t, search_loss(t, model, m.descriptor.kd)))
    for k in given:
        if k in settings:
            source = f"task {t.name!r}" if task is not None else f"the task picked for calib_data ({t.name!r})"
            raise ValueError(
                f"method {method!r}: {source} and {k}= both set its {k}; pass calib_data with task, "
                f"or {option}= with {k}="
            )
    if option not in given and option not in settings:
        raise ValueError(f"method {method!r} scores on data: task= needs calib_data=... (or {option}=...) with it")
    return given


def _default_task(model: nn.Module) -> Task:
    """The task of a model when ``task`` is not given: the first that fits (`default_task`); none: an error."""
    t = get_task(default_task(model))
    if not t.fits(model):
        needs = "; ".join(f"{n} needs {x.needs}" for n, x in TASKS.items())
        raise ValueError(
            f"task: no task fits {type(model).__name__}, so none can be picked for calib_data ({needs}); "
            f"pass task=... (one of {', '.join(sorted(TASKS))})"
        )
    return t
