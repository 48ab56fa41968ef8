"""One look for every long step: a rich progress bar on a terminal, a line every 10% in logs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class LogProgress:
    """Progress for non-terminals (CI, nohup): prints description, count, info and elapsed time every 10%."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.tasks = enabled, {}

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def add_task(self, description: str, total: int, **fields: Any) -> int:
        self.tasks[len(self.tasks)] = {"desc": description, "total": total, "done": 0, "next": 0, "t0": time.time()}
        return len(self.tasks) - 1

    def update(self, task: int, advance: int = 1, info: str = "", **_: Any) -> None:
        t = self.tasks[task]
        t["done"] += advance
        if self.enabled and (t["done"] >= t["next"] or t["done"] == t["total"]):
            console.print(
                f"{t['desc']}: {t['done']}/{t['total']} {info} [{time.time() - t['t0']:.0f}s]", highlight=False
            )
            t["next"] = t["done"] + max(1, t["total"] // 10)


def bar(enabled: bool = True) -> Progress | LogProgress:
    if not console.is_terminal:
        return LogProgress(enabled)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


LONG_PHASE_S = 2.0  # a phase that took longer says how long


@contextmanager
def phase(what: str, enabled: bool = True) -> Iterator[None]:
    """One line saying what a step without a bar of its own is doing ('evaluating on 800 items ...'), and its time
    when it took over LONG_PHASE_S: no long silence on the console. Plain lines, so a bar inside it still draws."""
    if not enabled:
        yield
        return
    t0 = time.time()
    console.print(f"{what} ...", highlight=False)
    yield
    if time.time() - t0 > LONG_PHASE_S:
        console.print(f"{what}: done in {time.time() - t0:.0f}s", highlight=False)
