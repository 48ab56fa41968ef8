"""A deterministic, offline spoken-command data set (20 classes: ten digits, ten commands) rendered with Debian TTS.

Every word is spoken by each "voice" = (engine, voice, variant): the espeak-ng English accents crossed with its voice
variants (each with a seeded speaking rate and pitch) plus every flite voice. Each (voice, word) is rendered once and
then turned into a few seeded sox variants (tempo, pitch, optional light reverb) and optional seeded white / pink
noise at 10-30 dB SNR, each trimmed of silence and centred in exactly 1.0 s of 16 kHz mono 16-bit PCM. The split is
by voice family (test and val voices, and their near-duplicate variants, never appear in train), stratified by
engine and gender. Meant for training and evaluating small speech classifiers (HuBERT-style) without a download.

    python benchmarks/speech_commands.py                      # ~49k clips into ~/.cache/vltrim/speech_commands
    python benchmarks/speech_commands.py --max-voices 40      # a quick subset
    python benchmarks/speech_commands.py --out DIR --variants 2 --seed 1 --jobs 2 --verify

Layout: <root>/<split>/<class>/<engine>-<voice>-<variant>-<k>.wav and <root>/manifest.csv (path,label,split,voice).
A second run with the same settings reuses the files (<root>/settings.json); the summary goes to
benchmarks/results/speech_commands_data.md. Needs espeak-ng, flite and sox (installed with apt-get when missing).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
import wave
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

VERSION = 2  # bump when the rendering recipe changes: cached renders are then redone
TOOLS = ("espeak-ng", "flite", "sox")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
CLASSES = DIGITS + COMMANDS
SPLITS = ("train", "val", "test")
SHARES = {"train": 0.70, "val": 0.15, "test": 0.15}
SR = 16000
LENGTH = SR  # exactly 1.0 s
MIN_SAMPLES = SR // 20  # a render shorter than 50 ms of sound counts as empty
SILENCE = ["silence", "1", "0.005", "-50d"]  # sox: drop everything before the first 5 ms above -50 dBFS
FLITE_SKIP = {"awb_time": "limited-domain voice (it only speaks clock times)"}
RESULTS = Path(__file__).resolve().parent / "results" / "speech_commands_data.md"
DEFAULT_ROOT = Path("~/.cache/vltrim/speech_commands").expanduser()


@dataclass(frozen=True)
class Voice:
    """One speaker: engine + voice + variant, with its split and (espeak only) its seeded rate and pitch."""

    engine: str
    voice: str
    variant: str
    split: str
    family: str
    gender: str
    rate: int = 0
    pitch: int = 0

    @property
    def name(self) -> str:
        """the voice id used in file names and the manifest."""
        return f"{self.engine}-{self.voice}-{self.variant}"


# ---------------------------------------------------------------- tools


def apt_get(args: list[str]) -> bool:
    """Run apt-get (through sudo when not root); True when it succeeded."""
    cmd = ["apt-get", *args]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            print("not root and no sudo: cannot run apt-get", flush=True)
            return False
        cmd = ["sudo", "-n", *cmd]
    print("running:", shlex.join(cmd), flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(cmd, env=env, check=False).returncode == 0


def ensure_tools() -> None:
    """Install espeak-ng, flite and sox with apt-get when missing, so the script runs on a bare Debian box."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not missing:
        print("tools present:", ", ".join(TOOLS), flush=True)
        return
    print("missing tools:", ", ".join(missing), "- installing with apt-get", flush=True)
    install = ["install", "-y", "--no-install-recommends", *TOOLS]
    if shutil.which("apt-get") is None or not (apt_get(install) or (apt_get(["update"]) and apt_get(install))):
        sys.exit(f"cannot install {' '.join(missing)}: install them yourself (apt-get install {' '.join(TOOLS)})")
    still = [t for t in TOOLS if shutil.which(t) is None]
    if still:
        sys.exit(f"apt-get ran but {' '.join(still)} is still missing")


