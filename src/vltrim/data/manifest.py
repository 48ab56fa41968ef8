"""Loaders for a user's own data: image-caption manifests (JSONL / CSV) and class-per-folder images.

Images are read as RGB intensities in [0, 1] before normalisation, whatever their storage:
  * 8-bit modes (1, L, P, RGB, CMYK, YCbCr, ...) go through PIL's RGB conversion;
  * transparency (RGBA, LA, PA, palette or colour-key transparency) is composited onto white, as the
    Hugging Face image processors do;
  * 16-bit greyscale (I;16*) is divided by 65535; 32-bit integer (I) is read as 16-bit too and refused
    when a value lies outside 0..65535;
  * float (F) is taken as [0, 1] intensities when its maximum is <= 1, else as 0..255 intensities;
    NaN, inf, negative values or values above 255 are refused;
  * any other mode (LAB, HSV, ...) is refused. Multi-frame files (GIF, TIFF) use their first frame.
Every image of a dataset is checked when the dataset is built (see `verify_images`), so a bad file fails
at once with its name, not in the middle of a training run.

Images are then resized as CLIP's processor does: the shorter side to the model's input size (bicubic, aspect
ratio kept), then the centre square; or, given ``processor`` (the model's own Hugging Face image processor,
wrapped in `ModelImageProcessor`), exactly as that processor prepares them."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vltrim.checks import integer
from vltrim.checks import path as checked_path

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
EIGHT_BIT_MODES = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LA", "La", "PA", "RGBA", "RGBa"}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
SUPPORTED_MODES = EIGHT_BIT_MODES | SIXTEEN_BIT_MODES | {"F"}
SHOWN_BAD_FILES = 5


def _rgb8(im: Image.Image) -> np.ndarray:
    """An 8-bit image as HxWx3 uint8; transparency is composited onto white (as HF image processors do)."""
    if "A" in im.getbands() or "a" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(im.convert("RGB"))


def _intensities(im: Image.Image, path: Path) -> np.ndarray:
    """A 16-bit, 32-bit integer or float greyscale image as float32 intensities in [0, 1] (rules: module docstring)."""
    a = np.asarray(im).astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"image {path} (mode {im.mode}) contains NaN or inf values")
    lo, hi = float(a.min()), float(a.max())
    if im.mode == "F":
        if lo < 0 or hi > 255:
            raise ValueError(
                f"float image {path} has values in [{lo:g}, {hi:g}]; vltrim reads float images as "
                "intensities in [0, 1] (or 0..255 when the maximum is above 1): rescale it"
            )
        return a if hi <= 1 else a / 255.0
    if lo < 0 or hi > 65535:
        raise ValueError(
            f"integer image {path} (mode {im.mode}) has values in [{lo:g}, {hi:g}], outside the "
            "16-bit range 0..65535 that vltrim reads it in: convert it to 8 or 16 bit"
        )
    return a / 65535.0


def _as_rgb(im: Image.Image, path: Path) -> Image.Image:
    """Any supported image as an 8-bit RGB image, or (16-bit, 32-bit integer, float) as an 'F' greyscale of [0, 1] intensities."""
    if im.mode in EIGHT_BIT_MODES:
        return Image.fromarray(_rgb8(im))
    if im.mode in SIXTEEN_BIT_MODES or im.mode == "F":
        return Image.fromarray(_intensities(im, path))
    raise ValueError(
        f"image {path} has mode {im.mode!r}, which vltrim does not read; supported modes: "
        f"{', '.join(sorted(SUPPORTED_MODES))}"
    )


def resize_crop(im: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic, aspect ratio kept), then the centre ``size`` x ``size`` square, as CLIP's processor does."""
    w, h = im.size
    short = min(w, h)
    nw, nh = max(size, int(size * w / short)), max(size, int(size * h / short))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def _array(im: Image.Image) -> np.ndarray:
    """An RGB or 'F' image as an HxWx3 float32 array of intensities in [0, 1]."""
    if im.mode == "F":
        return np.repeat(np.clip(np.asarray(im, dtype=np.float32), 0, 1)[..., None], 3, axis=2)
    return np.asarray(im, dtype=np.float32) / 255.0


