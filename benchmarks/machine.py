"""Describe the machine a benchmark ran on (recorded next to every number)."""

from __future__ import annotations

import os
import platform

import torch
import transformers


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # when the benchmark script started
IDLE_LOAD = 0.5  # a 1-minute load average below this at the start: nothing else was running


def load_text() -> str:
    """'idle machine (load 0.2 at start)' or 'busy machine (load 2.6 at start)': times depend on it."""
    if LOAD_AT_START is None:
        return "load unknown"
    state = "idle" if LOAD_AT_START < IDLE_LOAD else "busy"
    return f"{state} machine (1-minute load {LOAD_AT_START:.1f} at start)"


def machine_line() -> str:
    m = machine()
    where = m["gpu"] or f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads"
    return f"{where}, {load_text()}; torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}"


def line_plot(
    series: dict[str, list[tuple[float, float]]],
    reference: tuple[float, str],
    xlabel: str,
    ylabel: str,
    path,
    title: str = "",
) -> None:
    """One line per series (points sorted by x) and a dashed reference level (e.g. the teacher), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vltrim.report import readable_axes

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in series.items():
        pts = sorted(pts)
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", label=label)
    ax.axhline(reference[0], color="grey", ls="--", label=reference[1])
    readable_axes(ax)  # parameter counts as 1.2M, at most 6 ticks, tilted: no overlapping tick labels
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
