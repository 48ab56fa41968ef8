"""Train the three small reference BLIP teachers that benchmarks/blip.py prunes (CPU, deterministic by seed).

    python benchmarks/train_blip_teachers.py                 # trains what is missing; writes results/blip_teachers.md
    python benchmarks/train_blip_teachers.py --force         # retrains all three
    python benchmarks/train_blip_teachers.py --tasks vqa     # one of them

One BlipConfig for all three (vision: 32x32 images in 8x8 patches, 17 tokens; vision and text: width 128, 4 layers,
4 heads, FFN 512, initializer_range 0.02), trained from scratch with vltrim's own task losses (`vltrim.train.train`,
AdamW, warm-up then cosine) on the built-in scene data: SceneCaptions for itm-retrieval (BlipForImageTextRetrieval)
and captioning (BlipForConditionalGeneration), SceneQA for vqa (BlipForQuestionAnswering); as BLIP fine-tunes VQA
from its pre-trained model, the vqa teacher starts from the retrieval teacher's vision tower and image-grounded text
encoder (trained from scratch, it learnt only the answers' language prior: 0.400 accuracy vs 0.405 blind). Each is saved with
`vltrim.save` to ~/.cache/vltrim/blip_teachers/<task>/ (with <task>.json beside it: its held-out metrics), and a
finished teacher is not retrained. The held-out metric is on the test split (descriptions never seen in training),
next to a blind baseline (vqa: the most frequent training answer of each question text; captioning: the most frequent
training caption for every image; retrieval: the hit rate of a random ranking), so a teacher that does not use the
image shows."""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_line  # noqa: E402

import vltrim  # noqa: E402
from vltrim.data.scenes import SceneCaptions, SceneQA, tokenizer  # noqa: E402
from vltrim.tasks import get_task  # noqa: E402
from vltrim.tasks.text_metrics import caption_scores  # noqa: E402
from vltrim.train import train  # noqa: E402

ROOT = Path.home() / ".cache" / "vltrim" / "blip_teachers"
RESULTS = Path(__file__).parent / "results"
IMAGE_SIZE, PATCH, MAX_LENGTH = 32, 8, 24
WIDTH, LAYERS, HEADS, FFN = 128, 4, 4, 512
TRAIN_SIZE, TEST_SIZE = 16000, 400
CLASSES = {
    "itm-retrieval": "BlipForImageTextRetrieval",
    "vqa": "BlipForQuestionAnswering",
    "captioning": "BlipForConditionalGeneration",
}
STEPS = {"itm-retrieval": 1000, "vqa": 3000, "captioning": 1200}  # vqa: 800 steps stayed near the blind baseline
INIT_FROM = {"vqa": "itm-retrieval"}  # BLIP fine-tunes VQA from its pre-trained image-grounded text encoder
BATCH, LR, SEED = 32, 5e-4, 0
HEADLINE = {"itm-retrieval": ["mean_R@1", "itc_mean_R@1"], "vqa": ["accuracy"], "captioning": ["CIDEr", "BLEU-4"]}


def config() -> tf.BlipConfig:
    """Vision and text of one width (the VQA answer decoder cross-attends to the question encoder, built with
    ``encoder_hidden_size``, so the vision width must equal the text width)."""
    tok = tokenizer(MAX_LENGTH)
    tower = dict(hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN)
    vision = dict(tower, image_size=IMAGE_SIZE, patch_size=PATCH, initializer_range=0.02)  # default 1e-10: blind
    text = dict(
        tower,
        vocab_size=len(tok),
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        sep_token_id=tok.eos_token_id,
        encoder_hidden_size=WIDTH,
    )
    return tf.BlipConfig(vision_config=vision, text_config=text, projection_dim=128, image_text_hidden_size=128)


def datasets(task: str, train_size: int = TRAIN_SIZE, test_size: int = TEST_SIZE, seed: int = 0):
    """(train, test) of a task's scene data: test descriptions are never seen in training."""
    make = SceneQA if task == "vqa" else SceneCaptions
    kw = dict(seed=seed, image_size=IMAGE_SIZE, max_length=MAX_LENGTH)
    return make("train", train_size, **kw), make("test", test_size, **kw)


def blind_baseline(task: str, train, test) -> dict[str, float]:
    """What a model that ignores the image scores on ``test``."""
    if task == "vqa":
        by_q = collections.defaultdict(collections.Counter)
        for q, a in zip(train.questions, train.answer_texts):
            by_q[q][a] += 1
        overall = collections.Counter(train.answer_texts).most_common(1)[0][0]
        guess = [by_q[q].most_common(1)[0][0] if q in by_q else overall for q in test.questions]
        return {"accuracy": sum(g == a for g, a in zip(guess, test.answer_texts)) / len(test)}
    if task == "captioning":
        common = collections.Counter(train.captions).most_common(1)[0][0]
        return caption_scores([common] * len(test), [test.references(i) for i in range(len(test))])
    hits = [int((test.labels == test.labels[i]).sum()) for i in range(len(test))]  # random ranking's R@1
    return {"mean_R@1": sum(hits) / len(hits) / len(test)}


