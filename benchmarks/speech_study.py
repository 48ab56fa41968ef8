"""The compression study on speech: `vltrim.study` on the small HuBERT keyword teacher, timed on 1 s and 10 s clips,
and what pruning can and cannot reach on a full-size HuBERT-base config.

    python benchmarks/speech_commands.py && python benchmarks/speech_teacher.py   # data and teacher, once
    python benchmarks/speech_study.py study        # every method x ratio on the teacher (cells cached, resumable)
    python benchmarks/speech_study.py base         # HuBERT-base config (random weights): reach and latency ratios
    # writes benchmarks/results/speech_study.{md,json} (study) and speech_base.{md,json} (base)

study: methods magnitude (unstructured), 2:4, heads, lowrank, distill, l1, taylor, upop, mope at ratios 0.5 / 0.75 (2:4
one cell at 50%), each retrained the same steps with the task loss + logit distillation from the teacher (upop also
searches that many steps first: its total is twice the others'); top-1 on a fixed balanced 2,000-clip subset of the
test voices (never heard in training). Params and MACs are those of one 1 s clip, split into the CNN front end (which
no method prunes) and the Transformer blocks. Latency: the study's own interleaved run (1 s clips, batch 1 and 32),
then every cell and the original again on 10 s clips (batch 1) in one interleaved run.

base: HubertModel with HuBERT-base's config (12 layers, width 768, 12 heads, FFN 3072, the 512-channel CNN) and
random weights (none install offline; structure alone sets costs and latency): l1 plans at 25 / 50 / 75% of the
prunable params and the shallowest distill student, each with its front-end share and its latency ratio to the
original on 1 s and 10 s clips (one interleaved run per clip length)."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).parent))
import speech_teacher  # noqa: E402
from machine import machine_line  # noqa: E402

import vltrim  # noqa: E402
from vltrim.arch.families.hf_speech import backbone  # noqa: E402
from vltrim.arch.inputs import audio_inputs  # noqa: E402
from vltrim.measure import (  # noqa: E402
    _latency_stats,
    _macs_of_parts,
    _runner,
    _time_rounds,
    cost_split,
    paired_speedup,
)

RESULTS = Path(__file__).parent / "results"
CACHE = Path.home() / ".cache" / "vltrim" / "study"
METHODS = "magnitude,2:4,heads,lowrank,distill,l1,taylor,upop,mope"
ONE, TEN = 16_000, 160_000  # samples of a 1 s and a 10 s clip at 16 kHz


def timed(models: dict[str, torch.nn.Module], samples: int, rounds: int) -> dict[str, dict]:
    """Every model on one clip of ``samples``, batch 1, in one interleaved run (the first is the baseline)."""
    inputs = audio_inputs(1, samples)
    times = _time_rounds([_runner(m.eval(), inputs) for m in models.values()], rounds, 3, 0.05)
    return {n: {**_latency_stats(t), **paired_speedup(times[0], t)} for n, t in zip(models, times)}


def costs(model: torch.nn.Module) -> dict:
    """Params, MACs and the front-end split on a 1 s clip (and the CNN feature encoder's own share); MACs on 10 s."""
    split = cost_split(model, audio_inputs(1, ONE))
    cnn = backbone(model).feature_extractor
    cnn_macs = _macs_of_parts(model, audio_inputs(1, ONE), {"cnn": [cnn]})["cnn"]
    total = sum(p["macs"] for p in split.values())
    return {
        "cnn_params_share": sum(p.numel() for p in cnn.parameters()) / vltrim.count_params(model),
        "cnn_macs_share": cnn_macs / total,
        "params": vltrim.count_params(model),
        "macs_1s": sum(p["macs"] for p in split.values()),
        "macs_10s": vltrim.count_macs(model, audio_inputs(1, TEN)),
        "front_end_params_share": split["front_end"]["params_share"],
        "front_end_macs_share": split["front_end"]["macs_share"],
    }


def run_study(a: argparse.Namespace) -> None:
    model, record = speech_teacher.load_teacher()
    train, test = speech_teacher.split("train"), speech_teacher.split("test").subset(100)
    key = hashlib.sha1(json.dumps([a.retrain_steps, a.lr, a.batch], sort_keys=True).encode()).hexdigest()[:8]
    out = CACHE / f"speech-{key}"
    res = vltrim.study(
        model,
        task="audio-classification",
        train_data=train,
        eval_data=test,
        methods=a.methods.split(","),
        ratios=[float(r) for r in a.ratios.split(",")],
        retrain_steps=a.retrain_steps,
        out=out,
        batch_size=a.batch,
        compress_options={"retrain_lr": a.lr},
        latency_batches=(1, 32),
        latency_rounds=a.rounds,
    )
    first = res.rows[0]["cell"]  # the original's row comes first
    cells = {first: model}
    for r in res.rows[1:]:
        if r.get("metric") is not None and (out / "models" / r["cell"]).is_dir():
            cells[r["cell"]] = vltrim.load(out / "models" / r["cell"])
    ten = timed(cells, TEN, a.rounds)
    rows = []
    for r in res.rows:
        c = r.get("cell")
        extra = costs(cells[c]) if c in cells else {}
        rows.append({**r, **extra, **({"latency_10s_ms": ten[c]["latency_ms"], "speedup_10s": ten[c]["speedup"]}
                                      if c in ten else {})})  # fmt: skip
    base = {"teacher": record, **costs(model), "latency_10s_ms": ten[first]["latency_ms"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speech_study.json").write_text(json.dumps({"original": base, "rows": rows}, indent=1, default=str))
    for f in out.glob("*.png"):
        shutil.copy(f, RESULTS / f"speech_study_{f.name}")
    (RESULTS / "speech_study.md").write_text(study_table(base, rows, a))
    print((RESULTS / "speech_study.md").read_text())


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def study_table(base: dict, rows: list[dict], a: argparse.Namespace) -> str:
    t = base["teacher"]
    lines = [
        f"`python benchmarks/speech_study.py study` (retrain {a.retrain_steps} steps, batch {a.batch}, lr {a.lr}; "
        f"top-1 on 2,000 test clips of unseen voices; teacher test top-1 on all {7260:,}: {t['test_top1']:.3f})",
        "",
        "| method | ratio | top-1 (of teacher) | params | MACs 1 s | front end share of MACs | speedup 1 s b1 | "
        "speedup 1 s b32 | speedup 10 s b1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("metric") is None:
            lines.append(f"| {r['method']} | {_f(r.get('ratio'), 'g')} | {r.get('achieved')} | | | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {_f(r.get('ratio'), 'g')} | {r['metric']:.3f} ({r['metric_vs_teacher']:.1%}) | "
            f"{_f(r.get('params'), ',')} | {_f(r.get('macs_1s'), ',')} | {_f(r.get('front_end_macs_share'), '.1%')} | "
            f"{_f(r.get('speedup_b1'), '.2f')}x | {_f(r.get('speedup_b32'), '.2f')}x | {_f(r.get('speedup_10s'), '.2f')}x |"
        )
    lines += ["", f"Latency: interleaved runs, median of {a.rounds} rounds; {machine_line()}.", ""]
    return "\n".join(lines)


def run_base(a: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = tf.HubertModel(tf.HubertConfig()).eval()  # HuBERT-base's config: the defaults
    cells = {"original": model}
    for r in (0.25, 0.5, 0.75):
        cells[f"l1 {r:g}"] = vltrim.apply_plan(model, vltrim.plan(model, method="l1", target=r))
    cells["distill (1 layer)"] = vltrim.student(model, layers=1)
    rows = {n: costs(m) for n, m in cells.items()}
    for samples, tag in ((ONE, "1s"), (TEN, "10s")):
        for n, t in timed(cells, samples, a.rounds).items():
            rows[n].update({f"latency_{tag}_ms": t["latency_ms"], f"speedup_{tag}": t["speedup"]})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speech_base.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "`python benchmarks/speech_study.py base` (HubertModel, HuBERT-base config, random weights; batch 1)",
        "",
        "| model | params | MACs 1 s | MACs 10 s | front end share of params / MACs (1 s) | CNN alone | latency 1 s ms "
        "| speedup 1 s | latency 10 s ms | speedup 10 s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in rows.items():
        lines.append(
            f"| {n} | {r['params']:,} | {r['macs_1s']:,} | {r['macs_10s']:,} | {r['front_end_params_share']:.1%} / "
            f"{r['front_end_macs_share']:.1%} | {r['cnn_params_share']:.1%} / {r['cnn_macs_share']:.1%} | "
            f"{r['latency_1s_ms']:.1f} | {r['speedup_1s']:.2f}x | "
            f"{r['latency_10s_ms']:.1f} | {r['speedup_10s']:.2f}x |"
        )
    lines += ["", f"Latency: one interleaved run per clip length, median of {a.rounds} rounds; {machine_line()}.", ""]
    (RESULTS / "speech_base.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["study", "base"])
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--ratios", default="0.5,0.75")
    ap.add_argument("--retrain-steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    (run_study if a.what == "study" else run_base)(a)


if __name__ == "__main__":
    main()
