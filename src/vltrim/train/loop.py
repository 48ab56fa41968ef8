"""A compact training loop: AdamW, warm-up + cosine schedule, gradient clipping, progress bar, loss log."""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..progress import bar

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def batches(data: Dataset, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches (a new order every epoch, deterministic for a seed)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield from DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=len(data) >= batch_size, generator=g)


def cosine_schedule(opt: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


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
    after_backward: Callable[[int], str | None] | None = None,
) -> list[float]:
    """Train ``model`` for ``steps`` optimizer steps on ``loss_fn``; returns the loss of every step.

    ``after_backward(step)`` runs once gradients exist and before the optimizer step (a search reads
    mask gradients there); a string it returns is shown on the progress bar."""
    if steps <= 0:
        return []
    torch.manual_seed(seed)
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = cosine_schedule(opt, steps, max(1, int(warmup * steps)))
    model.train()
    losses: list[float] = []
    it = batches(data, batch_size, seed)
    with bar(progress) as pb:
        task = pb.add_task(desc, total=steps, info="")
        for step in range(steps):
            batch = {k: v.to(dev) for k, v in next(it).items()}
            loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            extra = after_backward(step) if after_backward else None
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            pb.update(task, advance=1, info=f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}" + (f" {extra}" if extra else ""))
    model.eval()
    return losses