def teacher_dir(task: str) -> Path:
    return ROOT / task


def load_teacher(task: str):
    """The saved teacher of ``task`` and its record (metrics, params, training time)."""
    record = json.loads((ROOT / f"{task}.json").read_text())
    return vltrim.load(teacher_dir(task)), record


def finished(task: str) -> bool:
    return (ROOT / f"{task}.json").exists() and (teacher_dir(task) / "model.safetensors").exists()


def train_teacher(task: str, steps: int, force: bool = False) -> dict:
    if finished(task) and not force:
        record = json.loads((ROOT / f"{task}.json").read_text())
        print(f"{task}: finished teacher in {teacher_dir(task)} (--force retrains)", flush=True)
        return record
    torch.manual_seed(SEED)
    model = getattr(tf, CLASSES[task])(config())
    source = INIT_FROM.get(task)
    if source is not None:  # vision tower and image-grounded text encoder from the trained retrieval teacher
        if not finished(source):
            train_teacher(source, STEPS[source])
        donor, _ = load_teacher(source)
        model.vision_model.load_state_dict(donor.vision_model.state_dict())
        model.text_encoder.load_state_dict(donor.text_encoder.state_dict())
    train_data, test_data = datasets(task)
    spec = get_task(task)
    t0 = time.time()
    losses = train(
        model, train_data, spec.loss, steps, lr=LR, batch_size=BATCH, seed=SEED, desc=f"{task} teacher", progress=False
    )
    seconds = time.time() - t0
    metrics = spec.evaluate(model, test_data)
    record = {
        "task": task,
        "class": CLASSES[task],
        "params": vltrim.count_params(model),
        "steps": steps,
        "batch_size": BATCH,
        "lr": LR,
        "train_size": TRAIN_SIZE,
        "test_size": TEST_SIZE,
        "train_seconds": round(seconds),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "metrics": metrics,
        "blind": blind_baseline(task, train_data, test_data),
        "threads": torch.get_num_threads(),
        "init": f"vision and text encoder of the {source} teacher" if source else "random",
    }
    card = (
        f"Reference BLIP teacher ({task}) trained on vltrim's built-in scene data by benchmarks/train_blip_teachers.py."
    )
    vltrim.save(model.eval(), teacher_dir(task), card_extra=card)
    (ROOT / f"{task}.json").write_text(json.dumps(record, indent=1))
    print(f"{task}: {json.dumps(record)}", flush=True)
    return record


def table(records: list[dict]) -> str:
    rows = [
        "| task | class | initialised from | params | train steps (batch 32) | training time | held-out metric (test) "
        "| blind baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        keys = HEADLINE[r["task"]]
        metric = ", ".join(f"{k} {r['metrics'][k]:.3f}" for k in keys)
        blind = ", ".join(f"{k} {r['blind'][k]:.3f}" for k in keys if k in r["blind"])
        rows.append(
            f"| {r['task']} | {r['class']} | {r.get('init', 'random')} | {r['params']:,} | {r['steps']:,} | {r['train_seconds'] / 60:.1f} min "
            f"({r['threads']} thread) | {metric} | {blind} |"
        )
    return (
        f"**Reference BLIP teachers** (trained by benchmarks/train_blip_teachers.py on the built-in scenes, from scratch "
        f"except vqa, which starts from the retrieval teacher's vision tower and text encoder: "
        f"{TRAIN_SIZE:,} training items, AdamW LR {LR:g}, warm-up then cosine, seed {SEED}; vision 32x32 in 8x8 "
        f"patches; every tower width {WIDTH}, {LAYERS} layers, {HEADS} heads, FFN {FFN}; metrics on {TEST_SIZE} test "
        f"items whose scene descriptions are never seen in training; blind baseline: vqa the most frequent training "
        f"answer of each question text, captioning the most frequent training caption for every image, retrieval a "
        f"random ranking; training time: two teachers trained at a time, one thread each, beside other jobs on the "
        f"shared machine, so times are indicative):\n\n" + "\n".join(rows) + f"\n\nTrained on: {machine_line()}.\n"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(CLASSES), choices=list(CLASSES))
    ap.add_argument("--steps", type=int, default=None, help="training steps of each (default: per task, STEPS)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--force", action="store_true", help="retrain even when a finished teacher exists")
    ap.add_argument("--no-report", action="store_true", help="do not (re)write results/blip_teachers.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ROOT.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        train_teacher(task, args.steps or STEPS[task], args.force)
    if not args.no_report and all(finished(t) for t in CLASSES):
        records = [json.loads((ROOT / f"{t}.json").read_text()) for t in CLASSES]
        (RESULTS / "blip_teachers.md").write_text(table(records))
        (RESULTS / "blip_teachers.json").write_text(json.dumps(records, indent=1))
        print(table(records))
