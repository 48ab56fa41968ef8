"""vltrim against Torch-Pruning in one table per model: every row's metric right after its plan and after the same
150 total steps, MACs and measured speedup beside it, and whether vltrim's best row is ahead of the peer's best by
more than the seed spread. Reads the harness results written with ``--peer --latency``; trains nothing.

    python benchmarks/peer_summary.py    # writes benchmarks/results/peer_summary.md
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from harness import label, mean_sd

RESULTS = Path(__file__).resolve().parent / "results"
# results stem, metric key, title; the stems are written by the commands in docs/ranking.md
MODELS = [
    ("real_text_r8_peer", "cosine_to_teacher", "MiniLM-L6 on R8, cosine to the teacher"),
    ("fashion_dual_encoder_peer", "zero_shot_top1", "Fashion-MNIST dual encoder, zero-shot top-1"),
    ("real_text_20ng_l3_peer", "cosine_to_teacher", "MiniLM-L3 on 20 Newsgroups, cosine to the teacher"),
]
CEILING = ("fashion_dual_encoder_ceiling", 0.01)  # the Fashion teacher with 1% removed, retrained the same way


def final(summary: dict, target: float, name: str, key: str) -> list[float]:
    """Per-seed metric after the last total step (seed order as run)."""
    per_total = summary[f"{target}|{name}|{key}"]["per_total"]
    return per_total[max(per_total, key=int)]


def first(summary: dict, target: float, name: str, key: str) -> tuple[str, list[float]]:
    """The metric at the first point of the curve: right after a one-shot plan, or at the end of a search."""
    per_total = summary[f"{target}|{name}|{key}"]["per_total"]
    step = min((s for s, v in per_total.items() if v), key=int)
    return step, per_total[step]


def is_peer(name: str) -> bool:
    return name.startswith("peer")


def model_table(stem: str, key: str) -> tuple[list[str], list[str]]:
    """Rows of the summary table and one verdict line per target for one model's results file."""
    d = json.loads((RESULTS / f"{stem}.json").read_text())
    summary, speed, rows, verdicts = d["summary"], d.get("latency") or {}, [], []
    names = list(dict.fromkeys(k.split("|")[1] for k in summary))
    unreachable = sorted({(r["target"], label(r)) for r in d["rows"] if "unreachable" in r})
    for target in d["args"]["targets"]:
        present = [n for n in names if f"{target}|{n}|{key}" in summary]
        for name in present:
            step, now = first(summary, target, name, key)
            sp = speed.get(f"{name}, {target:.0%}", {})
            macs = [
                r["achieved"]["model_macs_after"] / r["achieved"]["model_macs_before"]
                for r in d["rows"]
                if r["target"] == target and "achieved" in r and label(r) == name
            ]
            rows.append(
                [
                    f"{1 / (1 - target):.0f}x",
                    name,
                    mean_sd(now) + ("" if step == "0" else f" (after {step}-step search)"),
                    mean_sd(final(summary, target, name, key)),
                    f"{statistics.mean(macs):.3f}" if macs else "-",
                    " / ".join(f"{v:.2f}x" for v in sp.get("speedup", {}).values()) or "-",
                ]
            )
        rows += [[f"{1 / (1 - target):.0f}x", n, "not reachable", "", "", ""] for t, n in unreachable if t == target]
        verdicts.append(verdict(summary, target, key, present))
    return rows, verdicts


def verdict(summary: dict, target: float, key: str, names: list[str]) -> str:
    """vltrim's best row (any method or setting a user can ask for) against the peer's best reachable row: margin,
    larger sd, paired per-seed wins."""
    ours = max((n for n in names if not is_peer(n)), key=lambda n: statistics.mean(final(summary, target, n, key)))
    peers = [n for n in names if is_peer(n)]
    if not peers:
        return f"{1 / (1 - target):.0f}x: no peer configuration reaches this target; vltrim's best is {ours}"
    theirs = max(peers, key=lambda n: statistics.mean(final(summary, target, n, key)))
    a, b = final(summary, target, ours, key), final(summary, target, theirs, key)
    margin, spread = statistics.mean(a) - statistics.mean(b), max(statistics.stdev(a), statistics.stdev(b))
    wins = sum(x > y for x, y in zip(a, b))
    word = (
        "ahead by more than the seed spread"
        if margin > spread
        else ("ahead, within the seed spread" if margin > 0 else "not ahead")
    )
    return (
        f"{1 / (1 - target):.0f}x: vltrim's best, {ours} {statistics.mean(a):.3f}, against the peer's best, {theirs} "
        f"{statistics.mean(b):.3f}: {margin:+.4f} (larger sd {spread:.4f}; ahead on {wins} of {len(a)} seeds): {word}"
    )


def ceiling_line() -> str:
    path = RESULTS / f"{CEILING[0]}.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    vals = final(d["summary"], CEILING[1], "taylor", "zero_shot_top1")
    teacher = d["rows"][0]["teacher"]["zero_shot_top1"]
    return (
        f"Fashion ceiling: the teacher with only {CEILING[1]:.0%} of its prunable params removed, retrained the same 150 "
        f"steps, ends at {mean_sd(vals)} zero-shot top-1 (teacher {teacher:.3f}; "
        "`python benchmarks/fashion_dual_encoder.py --methods taylor --targets 0.01 --tag ceiling`)."
    )


def where(stem: str) -> str:
    m = json.loads((RESULTS / f"{stem}.json").read_text())["machine"]
    return f"{m['gpu'] or m['cpu'] + ', ' + str(m['cores']) + ' cores'}; torch {m['torch']}, transformers {m['transformers']}"


def main() -> None:
    from vltrim.report import markdown_table

    parts = []
    for stem, key, title in MODELS:
        if not (RESULTS / f"{stem}.json").exists():
            continue
        rows, verdicts = model_table(stem, key)
        parts.append(
            f"**{title}** (`benchmarks/results/{stem}.md`; mean ± sd over 3 seeds; speedup: seed 0's plan, "
            f"batch 1 / harness batch, one interleaved run; {where(stem)}):\n\n"
            + markdown_table(
                ["", "row", "right after the plan", "after 150 total steps", "MACs (x original)", "speedup"], rows
            )
            + "\n\n"
            + "\n".join(f"- {v}" for v in verdicts)
        )
    parts.append(ceiling_line())
    parts.append("Summarised from the results files by `python benchmarks/peer_summary.py`.")
    (RESULTS / "peer_summary.md").write_text("\n\n".join(p for p in parts if p) + "\n")
    print((RESULTS / "peer_summary.md").read_text())


if __name__ == "__main__":
    main()
