"""vltrim.compress: search -> subnet -> retrain with KD -> report, one method or a chain of stages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from vltrim.checks import kept_modes
from vltrim.run import runner
from vltrim.run.chain import run_chain
from vltrim.run.options import Stage
from vltrim.structure.plan import Plan
from vltrim.structure.result import CompressResult
from vltrim.tasks import check_task_fit, default_task


def compress(
    model: nn.Module,
    method: str | Sequence[Stage] = "upop",
    target: float = 0.5,
    task: str | None = None,
    train_data: Any = None,
    eval_data: Any = None,
    calib_data: Any = None,
    search_steps: int = 300,
    retrain_steps: int = 300,
    kd_weight: float = 1.0,
    kd_hidden: float | None = None,
    kd_embed: float | None = None,
    kd_attention: float | None = None,
    task_weight: float = 1.0,
    lr: float = 1e-4,
    retrain_lr: float = 2e-4,
    batch_size: int | None = None,
    metric: str = "params",
    align: int = 8,
    units: str | None = None,
    allocation: str | None = None,
    max_ratio: float | None = None,
    depth_share: float | None = None,
    retrain_schedule: str = "cosine",
    eval_every: int = 0,
    latency_batch: int = 8,
    progress: bool = True,
    seed: int = 0,
    grad_accum: int = 1,
    mixed_precision: str = "no",
    work_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    override: bool = False,
    plan: Plan | None = None,
    method_settings: dict[str, Any] | None = None,
    evaluate_before: bool = True,
) -> CompressResult:
    """Compress ``model`` with ``method`` to remove ``target`` of its prunable ``metric``; ``model`` is not changed
    (not even its train/eval mode), and every option is checked before any work starts. ``task`` (loss and metric)
    defaults to the first that fits the model (retrieval, classification, sentence-embedding); one that does not fit
    is refused.

    Training-based searches (upop) train a copy on ``train_data`` while they decide; then the subnet is
    retrained ``retrain_steps`` with the task loss + ``kd_weight`` x distillation from the original (+ ``kd_hidden``
    x hidden-state MSE per block, mapped across dropped layers; + ``kd_attention`` x attention-map MSE per block, same
    mapping, head-averaged where head counts differ: the attention of both models runs eager while the loss is computed,
    then their own implementation is restored; + ``kd_weight`` x ``kd_embed`` x each tower's final
    embedding distance (retrieval); None: the method's default: kd_hidden 1 for mope and distill, kd_embed 1 for mope,
    else 0). ``task_weight`` 0 retrains by distillation alone (MoPE's pre-training stage: both towers, unlabelled image-text pairs).
    Methods that score on data (taylor, mope) use ``calib_data`` when given, else ``train_data``.
    ``depth_share`` (mope): the part of the cut that comes from whole layers (0: width only, 1: depth only).
    ``train_data`` / ``eval_data``: a map-style dataset of dict items, a torch DataLoader (its dataset, batch size
    and collate_fn are used) or a Hugging Face ``datasets.Dataset``; ``batch_size`` None: the DataLoader's, else 64.
    With ``work_dir``, search and retrain log to work_dir/{search,retrain}/log.jsonl, checkpoint every
    ``checkpoint_every`` steps, and ``resume=True`` continues a killed run to the same result; a resume with other
    options, data or model than work_dir/run.json records is refused (``override=True`` resumes anyway).
    With ``plan`` (e.g. `Plan.load(path)`), no search runs: that plan is applied to ``model`` and retrained.
    ``allocation`` / ``max_ratio``: where the cut may fall (see `Budget`; None: the method's default). ``eval_every`` > 0 evaluates the
    subnet every that many retrain steps into ``report["curve"]`` (metric vs total training steps).
    ``seed`` seeds the search (random scores, calibration and batch order) and the retraining.
    ``latency_batch`` 0 skips the latency measurement (``report["speed"]`` is None); ``evaluate_before=False``
    skips evaluating the original (when its metric is known already).
    ``method_settings`` go to the method as they are (e.g. upop's ``interval``, ``schedule``, ``saliency_decay``).
    A float16 / bfloat16 model is searched and retrained as a float32 copy and returned in its own dtype.

    Prune-retrain rounds (``magnitude``, ``heads``): ``method_settings={"rounds": R}`` prunes in R steps (magnitude:
    the cubic sparsity schedule; heads: its ``schedule``, each round re-scoring the retrained model), retraining
    ``retrain_steps`` split evenly over the rounds after each (sparse zeros frozen); the model records one plan per
    round, ``report["rounds"]`` one row per round (target, achieved, params, metric after its retraining) and
    ``report["plan"]`` the last round's; with ``work_dir``, round r works in work_dir/round-r.

    A list ``method`` is a chain: one stage per entry, each compressing the model the previous stage made; an entry is
    a name or (name, {options}) whose options (target, retrain_steps, kd_*, ..., see `vltrim.run.chain.STAGE_OPTIONS`)
    override the shared ones for that stage, other keys being the method's settings. The original ``model`` is the
    teacher of every stage. See `vltrim.run.chain`.

    Every option is declared once more, with its scope (whole run, chain stage or method), in
    `vltrim.run.options.CompressOptions`; a test keeps that declaration and this signature equal."""
    if task is None and isinstance(model, nn.Module):
        task = default_task(model)  # the first task that fits it (retrieval, classification, sentence-embedding)
    check_task_fit(model, task, train_data, eval_data, calib_data)
    if isinstance(method, (list, tuple)):
        return run_chain(locals())
    o = runner._checked(locals())
    with kept_modes(model):
        model.eval()
        return runner._run(model, o)
