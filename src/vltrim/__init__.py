"""vltrim: make vision-language and unimodal Transformers smaller and really faster.

A Plan is data: methods produce plans, adapters apply them. See README for the workflow."""

from __future__ import annotations

from .adapters import UnsupportedModelError, get_adapter, supported_classes
from .api import apply_plan, inspect, plan, plans_of
from .compress import CompressResult, compress
from .io import ModelDirError, load, save
from .masks import masked
from .measure import compare, count_macs, count_params, measure
from .methods.distill import student
from .structure.groups import Group, UnitKind
from .structure.plan import Plan, PlanError
from .structure.select import Budget
from .study import StudyResult, study
from .train.loop import TrainingDivergedError
from .train.run_record import ResumeMismatchError

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "CompressResult",
    "Group",
    "ModelDirError",
    "Plan",
    "StudyResult",
    "PlanError",
    "ResumeMismatchError",
    "TrainingDivergedError",
    "UnitKind",
    "UnsupportedModelError",
    "apply_plan",
    "compare",
    "compress",
    "count_macs",
    "count_params",
    "get_adapter",
    "inspect",
    "load",
    "masked",
    "measure",
    "plan",
    "plans_of",
    "save",
    "student",
    "study",
    "supported_classes",
]
