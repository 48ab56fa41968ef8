"""One training loop for search and retrain, on HF accelerate (CPU, one GPU, many through `accelerate launch`).

Deterministic and resumable: batch i's indices depend only on (seed, i), checkpoints hold the model,
optimizer, scheduler, RNG states and the state of the step hook (a search's masks and scores), so a
run killed at any point and resumed reaches the same weights and the same plan."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset, default_collate

from vltrim.checks import integer, number
from vltrim.progress import bar

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_NAME = re.compile(CHECKPOINT_PREFIX + r"(\d+)")
CHECKPOINT_FILES = ("model.safetensors", "state.pt")
LOG_FILE = "log.jsonl"


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN or inf: training stopped before that step updated the weights."""


class StepHook(Protocol):
    """Runs after the backward pass of every optimizer step (gradients exist, weights not yet updated).

    Returns numbers for the progress bar and the log; ``state_dict``/``load_state_dict`` make it resumable."""

    def __call__(self, step: int) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def batch_indices(n: int, batch_size: int, seed: int, i: int) -> list[int]:
    """Indices of global batch ``i``: epochs are seeded permutations, so any batch is computable from i alone."""
    per_epoch = max(1, n // batch_size) if n >= batch_size else 1
    epoch, pos = divmod(i, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[pos * batch_size : (pos + 1) * batch_size].tolist()


def batches(
    data: Dataset, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches from global batch ``start`` on; each of ``world`` processes gets its own slice.
    A dataset with a ``collate`` method batches its own items (e.g. padding texts to the longest)."""
    collate = getattr(data, "collate", default_collate)
    i = start
    while True:
        idx = batch_indices(len(data), batch_size * world, seed, i)[rank::world]
        yield collate([data[j] for j in idx])
        i += 1


SCHEDULES = ("cosine", "constant")


def lr_factor(step: int, steps: int, warmup: int, schedule: str = "cosine") -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps`` or a constant LR.

    A search that prunes while it trains wants 'constant': its largest changes come last, when a cosine
    schedule has already decayed the LR to ~0 and the weights can no longer adapt."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def lr_schedule(
    opt: torch.optim.Optimizer, steps: int, warmup: int, schedule: str = "cosine"
) -> torch.optim.lr_scheduler.LambdaLR:
    """The model's group follows ``schedule`` after warm-up; further groups (`train`'s param_groups) keep their LR."""
    model = [lambda step: lr_factor(step, steps, warmup, schedule)]
    return torch.optim.lr_scheduler.LambdaLR(opt, model + [lambda _step: 1.0] * (len(opt.param_groups) - 1))


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first: ``checkpoint-<step>`` directories with every file
    (a kill while one is written leaves ``checkpoint-<step>.tmp``, which is ignored and later removed)."""
    found = []
    for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        m = CHECKPOINT_NAME.fullmatch(p.name)
        if m and p.is_dir() and all((p / f).is_file() for f in CHECKPOINT_FILES):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir``, or None."""
    found = checkpoints(output_dir)
    return found[-1] if found else None


def _remove(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def clean_output_dir(out: Path, resume: bool) -> None:
    """Before a run writes to ``out``: remove unfinished ``*.tmp`` checkpoints; a fresh (not resumed) run also
    removes the checkpoints and log of an earlier run there, so a later resume cannot mix the two runs."""
    if not out.exists():
        return
    keep = set(checkpoints(out)) if resume else set()
    old = [p for p in out.glob(f"{CHECKPOINT_PREFIX}*") if p not in keep]
    if not resume and any(CHECKPOINT_NAME.fullmatch(p.name) for p in old):
        warnings.warn(
            f"{out} held checkpoints of an earlier run; starting afresh (resume=True continues a run instead)",
            stacklevel=3,
        )
    for p in old:
        _remove(p)
    if not resume:
        _remove(out / LOG_FILE)


def _trim_log(out: Path, step: int) -> None:
    """Drop log rows after ``step`` (written after the checkpoint a resume starts from): they are run again."""
    log = out / LOG_FILE
    if log.exists():
        rows = [r for r in log.read_text().splitlines() if r.strip()]
        kept = [r for r in rows if _logged_step(r) <= step]
        log.write_text("".join(r + "\n" for r in kept))


def _logged_step(row: str) -> int:
    try:
        return int(json.loads(row).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return 1 << 62  # an unreadable (half-written) row is dropped


def save_checkpoint(
    path: Path, model: nn.Module, opt, sched, step: int, losses: list[float], hook: StepHook | None
) -> None:
    """Write model weights (safetensors) and everything else needed to continue (torch.save) into
    ``<path>.tmp``, then rename it: a kill at any moment leaves the whole checkpoint or none."""
    tmp = path.with_name(path.name + ".tmp")
    _remove(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    torch.save(
        {
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": _rng_state(),
            "step": step,
            "losses": losses,
            "hook": hook.state_dict() if hook is not None and hasattr(hook, "state_dict") else None,
        },
        tmp / "state.pt",
    )
    _remove(path)
    tmp.rename(path)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from: its files are corrupted or were made for another model."""


def load_checkpoint(path: Path, model: nn.Module, opt, sched, hook: StepHook | None) -> tuple[int, list[float]]:
    """Restore a checkpoint in place; returns (completed steps, losses so far). CheckpointError naming it if it
    cannot be read or does not fit the model."""
    try:
        weights = load_file(str(path / "model.safetensors"))
    except Exception as e:  # a damaged file
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"cannot resume from {path} ({type(e).__name__}: {why}): it is damaged; delete {path.name} to resume "
            "from the one before, or rerun without resume"
        ) from None
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    other = [k for k in sorted(set(mine) | set(weights)) if k not in weights or mine.get(k) != tuple(weights[k].shape)]
    if other:
        k = other[0]
        raise CheckpointError(
            f"cannot resume from {path}: its weights have other names or shapes than this run's model ({len(other)} "
            f"tensors, e.g. {k}: {tuple(weights[k].shape) if k in weights else 'absent'} in the checkpoint, "
            f"{mine.get(k, 'absent')} now): it was made for another model or plan (a search on other data or "
            "options plans other widths or ranks); resume with the run's original data and options, or rerun "
            "without resume"
        )
    try:
        model.load_state_dict(weights, strict=True)
        s = torch.load(path / "state.pt", weights_only=False)
        opt.load_state_dict(s["optimizer"])
        sched.load_state_dict(s["scheduler"])
        _set_rng_state(s["rng"])
        if hook is not None and s["hook"] is not None:
            hook.load_state_dict(s["hook"])
        return s["step"], s["losses"]
    except Exception as e:  # safetensors, pickle and torch raise many kinds for a damaged or foreign checkpoint
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"cannot resume from {path} ({type(e).__name__}: {why}): it is damaged or was made for "
            f"another model; delete {path.name} to resume from the one before, or rerun without resume"
        ) from None