def _pixels(im: Image.Image, path: Path, size: int) -> np.ndarray:
    """Any supported image as a size x size x 3 float32 array of intensities in [0, 1] (see `resize_crop`)."""
    return _array(resize_crop(_as_rgb(im, path), size))


def _rgb_for_processor(im: Image.Image, path: Path) -> Image.Image:
    """Any supported image as an 8-bit RGB PIL image at full size, what Hugging Face image processors take."""
    rgb = _as_rgb(im, path)
    if rgb.mode == "F":
        return Image.fromarray(np.round(_array(rgb) * 255).astype(np.uint8))
    return rgb


Processor = Callable[
    [Image.Image], torch.Tensor
]  # an RGB image -> normalised CHW pixel values (e.g. `ModelImageProcessor`)


class ModelImageProcessor:
    """A Hugging Face image processor (resize, crop, normalise as the model was trained) as an image -> CHW tensor callable."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, im: Image.Image) -> torch.Tensor:
        return torch.as_tensor(self.processor(images=im, return_tensors="pt")["pixel_values"][0]).float()


def image_tensor(
    im: Image.Image,
    where: str | Path,
    size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    processor: Processor | None = None,
) -> torch.Tensor:
    """A PIL image as a normalised CHW float tensor: through ``processor`` when given, else resized and
    centre-cropped to size x size (`resize_crop`) and normalised with ``mean`` / ``std``."""
    if processor is not None:
        return processor(_rgb_for_processor(im, Path(where)))
    t = torch.from_numpy(np.ascontiguousarray(_pixels(im, Path(where), size))).permute(2, 0, 1)
    return (t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def load_image(
    path: str | Path,
    size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    processor: Processor | None = None,
) -> torch.Tensor:
    """An image file as a normalised CHW float tensor (see `image_tensor`): shorter side resized to ``size``
    (bicubic), centre-cropped to size x size; or the model's own ``processor``.
    16-bit, float and transparent images are converted by the rules in this module's docstring."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            return image_tensor(im, path, size, mean, std, processor)
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"cannot read image {path}: {e}") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, EOFError, struct.error, DecompressionBombError...
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def _ends_cleanly(path: Path, fmt: str | None) -> bool:
    """Cheap end-of-file test for formats whose end marks a complete file (JPEG's EOI, GIF's trailer, WebP's RIFF size)."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        n = f.tell()
        if fmt == "WEBP":
            f.seek(4)
            return n >= int.from_bytes(f.read(4), "little") + 8
        f.seek(max(0, n - 64))
        tail = f.read().rstrip(b"\x00\r\n\t ")
    return (fmt in ("JPEG", "MPO") and tail.endswith(b"\xff\xd9")) or (fmt == "GIF" and tail.endswith(b"\x3b"))


def image_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a readable image of a supported mode (None when it is), without a full decode
    where the format allows: PNG's chunk checksums, JPEG / GIF / WebP end markers; else a full decode
    (of the first frame: the only one vltrim reads)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            fmt, mode = im.format, im.mode
            if mode not in SUPPORTED_MODES:
                return f"mode {mode!r} is not supported"
            if mode in SIXTEEN_BIT_MODES or mode == "F":  # rare: decode, and check the value range too
                _intensities(im, path)
                return None
            if fmt == "PNG":
                im.verify()
                return None
        if _ends_cleanly(path, fmt):
            return None
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))  # JPEG decodes at a reduced scale: still reads every byte
            im.load()
    except FileNotFoundError:
        return "file does not exist"
    except Exception as e:  # PIL raises many types for a broken file: every one is a reason to refuse it
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return None


def verify_images(paths: Sequence[Path], source: str | Path) -> None:
    """Check every image (in parallel threads); raise one ValueError naming the bad files and ``source``."""
    paths = list(dict.fromkeys(paths))  # an image listed on several rows is checked once
    workers = min(16, 2 * (os.cpu_count() or 1)) if len(paths) > 32 else 1
    with ThreadPoolExecutor(workers) as pool:
        problems = [(p, why) for p, why in zip(paths, pool.map(image_problem, paths)) if why is not None]
    if problems:
        shown = "; ".join(f"{p} ({why})" for p, why in problems[:SHOWN_BAD_FILES])
        more = f"; and {len(problems) - SHOWN_BAD_FILES} more" if len(problems) > SHOWN_BAD_FILES else ""
        raise ValueError(f"{len(problems)} of {len(paths)} images of {source} cannot be read: {shown}{more}")


def _decoded(path: Path) -> str:
    """The manifest's text (UTF-8, with or without a byte-order mark); a clear error naming the file otherwise."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"manifest {path} is not UTF-8 text (line {line}, byte {e.start}: {data[e.start : e.start + 1]!r}); "
            "save it as UTF-8"
        ) from None


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a JSONL manifest."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except (json.JSONDecodeError, RecursionError, ValueError) as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({str(e)[:200]})") from None
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[int, Any]]:
    """(line number, row dict) of a CSV manifest with a header row."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:
            raise ValueError(f"{path}: the header names the column(s) {twice} twice; which one is meant is ambiguous")
        rows = [(reader.line_num, r) for r in reader]
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    extra = next(((n, line, r[None]) for n, (line, r) in enumerate(rows, 1) if r.get(None)), None)
    if extra:
        n, line, cells = extra
        raise ValueError(
            f"{path} row {n} (line {line}) has {len(cells)} more cell(s) than the header ({cells[0][:40]!r}...): "
            'a caption with a comma must be quoted ("a red, round ball")'
        )
    return rows


class MissingField(ValueError):
    """A manifest row lacks a field the data needs (callers add what their task takes)."""


def _field(path: Path, n: int, line: int, row: dict, key: str, what: str) -> str:
    """Row ``n``'s ``key`` as a non-empty string; a null, empty, missing or non-string value is refused."""
    where = f"{path} row {n} (line {line})"
    if key not in row:
        raise MissingField(f"{where} lacks '{key}' (has {sorted(str(k) for k in row if k is not None)})")
    v = row[key]
    if v is None:
        why = "is null" if path.suffix.lower() == ".jsonl" else "is missing (the row has too few cells)"
        raise ValueError(f"{where}: the {what} field '{key}' {why}")
    if not isinstance(v, str):
        one = "answer" if what == "answer" else "caption"
        raise ValueError(
            f"{where}: the {what} field '{key}' must be a string, got {type(v).__name__} {str(v)[:60]!r}"
            + (f"; one {one} per row: repeat the image on several rows" if isinstance(v, list) else "")
        )
    if not v.strip():
        raise ValueError(f"{where}: the {what} field '{key}' is empty")
    return v


