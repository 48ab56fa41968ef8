"""Measure what users pay for: parameters, MACs (counted, not estimated) and wall-clock latency."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from vltrim.arch import get_adapter
from vltrim.arch.attention import eager_attention
from vltrim.arch.registry import usable_model
from vltrim.checks import flag, integer, kept_modes, number


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _to(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def count_macs(model: nn.Module, inputs: dict[str, Any]) -> int:
    """Multiply-accumulates of one inference forward on ``inputs`` (matmuls, convolutions, attention), in eval mode
    (a model in training mode may skip layers: layer drop), the model's mode restored."""
    with torch.no_grad(), kept_modes(model), eager_attention(model.modules()), FlopCounterMode(display=False) as fc:
        model.eval()
        get_adapter(model).forward(model, _to(inputs, _device(model)))
    return fc.get_total_flops() // 2


def cost_split(model: nn.Module, inputs: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Params and MACs (of one forward on ``inputs``, the reference input by default) of the model's front end (the
    modules its adapter declares outside the Transformer blocks, e.g. a speech model's CNN feature encoder), of its
    Transformer blocks (all pruning can reach: every method removes units of them) and of the rest (embeddings,
    heads), with each part's share of the whole. Empty when the family declares no front end."""
    adapter = get_adapter(model)
    front = adapter.front_end(model)
    if not front:
        return {}
    blocks = [layer for t in adapter.towers(model) for layer in t.layers]
    inputs = adapter.reference_inputs(model, 1) if inputs is None else inputs
    macs = _macs_of_parts(model, inputs, {"front_end": front, "blocks": blocks})
    params = {k: sum(p.numel() for m in mods for p in m.parameters()) for k, mods in (("front_end", front),
                                                                                        ("blocks", blocks))}  # fmt: skip
    total = {"params": count_params(model), "macs": sum(macs.values())}
    params["other"] = total["params"] - params["front_end"] - params["blocks"]
    return {
        k: {"params": params[k], "macs": macs[k],
            **{f"{c}_share": (params if c == "params" else macs)[k] / max(total[c], 1) for c in ("params", "macs")}}
        for k in ("front_end", "blocks", "other")
    }  # fmt: skip


def _macs_of_parts(model: nn.Module, inputs: dict[str, Any], parts: dict[str, list[nn.Module]]) -> dict[str, int]:
    """MACs of one forward, split among ``parts`` (disjoint module lists) and 'other': each module's flops are the
    counter's growth between its pre- and post-forward hooks."""
    got = {k: 0 for k in parts}
    with torch.no_grad(), kept_modes(model), eager_attention(model.modules()), FlopCounterMode(display=False) as fc:
        model.eval()
        handles = []
        for name, mods in parts.items():
            for m in mods:
                start: list[int] = []
                handles.append(m.register_forward_pre_hook(lambda _m, _a, s=start: s.append(fc.get_total_flops())))
                handles.append(
                    m.register_forward_hook(
                        lambda _m, _a, _o, s=start, k=name: got.__setitem__(k, got[k] + fc.get_total_flops() - s.pop())
                    )
                )
        try:
            get_adapter(model).forward(model, _to(inputs, _device(model)))
        finally:
            for h in handles:
                h.remove()
        total = fc.get_total_flops()
    out = {k: v // 2 for k, v in got.items()}
    return {**out, "other": total // 2 - sum(out.values())}


def _runner(model: nn.Module, inputs: dict[str, Any]) -> Callable[[], None]:
    adapter, inputs = get_adapter(model), _to(inputs, _device(model))

    def run() -> None:
        with torch.inference_mode():
            adapter.forward(model, inputs)

    return run


def _time_rounds(fns: list[Callable[[], None]], rounds: int, warmup: int, min_round_s: float) -> list[list[float]]:
    """Per-call seconds of each function, timed with torch.utils.benchmark in interleaved rounds, so
    machine drift hits every function alike (ratios from one run are trustworthy, absolute times less)."""
    timers = [Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()) for fn in fns]
    numbers = []
    for t in timers:
        t.timeit(warmup)
        once = t.timeit(1).mean
        numbers.append(max(1, int(min_round_s / max(once, 1e-6))))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, t in enumerate(timers):
            times[i].append(t.timeit(numbers[i]).mean)
    return times


def _latency_stats(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"latency_ms": statistics.median(times) * 1e3, "latency_iqr_ms": (q[2] - q[0]) * 1e3}


def machine() -> dict[str, Any]:
    """Where the latencies were measured: platform, CPU (or GPU), cores, torch threads and versions."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _context(model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    dev = _device(model)
    batch = next((v.shape[0] for v in inputs.values() if torch.is_tensor(v)), 1)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {
        "device": name,
        "threads": torch.get_num_threads(),
        "batch_size": int(batch),
        "dtype": str(next(model.parameters()).dtype),
    }


def measure(
    model: nn.Module,
    inputs: dict[str, Any] | None = None,
    batch_size: int = 1,
    latency: bool = True,
    rounds: int = 15,
    warmup: int = 3,
    min_round_s: float = 0.05,
) -> dict[str, Any]:
    """Params, MACs and median latency (with interquartile range, threads and device recorded).

    ``inputs`` defaults to the adapter's reference input with ``batch_size``. The model is timed in eval mode
    and left in the mode it was in."""
    batch_size, rounds = _check_measure(model, batch_size, rounds, warmup, min_round_s)
    flag("latency", latency)
    inputs = _inputs(model, inputs, batch_size)
    out: dict[str, Any] = {"params": count_params(model), "macs": count_macs(model, inputs), **_context(model, inputs)}
    out.update({"split": split} if (split := cost_split(model, inputs)) else {})
    if latency:
        with kept_modes(model):
            model.eval()
            out.update(_latency_stats(_time_rounds([_runner(model, inputs)], rounds, warmup, min_round_s)[0]))
        out["rounds"] = rounds
    return out


def _check_measure(model: nn.Module, batch_size: int, rounds: int, warmup: int, min_round_s: float) -> tuple[int, int]:
    """The options of measure / compare (each error names its option); returns batch_size and rounds as ints."""
    usable_model(model)
    integer("warmup", warmup)
    number("min_round_s", min_round_s, low_open=False)
    return integer("batch_size", batch_size, 1), integer("rounds", rounds, 1)


def _inputs(model: nn.Module, inputs: Any, batch_size: int) -> dict[str, Any]:
    """The adapter's reference input, or the user's ``inputs`` once one forward pass on them works (else a
    ValueError naming ``inputs`` instead of an error from deep inside the model)."""
    if inputs is None:
        return get_adapter(model).reference_inputs(model, batch_size)
    if not isinstance(inputs, dict):
        raise TypeError(
            f"inputs must be a dict of model inputs like {{'pixel_values': ...}}, got {type(inputs).__name__}"
        )
    try:
        with torch.no_grad(), kept_modes(model):
            model.eval()
            get_adapter(model).forward(model, _to(inputs, _device(model)))
    except Exception as e:  # the model's own errors (shapes, keys) in one clear line
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"inputs do not fit {type(model).__name__} (keys {sorted(inputs)}): {type(e).__name__}: {why}"
        ) from None
    return inputs


def paired_speedup(base: list[float], times: list[float]) -> dict[str, Any]:
    """From per-round times of a baseline and a model timed in the same rounds: ``speedup`` (median of the paired
    ratios), ``speedup_quartiles``, ``speedup_conclusive`` and, when not conclusive, ``speedup_note`` (why)."""
    ratios = [x / y for x, y in zip(base, times)]
    speedup, q = statistics.median(ratios), _quartiles(ratios)
    why = speedup_verdict(speedup, q)
    return {
        "speedup": speedup,
        "speedup_quartiles": q,
        "speedup_conclusive": why is None,
        **({"speedup_note": why} if why else {}),
    }


def _quartiles(values: list[float]) -> list[float]:
    """First and third quartiles of ``values`` (both the value itself when there is one)."""
    if len(values) < 2:
        return [values[0], values[0]] if values else []
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


NOISY_SPREAD = 1.5  # paired rounds whose ratio's third quartile is this many times the first: a busy machine


def speedup_verdict(speedup: float, quartiles: list[float]) -> str | None:
    """None when the paired rounds agree on the speedup; else why the measurement is not conclusive: their middle half
    straddles 1x (faster in some rounds, slower in others) or spreads over NOISY_SPREAD (the machine is busy)."""
    if len(quartiles) != 2:
        return None
    lo, hi = quartiles
    if lo <= 1.0 <= hi and not (lo == hi == 1.0):
        return f"the middle half of the paired rounds spans {lo:.2f}-{hi:.2f}x, on both sides of 1x"
    if lo > 0 and hi / lo > NOISY_SPREAD:
        return f"the paired rounds spread from {lo:.2f}x to {hi:.2f}x: the machine is probably busy"
    return None


def speedup_text(sp: dict[str, Any]) -> str:
    """'1.52x (rounds 1.48-1.57)' (the median paired ratio and its quartiles over rounds), or 'not conclusive (...)'
    with the reason when the rounds disagree (`speedup_verdict`): a ratio is printed as a result only when it is one."""
    q = sp.get("speedup_quartiles") or []
    spread = f"rounds {q[0]:.2f}-{q[1]:.2f}" if len(q) == 2 else ""
    why = speedup_verdict(sp["speedup"], q)
    if why:
        return f"not conclusive ({sp['speedup']:.2f}x median; {why}; rerun on an idle machine or with more rounds)"
    return f"{sp['speedup']:.2f}x" + (f" ({spread})" if spread else "")


def compare(
    a: nn.Module,
    b: nn.Module,
    inputs: dict[str, Any] | None = None,
    batch_size: int = 1,
    rounds: int = 15,
    warmup: int = 3,
    min_round_s: float = 0.05,
) -> dict[str, Any]:
    """Measure ``a`` (e.g. the original) and ``b`` (compressed) in one interleaved run; ratios are a/b.

    ``speedup`` is the median over rounds of a's time / b's time in the same round: a transient that
    slows one round shifts both sides of that pair, so it is more robust than the ratio of medians.
    Both are timed in eval mode and left in the modes they were in."""
    batch_size, rounds = _check_measure(a, batch_size, rounds, warmup, min_round_s)
    usable_model(b, "b")
    inputs = _inputs(a, inputs, batch_size)
    with kept_modes(a, b):
        a.eval(), b.eval()
        ta, tb = _time_rounds([_runner(a, inputs), _runner(b, inputs)], rounds, warmup, min_round_s)
    ma = {"params": count_params(a), "macs": count_macs(a, inputs), **_latency_stats(ta)}
    mb = {"params": count_params(b), "macs": count_macs(b, inputs), **_latency_stats(tb)}
    for m, model in ((ma, a), (mb, b)):
        m.update({"split": split} if (split := cost_split(model, inputs)) else {})
    return {
        "a": ma,
        "b": mb,
        "params_ratio": ma["params"] / mb["params"],
        "macs_ratio": ma["macs"] / mb["macs"],
        **paired_speedup(ta, tb),  # median of paired per-round ratios, their spread: how far to trust it
        "speedup_of_medians": ma["latency_ms"] / mb["latency_ms"],
        "rounds": rounds,
        **_context(a, inputs),
    }