def run_text(cmd: list[str]) -> str:
    """stdout + stderr of a short command, as text."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).strip()


def tool_versions() -> dict[str, str]:
    """One version line per tool, for the settings (cache key) and the report."""
    flite = [line.strip() for line in run_text(["flite", "--version"]).splitlines() if "version" in line]
    return {
        "espeak-ng": run_text(["espeak-ng", "--version"]).splitlines()[0],
        "flite": flite[0] if flite else run_text(["flite", "--version"]),
        "sox": run_text(["sox", "--version"]).splitlines()[0],
    }


# ---------------------------------------------------------------- voices


def table_rows(text: str) -> list[list[str]]:
    """The data rows of an `espeak-ng --voices` table, split on whitespace."""
    return [line.split() for line in text.splitlines()[1:] if line.strip()]


def espeak_accents() -> list[str]:
    """English espeak-ng voices that need no extra data (the mbrola ones need the mbrola package and its voices)."""
    accents = []
    for row in table_rows(run_text(["espeak-ng", "--voices=en"])):
        lang, file = row[1], row[4]
        if lang != "variant" and not file.startswith("mb/") and lang not in accents:
            accents.append(lang)
    return accents


def espeak_variants() -> dict[str, str]:
    """espeak-ng voice variants (file name -> gender M/F), plus the plain voice as 'base'; names with spaces dropped."""
    variants = {"base": "M"}
    for line in run_text(["espeak-ng", "--voices=variant"]).splitlines()[1:]:
        if "!v/" not in line:
            continue
        file = line.split("!v/", 1)[1].split("(")[0].strip()
        if file and " " not in file:
            variants[file] = line.split()[2].split("/")[-1]
    return variants


def flite_voices() -> list[str]:
    """The installed flite voices, minus the limited-domain ones."""
    text = run_text(["flite", "-lv"]).split(":", 1)[-1]
    return [v for v in text.split() if v not in FLITE_SKIP]


def family_of(name: str) -> str:
    """Near-duplicate variants share a family (robosoft2..8, klatt2..6, kal/kal16); m1..m8, f1..f5 stay distinct."""
    base = re.sub(r"\d+$", "", name.lower())
    return name.lower() if len(base) <= 1 else base


def seeded(*parts: object) -> random.Random:
    """A random generator determined by the parts (stable across runs and processes, unlike hash())."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def assign_families(families: dict[str, int], seed: int, stratum: str) -> dict[str, str]:
    """Families -> split, greedily filling the split furthest below its 70/15/15 share (largest families first)."""
    total = sum(families.values())
    order = sorted(families)
    seeded(seed, "split", stratum).shuffle(order)
    order.sort(key=lambda f: -families[f])
    assigned = dict.fromkeys(SPLITS, 0)
    out = {}
    for fam in order:
        split = max(SPLITS, key=lambda s: (SHARES[s] * total - assigned[s], -SPLITS.index(s)))
        out[fam] = split
        assigned[split] += families[fam]
    return out


def espeak_voices(seed: int) -> list[Voice]:
    """Accents x variants; a variant family is in one split, so every split gets every accent."""
    accents, variants = espeak_accents(), espeak_variants()
    split_of: dict[str, str] = {}
    for gender in sorted(set(variants.values())):
        fams = Counter(family_of(v) for v, g in variants.items() if g == gender)
        split_of.update(assign_families(dict(fams), seed, f"espeak-{gender}"))
    voices = []
    for accent in accents:
        for variant, gender in variants.items():
            rng = seeded(seed, "espeak", accent, variant)
            fam = family_of(variant)
            voices.append(
                Voice("espeak", accent, variant, split_of[fam], fam, gender, rng.randint(120, 200), rng.randint(25, 75))
            )
    return voices


def flite_voice_list(seed: int) -> list[Voice]:
    """Every flite voice, split by family (kal and kal16 are one speaker)."""
    names = flite_voices()
    split_of = assign_families(dict(Counter(family_of(v) for v in names)), seed, "flite")
    return [Voice("flite", v, "none", split_of[family_of(v)], family_of(v), "?") for v in names]


def all_voices(seed: int, max_voices: int | None) -> list[Voice]:
    """Every voice, or a per-split proportional subset (flite first, then a seeded shuffle) for quick runs."""
    voices = flite_voice_list(seed) + espeak_voices(seed)
    if not max_voices or max_voices >= len(voices):
        return voices
    keep = []
    for split in SPLITS:
        flite = [v for v in voices if v.split == split and v.engine == "flite"]
        espeak = [v for v in voices if v.split == split and v.engine == "espeak"]
        seeded(seed, "subset", split).shuffle(espeak)
        keep += (flite + espeak)[: max(1, round(max_voices * SHARES[split]))]
    return keep