def read_rows(
    path: str | Path, image_key: str, texts: Sequence[tuple[str, str]], file_what: str = "image path"
) -> list[tuple[Any, ...]]:
    """(image path, text, ...) rows of a UTF-8 .jsonl or .csv manifest, one text per (key, what) of ``texts``;
    relative image paths are relative to the manifest (``file_what``: what the file field is called in errors). Every
    field must be a non-empty string: anything else is an error naming the row (a missing field: `MissingField`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ValueError(f"manifest must be .jsonl or .csv, got {path.name}")
    text = _decoded(path)
    rows = _jsonl_rows(path, text) if suffix == ".jsonl" else _csv_rows(path, text)
    like = "{" + ", ".join(f'"{k}": ...' for k in (image_key, *(k for k, _ in texts))) + "}"
    out = []
    for n, (line, r) in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise ValueError(f"{path} row {n} (line {line}) must be a JSON object like {like}, got {type(r).__name__}")
        img = Path(_field(path, n, line, r, image_key, file_what))
        values = [_field(path, n, line, r, key, what) for key, what in texts]
        out.append((img if img.is_absolute() else path.parent / img, *values))
    if not out:
        raise ValueError(f"manifest {path} has no rows")
    return out


def read_manifest(path: str | Path, image_key: str = "image", caption_key: str = "caption") -> list[tuple[Path, str]]:
    """(image path, caption) rows of a UTF-8 .jsonl or .csv manifest; relative image paths are relative to the
    manifest. Every row needs a non-empty string caption and image path: anything else is an error naming the row."""
    return read_rows(path, image_key, [(caption_key, "caption")])


def _checked_images(path: Path, files: Sequence[Path], check: bool) -> None:
    """Every image a manifest lists exists and (``check``) can be read; errors name the manifest."""
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {path} are missing, e.g. {missing[0]}")
    if check:
        verify_images(files, path)


def _check_tokenizer(tokenizer: Any) -> None:
    if not callable(tokenizer):
        raise TypeError(
            f"tokenizer must be callable like a Hugging Face tokenizer (texts -> input_ids, attention_mask), "
            f"got {type(tokenizer).__name__}"
        )


class ImageCaptionManifest(Dataset):
    """Image-caption pairs from a manifest; ``label`` groups identical captions for retrieval metrics.
    Every image is checked when built (``check_images=False`` skips it for data known to be sound);
    ``processor``: the model's own image processor (see `load_image`), else resize + centre crop with ``mean`` / ``std``."""

    def __init__(
        self,
        path: str | Path,
        tokenizer: Callable,
        image_size: int,
        max_length: int = 77,
        image_key: str = "image",
        caption_key: str = "caption",
        mean=CLIP_MEAN,
        std=CLIP_STD,
        check_images: bool = True,
        processor: Processor | None = None,
    ):
        path, image_size = checked_path("path", path), integer("image_size", image_size, 1)
        _check_tokenizer(tokenizer)
        self.rows = read_manifest(path, image_key, caption_key)
        _checked_images(path, [p for p, _ in self.rows], check_images)
        self.captions = [c for _, c in self.rows]
        ids = {c: i for i, c in enumerate(dict.fromkeys(self.captions))}
        self.labels = torch.tensor([ids[c] for c in self.captions])
        enc = tokenizer(
            self.captions, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        self.input_ids, self.attention_mask = enc["input_ids"], enc["attention_mask"]
        self.image_size, self.mean, self.std, self.processor = image_size, mean, std, processor
        self.tokenizer = tokenizer  # decodes generated captions (captioning evaluation)
        self._by_image: dict[Path, list[str]] = {}
        for p, c in self.rows:
            self._by_image.setdefault(p, []).append(c)

    def references(self, i: int) -> list[str]:
        """The captions of every row of item i's image (a COCO-style manifest lists an image once per caption)."""
        return list(self._by_image[self.rows[i][0]])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": load_image(self.rows[i][0], self.image_size, self.mean, self.std, self.processor),
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "label": self.labels[i],
        }


