"""One look for every long step: a rich progress bar on a terminal, a line every 10% in logs."""

from __future__ import annotations

import time
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