# ---------------------------------------------------------------- rendering


def engine_wav(voice: Voice, word: str) -> bytes:
    """The engine's raw WAV of one word (empty bytes when the engine fails)."""
    if voice.engine == "espeak":
        spec = voice.voice if voice.variant == "base" else f"{voice.voice}+{voice.variant}"
        cmd = ["espeak-ng", "-v", spec, "-s", str(voice.rate), "-p", str(voice.pitch), "--stdout", word]
    else:
        cmd = ["flite", "-voice", voice.voice, "-t", word, "-o", "/dev/stdout"]
    out = subprocess.run(cmd, capture_output=True, check=False)
    return out.stdout if out.returncode == 0 else b""


def augment_params(voice: Voice, word: str, k: int, seed: int) -> dict:
    """The seeded sox / noise settings of variant k of (voice, word)."""
    rng = seeded(seed, "augment", voice.name, word, k)
    return {
        "tempo": round(rng.uniform(0.85, 1.15), 3),
        "cents": rng.randint(-300, 300),
        "reverb": rng.randint(10, 50) if rng.random() < 0.3 else 0,
        "room": rng.randint(10, 60),
        "gain_db": round(rng.uniform(-6.0, -1.0), 2),
        "noise": rng.choice(["white", "pink"]) if rng.random() < 0.5 else "",
        "snr_db": round(rng.uniform(10.0, 30.0), 2),
        "noise_seed": rng.getrandbits(63),
    }


def sox_chain(p: dict) -> list[str]:
    """sox: tempo, pitch, optional light reverb, 16 kHz mono, peak gain, then trim silence at both ends."""
    effects = ["tempo", "-s", str(p["tempo"]), "pitch", str(p["cents"])]
    if p["reverb"]:
        effects += ["reverb", str(p["reverb"]), "50", str(p["room"])]
    effects += ["channels", "1", "rate", "-h", str(SR), "norm", str(p["gain_db"])]
    return effects + SILENCE + ["reverse", *SILENCE, "reverse"]


def run_sox(raw: bytes, p: dict) -> np.ndarray:
    """The sox-processed clip as int16 samples (-R: repeatable, -D: no dither, so the output is deterministic)."""
    out_fmt = ["-t", "raw", "-r", str(SR), "-b", "16", "-e", "signed-integer", "-c", "1", "-"]
    cmd = ["sox", "-R", "-D", "-V1", "-t", "wav", "-", *out_fmt, *sox_chain(p)]
    out = subprocess.run(cmd, input=raw, capture_output=True, check=False)
    return np.frombuffer(out.stdout, dtype="<i2") if out.returncode == 0 else np.zeros(0, dtype="<i2")