IGNORE_INDEX = -100  # label of a padded answer token: no loss there


def encode_questions(
    tokenizer: Callable, questions: Sequence[str], answers: Sequence[str], max_length: int, answer_length: int | None
) -> dict[str, torch.Tensor]:
    """Questions as input_ids / attention_mask (``max_length`` tokens) and answers as the decoder's
    decoder_input_ids / decoder_attention_mask ('[bos] answer [eos]' then padding) and labels (-100 at padding);
    answers take ``answer_length`` tokens, or (None) as many as the longest answer (at most ``max_length``)."""
    q = tokenizer(list(questions), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    n = answer_length or max_length
    a = tokenizer(list(answers), padding="max_length", truncation=True, max_length=n, return_tensors="pt")
    ids, mask = a["input_ids"], a["attention_mask"]
    if answer_length is None:
        longest = int(mask.sum(1).max()) if len(mask) else 1
        ids, mask = ids[:, :longest], mask[:, :longest]
    return {
        "input_ids": q["input_ids"],
        "attention_mask": q["attention_mask"],
        "decoder_input_ids": ids,
        "decoder_attention_mask": mask,
        "labels": ids.masked_fill(mask == 0, IGNORE_INDEX),
    }


class ImageQuestionManifest(Dataset):
    """Image-question-answer rows of a manifest (.jsonl / .csv with 'image', 'question', 'answer') as VQA items:
    {pixel_values, input_ids, attention_mask (the question), decoder_input_ids, decoder_attention_mask (the answer),
    labels (-100 at padding), answer (an index into ``answers``: the file's distinct answers, sorted)}. Images are
    checked and prepared as `ImageCaptionManifest` does; ``answer_length`` None: the longest answer's tokens."""

    def __init__(
        self,
        path: str | Path,
        tokenizer: Callable,
        image_size: int,
        max_length: int = 77,
        answer_length: int | None = None,
        image_key: str = "image",
        question_key: str = "question",
        answer_key: str = "answer",
        mean=CLIP_MEAN,
        std=CLIP_STD,
        check_images: bool = True,
        processor: Processor | None = None,
    ):
        path, image_size = checked_path("path", path), integer("image_size", image_size, 1)
        answer_length = None if answer_length is None else integer("answer_length", answer_length, 2)
        _check_tokenizer(tokenizer)
        rows = read_rows(path, image_key, [(question_key, "question"), (answer_key, "answer")])
        _checked_images(path, [r[0] for r in rows], check_images)
        self.files = [r[0] for r in rows]
        self.questions, self.answer_texts = [r[1] for r in rows], [r[2] for r in rows]
        self.answers = sorted(set(self.answer_texts))
        index = {a: k for k, a in enumerate(self.answers)}
        self.answer = torch.tensor([index[a] for a in self.answer_texts])
        self.fields = encode_questions(tokenizer, self.questions, self.answer_texts, max_length, answer_length)
        self.tokenizer = tokenizer  # decodes generated answers (vqa evaluation)
        self.image_size, self.mean, self.std, self.processor = image_size, mean, std, processor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = load_image(self.files[i], self.image_size, self.mean, self.std, self.processor)
        return {"pixel_values": image, **{k: v[i] for k, v in self.fields.items()}, "answer": self.answer[i]}


def _visible(p: Path) -> bool:
    """Not hidden: names starting with '.' (.ipynb_checkpoints, .DS_Store, macOS '._' files) are skipped."""
    return not p.name.startswith(".")


class ImageFolder(Dataset):
    """root/<class name>/<image files>: items are pixel_values and the class index; ``classes`` names them
    (sorted folder names, or the ``classes`` given: label i is classes[i], and a folder not among them is refused).
    Hidden folders and files (names starting with '.') are ignored; every image is checked when built;
    ``processor``: the model's own image processor (see `load_image`)."""

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        check_images: bool = True,
        processor: Processor | None = None,
        classes: Sequence[str] | None = None,
    ):
        root, image_size = checked_path("root", root), integer("image_size", image_size, 1)
        if not root.is_dir():
            raise FileNotFoundError(
                f"image folder {root} "
                + ("is a file, not a folder of class folders" if root.exists() else "does not exist")
            )
        folders = sorted(d.name for d in root.iterdir() if d.is_dir() and _visible(d))
        self.classes = list(folders if classes is None else classes)
        _check_folders(root, folders, self.classes)
        index = {name: c for c, name in enumerate(self.classes)}
        self.items = [
            (f, index[name])
            for name in folders
            for f in sorted((root / name).iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and _visible(f)
        ]
        if not self.items:
            raise ValueError(f"no images found under {root}/<class>/ (suffixes {sorted(IMAGE_SUFFIXES)})")
        if check_images:
            verify_images([f for f, _ in self.items], root)
        self.image_size, self.mean, self.std, self.processor = image_size, mean, std, processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        f, c = self.items[i]
        return {
            "pixel_values": load_image(f, self.image_size, self.mean, self.std, self.processor),
            "label": torch.tensor(c),
        }


def _check_folders(root: Path, folders: list[str], classes: list[str]) -> None:
    """Every class folder of ``root`` must be one of ``classes`` (a folder outside them has no label)."""
    unknown = [f for f in folders if f not in classes]
    if unknown:
        shown = ", ".join(classes[:8]) + (f", ... ({len(classes)} in all)" if len(classes) > 8 else "")
        raise ValueError(
            f"image folder {root}: class folder(s) {unknown[:5]} are not among the classes {shown}; "
            "rename them, or remove them"
        )