def accelerator(mixed_precision: str = "no") -> Accelerator:
    """An Accelerator with this precision. accelerate keeps one state per process; in a single process a
    new precision resets it, under `accelerate launch` the launcher's setting must match."""
    if mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {mixed_precision!r}")
    try:
        return Accelerator(mixed_precision=mixed_precision)
    except ValueError:
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(mixed_precision=mixed_precision)


def train(
    model: nn.Module,
    data: Dataset,
    loss_fn: LossFn,
    steps: int,
    lr: float = 5e-4,
    batch_size: int = 64,
    weight_decay: float = 0.05,
    warmup: float = 0.05,
    seed: int = 0,
    desc: str = "train",
    progress: bool = True,
    after_backward: StepHook | Callable[[int], dict[str, float]] | None = None,
    grad_accum: int = 1,
    mixed_precision: str = "no",
    output_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    log_every: int = 10,
    schedule: str = "cosine",
    after_step: Callable[[int, nn.Module], None] | None = None,
    param_groups: list[dict[str, Any]] | None = None,
) -> list[float]:
    """Train ``model`` in place for ``steps`` optimizer steps; returns the loss of every step.

    ``batch_size`` is per process and micro-step; one optimizer step sees batch_size x grad_accum x
    processes examples. With ``output_dir``: JSONL log (log.jsonl) every ``log_every`` steps, a
    checkpoint every ``checkpoint_every`` steps, and ``resume`` continues from the latest one. ``schedule``:
    'cosine' or 'constant' after the warm-up. ``after_step(done, model)`` runs after each optimizer step
    (e.g. to evaluate a learning curve); the model is back in train mode afterwards. ``param_groups``: more AdamW
    parameter groups beside the model's (parameters outside it, e.g. a search's gates and multipliers, each group
    with its own ``lr``, ``weight_decay`` and optionally ``maximize``); their LR is constant (no warm-up, no decay)
    and their gradients are not clipped with the model's."""
    _check_settings(
        model,
        steps,
        lr,
        batch_size,
        weight_decay,
        warmup,
        grad_accum,
        checkpoint_every,
        log_every,
        schedule,
        resume,
        output_dir,
    )
    if steps == 0:
        return []
    acc = accelerator(mixed_precision)
    torch.manual_seed(seed)
    out = Path(output_dir) if output_dir is not None else None
    if out is not None and acc.is_main_process:
        clean_output_dir(out, resume)
    model.to(acc.device)
    extra = [dict(g) for g in param_groups or []]
    opt = torch.optim.AdamW(
        [{"params": [p for p in model.parameters() if p.requires_grad]}, *extra], lr=lr, weight_decay=weight_decay
    )
    sched = lr_schedule(opt, steps, max(1, int(warmup * steps)), schedule)
    start, losses = 0, []
    ckpt = latest_checkpoint(out) if resume and out is not None and out.exists() else None
    if ckpt is not None:
        start, losses = load_checkpoint(ckpt, model, opt, sched, after_backward)
        if acc.is_main_process:
            _trim_log(out, start)
    wrapped, opt = acc.prepare(model, opt)
    it = batches(data, batch_size, seed, start=start * grad_accum, rank=acc.process_index, world=acc.num_processes)
    if out is not None and acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    log = (out / LOG_FILE).open("a") if out is not None and acc.is_main_process else None
    model.train()
    t0 = time.time()
    with bar(progress and acc.is_main_process) as pb:
        task = pb.add_task(desc, total=steps, info="")
        pb.update(task, advance=start, info="resumed" if start else "")
        for step in range(start, steps):
            total = 0.0
            for micro in range(grad_accum):
                batch = {k: v.to(acc.device) for k, v in next(it).items()}
                sync = acc.no_sync(wrapped) if micro < grad_accum - 1 else nullcontext()
                with sync, acc.autocast():
                    loss = loss_fn(wrapped, batch) / grad_accum
                _stop_if_not_finite(loss.item(), "loss", step, desc, sched)
                acc.backward(loss)
                total += loss.item()
            extra = after_backward(step) if after_backward is not None else None
            _stop_if_not_finite(
                float(acc.clip_grad_norm_(wrapped.parameters(), 1.0)), "gradient norm", step, desc, sched
            )
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(total)
            info = f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}" + "".join(
                f" {k} {v:.3g}" for k, v in (extra or {}).items()
            )
            pb.update(task, advance=1, info=info)
            done = step + 1
            if log is not None and (done % log_every == 0 or done == steps):
                log.write(
                    json.dumps(
                        {
                            "step": done,
                            "loss": total,
                            "lr": sched.get_last_lr()[0],
                            "elapsed_s": round(time.time() - t0, 2),
                            **(extra or {}),
                        }
                    )
                    + "\n"
                )
                log.flush()
            if checkpoint_every and done % checkpoint_every == 0 and done < steps and acc.is_main_process:
                save_checkpoint(
                    out / f"{CHECKPOINT_PREFIX}{done}",
                    acc.unwrap_model(wrapped),
                    opt,
                    sched,
                    done,
                    losses,
                    after_backward,
                )
            if after_step is not None:
                after_step(done, model)
                model.train()
    if log is not None:
        log.close()
    strip_autocast(model)
    model.eval()
    return losses


