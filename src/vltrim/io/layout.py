"""The files of a vltrim model directory and the errors about them (shared by save, load and remote code)."""

from __future__ import annotations

import torch

CONFIG, PLAN, WEIGHTS, CARD, CHECKSUMS = "config.json", "plan.json", "model.safetensors", "README.md", "vltrim.json"
MODELING = "modeling_vltrim.py"  # the class transformers' auto classes load (config.json's auto_map; see hf.py)
CHECKED = (CONFIG, PLAN, WEIGHTS)  # files whose SHA-256 is recorded in vltrim.json (README.md is for people)
CHECKSUMS_FORMAT, CHECKSUMS_VERSION = "vltrim.model_dir", 1
RUN_RECORD, RUN_FORMAT = "run.json", "vltrim.run"  # the record of a compress run's work_dir (train/run_record.py)
REPORT = "report.json"  # with a compress result: the run's report; its SHA-256 is in vltrim.json's "reports", which load does not check
REPORT_FILES = (
    REPORT,
    "widths.png",
    "mope.csv",
    "mope.png",
)  # written from a report; a save without one removes old ones
EXPORTS = (
    "model.onnx",
    "model.onnx.data",
    "model.int8.onnx",
)  # `vltrim export`'s default files: a new save removes them
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


class ModelDirError(ValueError, RuntimeError):
    """A model directory that cannot be saved or loaded as it is: a file missing, malformed, edited, or not
    matching the others. (Also a RuntimeError: ``load`` raised RuntimeError for mismatched weights before.)"""


class MissingModelFileError(ModelDirError, FileNotFoundError):
    """The directory, or a file a vltrim model directory needs, does not exist."""
