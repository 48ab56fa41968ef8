"""vltrim: make vision-language and unimodal Transformers smaller and really faster.

A Plan is data: methods produce plans, adapters apply them. See README for the workflow."""

from __future__ import annotations

from vltrim._version import __version__
from vltrim.api import apply_plan, inspect, plan, plans_of
from vltrim.arch import UnsupportedModelError, get_adapter, supported_classes
from vltrim.arch.apply import masked
from vltrim.io import ModelDirError
from vltrim.measure import compare, count_macs, count_params, measure
from vltrim.methods.distill import student
from vltrim.models import load
from vltrim.run import CompressResult, compress
from vltrim.run.artifacts import save
from vltrim.run.study import StudyResult, study
from vltrim.structure.groups import Group, UnitKind
from vltrim.structure.plan import Plan, PlanError
from vltrim.structure.select import Budget
from vltrim.train.loop import TrainingDivergedError
from vltrim.train.run_record import ResumeMismatchError

__all__ = [
    "__version__",
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