def _check_settings(
    model: nn.Module,
    steps,
    lr,
    batch_size,
    weight_decay,
    warmup,
    grad_accum,
    checkpoint_every,
    log_every,
    schedule,
    resume,
    output_dir,
) -> None:
    """Every loop setting checked before any work (names the setting and the bad value)."""
    integer("steps", steps)
    number("lr", lr)
    integer("batch_size", batch_size, 1)
    number("weight_decay", weight_decay, low_open=False)
    number("warmup", warmup, high=1.0, low_open=False)
    integer("grad_accum", grad_accum, 1)
    integer("checkpoint_every", checkpoint_every)
    integer("log_every", log_every, 1)
    lr_factor(0, 1, 1, schedule)  # the schedule's name
    if (checkpoint_every or resume) and output_dir is None:
        raise ValueError("checkpoint_every and resume need output_dir (CLI: --work-dir): checkpoints are written there")
    low = sorted(
        {
            str(p.dtype).replace("torch.", "")
            for p in model.parameters()
            if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16)
        }
    )
    if low:
        raise ValueError(
            f"training {type(model).__name__} with {'/'.join(low)} weights diverges (AdamW updates underflow): "
            "train a float32 copy (model.float()) with mixed_precision='bf16' or 'fp16' instead"
        )


def _stop_if_not_finite(value: float, what: str, step: int, desc: str, sched) -> None:
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"{desc}: the {what} is {value} at step {step + 1} (lr {sched.get_last_lr()[0]:.3g}); "
            "stopped before updating the weights. Lower the learning rate or check the data and loss weights"
        )


def strip_autocast(model: nn.Module) -> None:
    """Remove the autocast wrapper accelerate puts on ``model.forward`` for mixed precision, so the trained
    model is the plain model again (its outputs, evaluation and timing are fp32 as saved and reloaded)."""
    original = model.__dict__.pop("_original_forward", None)
    if original is None:
        return
    if getattr(original, "__func__", None) is type(model).forward:
        model.__dict__.pop("forward", None)
    else:
        model.forward = original
