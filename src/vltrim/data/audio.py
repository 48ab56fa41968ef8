"""Audio clips for speech models: files read and checked (decodable, not empty, mono, sampled at least at the model's
rate), resampled to the model's rate and cut or padded to one length, as ``{"input_values", "label"}`` items.

Files are read with soundfile (WAV, FLAC, OGG; ``pip install soundfile``), or, without it, WAV files with Python's own
``wave`` module. Every file is checked when a dataset is built, so a bad file is named before any work starts: a file
that cannot be decoded, an empty one, a stereo one (vltrim does not guess how to mix channels) and one sampled below
the model's rate (upsampling leaves the top of the band empty, which a model trained on full-band audio has never
heard) are refused. Higher rates are resampled (windowed-sinc, see `resample`)."""

from __future__ import annotations

import functools
import io
import math
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vltrim.data.manifest import MissingField, read_rows

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}
SAMPLING_RATE = 16_000  # what HuBERT, wav2vec 2.0 and WavLM read
CLIP_SECONDS = 1.0  # default clip length: a spoken command
SHOWN_BAD_FILES = 5


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: sampling rate, channels and samples per channel."""

    rate: int
    channels: int
    frames: int


def _soundfile() -> Any:
    try:
        import soundfile
    except (ImportError, OSError):  # OSError: the package is there but its libsndfile is not
        return None
    return soundfile


def audio_info(source: str | Path | bytes) -> AudioInfo:
    """The header of an audio file (a path, or the file's bytes)."""
    sf = _soundfile()
    f = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    if sf is not None:
        i = sf.info(f)
        return AudioInfo(int(i.samplerate), int(i.channels), int(i.frames))
    with wave.open(f if isinstance(f, io.BytesIO) else str(f), "rb") as w:
        if w.getsampwidth() not in (1, 2, 4):
            raise ValueError(f"{8 * w.getsampwidth()}-bit WAV needs soundfile (pip install soundfile)")
        return AudioInfo(w.getframerate(), w.getnchannels(), w.getnframes())


def _decode(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Samples [frames, channels] as float32 in [-1, 1], and the rate."""
    sf = _soundfile()
    f = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    if sf is not None:
        data, rate = sf.read(f, dtype="float32", always_2d=True)
        return data, int(rate)
    with wave.open(f, "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width not in (1, 2, 4):
        raise ValueError(f"{8 * width}-bit WAV needs soundfile (pip install soundfile)")
    kind = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    x = np.frombuffer(raw, dtype=kind).astype(np.float32)
    x = (x - 128) / 128 if width == 1 else x / float(2 ** (8 * width - 1))
    return x.reshape(-1, channels), rate


def audio_problem(source: str | Path | bytes, rate: int = SAMPLING_RATE) -> str | None:
    """Why this file cannot feed a model that reads mono audio at ``rate`` Hz, or None when it can."""
    if not isinstance(source, bytes) and not Path(source).is_file():
        return "does not exist" + (" (it is a directory)" if Path(source).is_dir() else "")
    try:
        info = audio_info(source)
    except Exception as e:  # noqa: BLE001 - soundfile and wave raise several kinds on a broken file
        hint = "" if _soundfile() is not None else "; without soundfile only PCM WAV is read (pip install soundfile)"
        return f"cannot be decoded ({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}){hint}"
    if info.frames <= 0:
        return "is empty (no samples)"
    if info.channels != 1:
        return (
            f"has {info.channels} channels: vltrim reads mono clips and does not guess how to mix them; "
            "mix it down first (e.g. sox in.wav out.wav remix -)"
        )
    if info.rate < rate:
        return (
            f"is sampled at {info.rate} Hz, below the model's {rate} Hz: upsampled, it would lack the upper band the "
            f"model was trained on; use audio recorded at {rate} Hz or more"
        )
    return None


def verify_audio(files: Sequence[Path], source: str | Path, rate: int = SAMPLING_RATE) -> None:
    """Refuse a dataset with an unreadable, empty, stereo or under-sampled file, naming the files (up to 5) and why."""
    bad = [(f, why) for f in files if (why := audio_problem(f, rate)) is not None]
    if bad:
        shown = "; ".join(f"{f} {why}" for f, why in bad[:SHOWN_BAD_FILES])
        more = f" (and {len(bad) - SHOWN_BAD_FILES} more)" if len(bad) > SHOWN_BAD_FILES else ""
        raise ValueError(f"{source}: {len(bad)} of {len(files)} audio files cannot be used: {shown}{more}")


MAX_KERNEL = 4_000_000  # taps of a resampling kernel: rates whose ratio reduces to large numbers are refused


def resample(x: torch.Tensor, orig: int, new: int, zeros: int = 6, rolloff: float = 0.99) -> torch.Tensor:
    """``x`` (samples, last dim) from ``orig`` Hz to ``new`` Hz by band-limited (Hann-windowed sinc) interpolation,
    ``zeros`` zero crossings each side, the cut-off at ``rolloff`` x the lower Nyquist frequency."""
    if orig == new:
        return x
    kernel, width, o, n = _sinc_kernel(orig, new, zeros, rolloff)
    flat = x.reshape(-1, 1, x.shape[-1])
    y = F.conv1d(F.pad(flat, (width, width + o)), kernel.to(x.dtype)[:, None], stride=o)
    y = y.transpose(1, 2).reshape(flat.shape[0], -1)[:, : math.ceil(n * x.shape[-1] / o)]
    return y.reshape(*x.shape[:-1], -1)


@functools.lru_cache(maxsize=8)
def _sinc_kernel(orig: int, new: int, zeros: int, rolloff: float) -> tuple[torch.Tensor, int, int, int]:
    """The polyphase kernel [new', taps] of a rate change (rates reduced by their gcd to orig', new'), its padding
    width and the reduced rates (computed once per rate pair)."""
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    base = min(o, n) * rolloff
    width = math.ceil(zeros * o / base)
    if n * (2 * width + o) > MAX_KERNEL:
        raise ValueError(
            f"resampling {orig} Hz to {new} Hz needs a {n} x {2 * width + o} kernel (the rates share only a factor "
            f"{g}); convert the audio to a common rate first (e.g. sox in.wav -r {new} out.wav)"
        )
    t = torch.arange(0, -n, -1, dtype=torch.float64)[:, None] / n
    t = (t + torch.arange(-width, width + o, dtype=torch.float64) / o) * base
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * base / o
    return kernel.float(), width, o, n


def fit_length(x: torch.Tensor, samples: int) -> torch.Tensor:
    """The middle ``samples`` of a longer clip, or a shorter one centred between zeros."""
    n = x.shape[-1]
    if n >= samples:
        start = (n - samples) // 2
        return x[..., start : start + samples]
    left = (samples - n) // 2
    return F.pad(x, (left, samples - n - left))


def read_audio(source: str | Path | bytes, rate: int = SAMPLING_RATE, name: str | None = None) -> torch.Tensor:
    """One mono clip as float32 samples at ``rate`` Hz (resampled from a higher rate); a file `audio_problem`
    refuses raises ValueError naming it (``name``: how to call a file given as bytes)."""
    where = name or str(source if not isinstance(source, bytes) else "audio bytes")
    why = audio_problem(source, rate)
    if why is not None:
        raise ValueError(f"{where} {why}")
    data, orig = _decode(source)
    return resample(torch.from_numpy(np.ascontiguousarray(data[:, 0])), orig, rate)


def normalized(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance (what a feature extractor with do_normalize gives the model)."""
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)


@dataclass(frozen=True)
class ClipOptions:
    """How clips are prepared for the model: its rate, the clip length and per-clip normalisation."""

    rate: int = SAMPLING_RATE
    seconds: float = CLIP_SECONDS
    normalize: bool = False

    @property
    def samples(self) -> int:
        return round(self.rate * self.seconds)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Cut to the clip length, normalised over its real samples (as a feature extractor does after truncating),
        then padded to the clip length."""
        x = fit_length(x, self.samples) if x.shape[-1] > self.samples else x
        return fit_length(normalized(x) if self.normalize else x, self.samples)


class AudioClips(Dataset):
    """Labelled audio files as ``{"input_values": float32[samples], "label": int}``, every file checked first."""

    def __init__(self, items: Sequence[tuple[Path, int]], source: str | Path, options: ClipOptions | None = None):
        if not items:
            raise ValueError(f"{source} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
        self.items, self.options = list(items), options or ClipOptions()
        verify_audio([p for p, _ in self.items], source, self.options.rate)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        path, label = self.items[i]
        x = read_audio(path, self.options.rate)
        return {"input_values": self.options.prepare(x), "label": torch.tensor(label)}


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def folder_files(root: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(file, class index) of every audio file in ``root/<class>/`` (sub-folders included), classes in the given
    order; a class folder with no audio file is an error naming it."""
    items = []
    for label, name in enumerate(classes):
        d = root / name
        if not d.is_dir():
            continue
        files = sorted(p for p in d.rglob("*") if p.is_file() and _visible(p) and p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise ValueError(
                f"{d} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}); "
                "an audio folder is root/<class>/<clips>"
            )
        items += [(p, label) for p in files]
    return items


AUDIO_KEYS = ("audio", "path", "file")  # a manifest's column of audio files: the first one its first row has


def manifest_files(path: Path) -> list[tuple[Path, str]]:
    """(audio file, class name) rows of a .csv / .jsonl manifest with an 'audio' (or 'path' / 'file') column and a
    'label' column; relative paths are relative to the manifest."""
    for key in AUDIO_KEYS:  # the first key the first row has; a later row without it is named as it is
        try:
            return read_rows(path, key, [("label", "label")], file_what="audio file")
        except MissingField as e:
            if not (str(e).startswith(f"{path} row 1 ") and f"lacks '{key}'" in str(e)):
                raise
    raise MissingField(f"{path}: its rows name no audio file (a column {' / '.join(map(repr, AUDIO_KEYS))})")