def fit_length(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """Centre-pad with zeros or centre-crop to exactly 1.0 s; also says whether it cropped."""
    if len(x) >= LENGTH:
        start = (len(x) - LENGTH) // 2
        return x[start : start + LENGTH], len(x) > LENGTH
    out = np.zeros(LENGTH, dtype=x.dtype)
    start = (LENGTH - len(x)) // 2
    out[start : start + len(x)] = x
    return out, False


def noise(kind: str, n: int, seed: int) -> np.ndarray:
    """Seeded unit-power white or pink (1/f power, shaped in the frequency domain) noise."""
    white = np.random.default_rng(seed).standard_normal(n)
    if kind == "pink":
        spec = np.fft.rfft(white)
        spec[1:] /= np.sqrt(np.arange(1, len(spec)))
        spec[0] = 0
        white = np.fft.irfft(spec, n)
    return white / np.sqrt(np.mean(white**2))


def add_noise(x: np.ndarray, p: dict, n_speech: int) -> np.ndarray:
    """Noise over the whole second at the drawn SNR relative to the speech power, scaled down instead of clipping."""
    y = x.astype(np.float64)
    if p["noise"]:
        power = np.sum(y**2) / max(n_speech, 1)
        y = y + noise(p["noise"], len(y), p["noise_seed"]) * np.sqrt(power / 10 ** (p["snr_db"] / 10))
        y *= min(1.0, 32000 / max(np.abs(y).max(), 1.0))
    return np.clip(np.round(y), -32768, 32767).astype("<i2")


def write_wav(path: Path, x: np.ndarray) -> None:
    """16 kHz mono int16 WAV, written to a temporary name first so an interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(x.astype("<i2").tobytes())
    os.replace(tmp, path)


def clip_path(voice: Voice, word: str, k: int) -> str:
    """The clip's path relative to the root."""
    return f"{voice.split}/{word}/{voice.name}-{k}.wav"


def render_pair(task: tuple[Voice, str, int, int, str]) -> dict:
    """Render one (voice, word): engine once, then the sox variants; skips files already there (resumable)."""
    voice, word, variants, seed, root = task
    paths = [clip_path(voice, word, k) for k in range(variants)]
    if all((Path(root) / p).exists() for p in paths):
        return {"done": paths, "empty": 0, "cropped": 0, "engine_failed": False, "cached": True}
    raw = engine_wav(voice, word)
    if len(raw) <= 44:
        return {"done": [], "empty": variants, "cropped": 0, "engine_failed": True, "cached": False}
    done, empty, cropped = [], 0, 0
    for k, rel in enumerate(paths):
        p = augment_params(voice, word, k, seed)
        x = run_sox(raw, p)
        if len(x) < MIN_SAMPLES or not np.any(x):
            empty += 1
            continue
        y, was_cropped = fit_length(x)
        write_wav(Path(root) / rel, add_noise(y, p, min(len(x), LENGTH)))
        done.append(rel)
        cropped += was_cropped
    return {"done": done, "empty": empty, "cropped": cropped, "engine_failed": False, "cached": False}


# ---------------------------------------------------------------- cache, run, report


def settings_of(args: argparse.Namespace, voices: list[Voice], versions: dict[str, str]) -> dict:
    """Everything the render depends on; a change re-renders."""
    return {
        "version": VERSION,
        "seed": args.seed,
        "variants": args.variants,
        "max_voices": args.max_voices,
        "classes": list(CLASSES),
        "tools": versions,
        "voices": [asdict(v) for v in voices],
    }


def prepare_root(root: Path, settings: dict) -> bool:
    """Reuse the root when its settings match (True), else clear our own outputs and record the new settings."""
    file = root / "settings.json"
    done = all((root / name).exists() for name in ("manifest.csv", "stats.json"))
    if done and file.exists() and json.loads(file.read_text()) == settings:
        return True
    for name in (*SPLITS, "manifest.csv", "stats.json", "settings.json"):
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(settings, indent=1) + "\n")
    return False


