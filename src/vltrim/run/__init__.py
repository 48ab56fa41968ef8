"""Running methods: compress (one stage or a chain of stages), resume, and the study grid over them."""

from vltrim.run.compress import compress
from vltrim.run.study import StudyResult, study
from vltrim.structure.result import CompressResult

__all__ = ["CompressResult", "StudyResult", "compress", "study"]