def progress(total: int):
    """A tqdm bar when available, else a tiny object printing every ~5 %."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="word", smoothing=0.05)
    except ImportError:
        return PrintProgress(total)


class PrintProgress:
    """Fallback progress: one line every ~5 % of the (voice, word) renders."""

    def __init__(self, total: int) -> None:
        """Remember the total and the start time."""
        self.total, self.n, self.t0, self.step = total, 0, time.time(), max(1, total // 20)

    def update(self, n: int = 1) -> None:
        """Count n renders; print at each 5 % step."""
        self.n += n
        if self.n % self.step == 0 or self.n == self.total:
            print(f"  {self.n}/{self.total} renders, {time.time() - self.t0:.0f} s", flush=True)

    def close(self) -> None:
        """Nothing to release."""


def render_all(voices: list[Voice], args: argparse.Namespace, root: Path) -> dict:
    """Render every (voice, word) with a process pool; returns the clip paths and the counters."""
    tasks = [(v, w, args.variants, args.seed, str(root)) for v in voices for w in CLASSES]
    stats = {"paths": [], "empty": 0, "cropped": 0, "engine_failed": Counter(), "cached_pairs": 0}
    bar = progress(len(tasks))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for task, res in zip(tasks, pool.map(render_pair, tasks, chunksize=16)):
            stats["paths"] += res["done"]
            stats["empty"] += res["empty"]
            stats["cropped"] += res["cropped"]
            stats["cached_pairs"] += res["cached"]
            if res["engine_failed"]:
                stats["engine_failed"][task[0].name] += 1
            bar.update(1)
    bar.close()
    return stats


def write_manifest(root: Path, paths: list[str]) -> list[dict]:
    """manifest.csv (path,label,split,voice), sorted by path."""
    rows = [
        {"path": p, "label": p.split("/")[1], "split": p.split("/")[0], "voice": Path(p).stem.rsplit("-", 1)[0]}
        for p in sorted(paths)
    ]
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split", "voice"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def read_manifest(root: Path) -> list[dict]:
    """The rows of an existing manifest.csv."""
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def verify(root: Path, rows: list[dict]) -> list[str]:
    """Every clip must be a 16 kHz mono int16 WAV of exactly 16000 samples; returns the problems found."""
    bad = []
    for row in rows:
        with wave.open(str(root / row["path"]), "rb") as w:
            got = (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes())
        if got != (SR, 1, 2, LENGTH):
            bad.append(f"{row['path']}: rate, channels, width, frames = {got}")
    return bad


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def split_table(rows: list[dict]) -> list[str]:
    """Markdown: items, voices and classes per split."""
    lines = ["| split | items | voices | classes | espeak voices | flite voices |", "|---|---:|---:|---:|---:|---:|"]
    for split in (*SPLITS, "all"):
        sel = [r for r in rows if split in (r["split"], "all")]
        voices = {r["voice"] for r in sel}
        n_es = sum(v.startswith("espeak-") for v in voices)
        lines.append(
            f"| {split} | {len(sel)} | {len(voices)} | {len({r['label'] for r in sel})} | {n_es} | {len(voices) - n_es} |"
        )
    return lines


def class_table(rows: list[dict]) -> list[str]:
    """Markdown: clips per class and split."""
    count = Counter((r["label"], r["split"]) for r in rows)
    lines = ["| class | " + " | ".join(SPLITS) + " |", "|---|" + "---:|" * len(SPLITS)]
    return lines + [f"| {c} | " + " | ".join(str(count[c, s]) for s in SPLITS) + " |" for c in CLASSES]


def voice_lists(voices: list[Voice]) -> list[str]:
    """Markdown: per split, the flite voices and the espeak variants with the accents each is spoken in."""
    lines = []
    for split in SPLITS:
        sel = [v for v in voices if v.split == split]
        flite = ", ".join(v.voice for v in sel if v.engine == "flite") or "none"
        accents: dict[str, list[str]] = defaultdict(list)
        for v in sel:
            if v.engine == "espeak":
                accents[v.variant].append(v.voice)
        all_acc = sorted({v.voice for v in voices if v.engine == "espeak"})
        groups: dict[str, list[str]] = defaultdict(list)
        for variant, accs in accents.items():
            key = "all accents" if sorted(accs) == all_acc else ", ".join(sorted(accs))
            groups[key].append(variant)
        lines += [f"### {split} ({len(sel)} voices)", "", f"- flite: {flite}"]
        lines += [
            f"- espeak-ng variants ({len(vs)}) x {key}: {', '.join(sorted(vs, key=str.lower))}"
            for key, vs in sorted(groups.items())
        ]
        lines.append("")
    return lines


def write_report(args: argparse.Namespace, root: Path, voices: list[Voice], rows: list[dict], info: dict) -> None:
    """benchmarks/results/speech_commands_data.md: command, counts, voices, tools, machine, wall time."""
    accents = sorted({v.voice for v in voices if v.engine == "espeak"})
    lines = [
        "# Speech commands: a TTS-rendered spoken-command data set",
        "",
        "Written by `benchmarks/speech_commands.py`. 20 classes (ten digits, ten commands); every clip is 16 kHz mono",
        "int16 PCM, exactly 1.0 s (16000 samples). Split by voice family: test and val speakers never occur in train.",
        "",
        f"- command: `{info['command']}`",
        f"- data: `{root}` (`manifest.csv`: path,label,split,voice)",
        f"- settings: seed {args.seed}, {args.variants} sox variants per (voice, word), max voices {args.max_voices}, jobs {args.jobs}",
        f"- render: {info['render']}",
        f"- wall time of this run: {info['wall_s']:.1f} s (render: {info['render_wall_s']:.1f} s)",
        f"- empty renders skipped: {info['empty']}; engine failures: {info['engine_failed']}; clips centre-cropped (longer than 1 s): {info['cropped']}",
        f"- verify: {info['verify']}",
        "",
        "## Counts",
        "",
        *split_table(rows),
        "",
        *class_table(rows),
        "",
        "## Voices",
        "",
        "A voice is (engine, voice, variant). espeak-ng voices get a seeded speaking rate (`-s` 120-200) and pitch",
        f"(`-p` 25-75). espeak-ng accents ({len(accents)}): {', '.join(accents)}. Left out: the mbrola-based English",
        f"voices (need the mbrola package), variants with a space in the name, flite {', '.join(f'`{k}` ({v})' for k, v in FLITE_SKIP.items())}.",
        "",
        *voice_lists(voices),
        "## Tools and machine",
        "",
        *[f"- {k}: {v}" for k, v in info["tools"].items()],
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, {platform.platform()}",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_ROOT, help=f"data root (default {DEFAULT_ROOT})")
    ap.add_argument("--variants", type=int, default=3, help="sox variants per (voice, word) (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the voice settings, split and augmentation")
    ap.add_argument("--max-voices", type=int, default=None, help="keep about this many voices (quick runs)")
    ap.add_argument("--jobs", type=int, default=2, help="rendering processes (default 2)")
    ap.add_argument("--verify", action="store_true", help="read every clip back and check its format and length")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Install the tools, list the voices, render (or reuse) the clips, write the manifest and the report."""
    t0 = time.time()
    args = parse_args(argv)
    root = args.out.expanduser().resolve()
    ensure_tools()
    versions = tool_versions()
    voices = all_voices(args.seed, args.max_voices)
    print(f"{len(voices)} voices x {len(CLASSES)} words x {args.variants} variants -> {root}", flush=True)
    cached = prepare_root(root, settings_of(args, voices, versions))
    if cached:
        rows, stats = read_manifest(root), json.loads((root / "stats.json").read_text())
        print("settings unchanged: reusing the cached render", flush=True)
    else:
        t_render = time.time()
        res = render_all(voices, args, root)
        rows = write_manifest(root, res["paths"])
        stats = {
            "render_wall_s": time.time() - t_render,
            "empty": res["empty"],
            "cropped": res["cropped"],
            "engine_failed": dict(res["engine_failed"]),
            "resumed_pairs": res["cached_pairs"],
        }
        (root / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    problems = verify(root, rows) if args.verify else None
    verdict = (
        "not run (pass --verify)"
        if problems is None
        else (f"{len(problems)} bad clips" if problems else f"all {len(rows)} clips OK")
    )
    render = "reused from cache" if cached else f"rendered ({stats['resumed_pairs']} (voice, word) pairs found on disk)"
    info = {
        "command": shlex.join(["python", "benchmarks/speech_commands.py", *(sys.argv[1:] if argv is None else argv)]),
        "render": render,
        "wall_s": time.time() - t0,
        "render_wall_s": stats["render_wall_s"],
        "empty": stats["empty"],
        "cropped": stats["cropped"],
        "engine_failed": stats["engine_failed"] or "none",
        "verify": verdict,
        "tools": versions,
    }
    write_report(args, root, voices, rows, info)
    summary(rows, info, problems)


def summary(rows: list[dict], info: dict, problems: list[str] | None) -> None:
    """A few lines on stdout: counts per split, skips, time, and where the report is."""
    for split in SPLITS:
        sel = [r for r in rows if r["split"] == split]
        print(
            f"{split:>5}: {len(sel):6d} clips, {len({r['voice'] for r in sel}):4d} voices, {len({r['label'] for r in sel})} classes"
        )
    print(
        f"empty renders skipped: {info['empty']}, engine failures: {info['engine_failed']}, cropped: {info['cropped']}"
    )
    print(f"{info['render']}; wall {info['wall_s']:.1f} s; verify: {info['verify']}")
    for line in (problems or [])[:10]:
        print("  bad:", line)
    print(f"report: {RESULTS}")


if __name__ == "__main__":
    main()
