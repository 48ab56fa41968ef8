"""Data for each task from what users have, named by one string (what `vltrim compress --data` takes):

  retrieval           'builtin', an image-caption manifest (.jsonl / .csv), an image folder root/<class>/<images>
                      (each image captioned "a photo of a <class>"), or hf:DIR
  classification      an image folder root/<class>/<images> (classes in sorted order), or hf:DIR
  audio-classification an audio folder root/<class>/<clips> (.wav / .flac / .ogg), a manifest (.csv / .jsonl with
                      'audio' (or 'path') and 'label'), or hf:DIR with an audio column and a label column; clips are
                      checked (mono, at least the model's rate), resampled to it and cut or padded to 1 s
  sentence-embedding  a text file (.txt: one sentence per line; .jsonl / .csv: a 'text' or 'sentence' field and an
                      optional 'label'), or hf:DIR; the unpruned model's embeddings are computed once, as the targets
  text-classification a text file (.jsonl / .csv: a 'text' or 'sentence' field and a 'label': class indices or class
                      names, names matched with the model's id2label when it has them), or hf:DIR with a text column
                      and a label column
  itm-retrieval,      'builtin' (rendered scenes with captions, `vltrim.data.scenes`), an image-caption manifest
  captioning          (.jsonl / .csv; a captioning reference is every caption of the same image), or hf:DIR
  vqa                 'builtin' (rendered scenes with questions), an image-question-answer manifest (.jsonl / .csv
                      with 'image', 'question', 'answer'), or hf:DIR
  segmentation        'builtin' (rendered scenes, each object's pixels labelled with its shape), an image + mask
                      folder (root/images/<name>.png|jpg, root/masks/<name>.png: one class index per pixel, 255
                      ignored; every pair checked), or hf:DIR with pixel_values and labels columns, or with an image
                      column and a mask column (annotation / mask / labels ...: images of class indices)

The built-in scenes carry their own word tokenizer (the model's vocabulary must hold it); eval datasets of captioning
and vqa carry the tokenizer that decodes generated text (``.tokenizer``).

hf:DIR is a directory written by ``datasets``' ``save_to_disk`` (a DatasetDict gives its 'train' split to training,
'validation' / 'val' / 'test' to evaluation; hf:DIR/SPLIT picks one): columns the model takes (pixel_values,
input_ids, ...) are used as they are, else an image column, a text column and a label column are prepared here.

Images: the model's own image processor when its directory has preprocessor_config.json, else resized (shorter side)
and centre-cropped to the model's input size (as CLIP's processor does). Tokenizers are read from local directories
only (never downloaded), and one whose vocabulary does not fit the model's embedding table is refused."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from vltrim.arch.inputs import PRIMARY_INPUTS
from vltrim.data.audio import (
    SAMPLING_RATE,
    AudioClips,
    ClipOptions,
    audio_problem,
    folder_files,
    manifest_files,
    read_audio,
)
from vltrim.data.calibration import text_vocab_rows
from vltrim.data.manifest import (
    CLIP_MEAN,
    CLIP_STD,
    ImageCaptionManifest,
    ImageFolder,
    ImageQuestionManifest,
    MissingField,
    ModelImageProcessor,
    _visible,
    encode_questions,
    image_tensor,
)
from vltrim.data.prompts import ClassPrompts
from vltrim.data.scenes import SceneCaptions, SceneQA
from vltrim.data.scenes import tokenizer as scene_tokenizer
from vltrim.data.segmentation import SceneSegments, SegmentationFolder, checked, pair_problem, segment_item
from vltrim.data.sentences import SENTENCE_SUFFIXES, read_sentences
from vltrim.data.synthetic import MEAN, STD, SyntheticCaptions, tokenizer
from vltrim.io.remote_code import transformer_path
from vltrim.tasks.sentence import SentenceDistillData, TokenizedTexts

BUILTIN, HF_PREFIX, REFERENCE = "builtin", "hf:", "reference"
PROMPT_TEMPLATE = "a photo of a {}"
PROCESSOR_FILE = "preprocessor_config.json"
SENTENCE_LENGTH = 256  # sentence-transformers' usual max_seq_length, when the model directory does not say
CAPTION_LENGTH = 77  # CLIP's context
EVAL_SPLITS = ("validation", "val", "valid", "test")
FORMS = {
    "retrieval": "'builtin', an image-caption manifest (.jsonl / .csv with 'image' and 'caption' columns), an image "
    "folder root/<class>/<images>, or hf:DIR (a datasets.save_to_disk directory)",
    "classification": "an image folder root/<class>/<images>, or hf:DIR (a datasets.save_to_disk directory with image and label columns)",
    "audio-classification": "an audio folder root/<class>/<clips> (.wav / .flac / .ogg, mono, at least 16 kHz), a "
    "manifest (.csv / .jsonl with an 'audio' (or 'path') column and a 'label' column; paths relative to it), or hf:DIR "
    "(a datasets.save_to_disk directory with an audio column and a label column)",
    "sentence-embedding": "a text file of sentences (.txt: one per line; .jsonl / .csv: a 'text' field, optional 'label'), "
    "or hf:DIR (a datasets.save_to_disk directory with a text column)",
    "text-classification": "a text file (.jsonl / .csv with a 'text' field and a 'label' field: class indices or class "
    "names), or hf:DIR (a datasets.save_to_disk directory with a text column and a label column)",
    "itm-retrieval": "'builtin' (rendered scenes with captions), an image-caption manifest (.jsonl / .csv with 'image' "
    "and 'caption' columns), or hf:DIR (a datasets.save_to_disk directory with image and caption columns)",
    "captioning": "'builtin' (rendered scenes with captions), an image-caption manifest (.jsonl / .csv with 'image' "
    "and 'caption' columns; an image on several rows has several reference captions), or hf:DIR (a "
    "datasets.save_to_disk directory with image and caption columns)",
    "vqa": "'builtin' (rendered scenes with questions), an image-question-answer manifest (.jsonl / .csv with 'image', "
    "'question' and 'answer' columns), or hf:DIR (a datasets.save_to_disk directory with image, question and answer "
    "columns)",
    "segmentation": "'builtin' (rendered scenes, each object's pixels labelled with its shape), an image + mask folder "
    "(root/images/<name>.png|jpg and root/masks/<name>.png holding one class index per pixel, 255 for ignored pixels), "
    "or hf:DIR (a datasets.save_to_disk directory with an image column and a mask column such as 'annotation', or "
    "with pixel_values and labels columns)",
}
SCENE_TASKS = ("itm-retrieval", "captioning", "vqa")  # the BLIP tasks: built-in data from vltrim.data.scenes
BUILTIN_SIZES = {"train": 8000, "val": 1000}  # items of the built-in scenes per split (rendered in a few seconds)
TEXT_COLUMNS = ("text", "sentence", "caption", "sentence1")
IMAGE_COLUMNS = ("image", "img", "pixel_values")
AUDIO_COLUMNS = ("audio", "path", "file")
TEXTLESS_TASKS = ("classification", "audio-classification", "segmentation")
LABEL_COLUMNS = ("label", "labels")
MASK_COLUMNS = ("annotation", "mask", "labels", "label", "segmentation", "semantic_map", "seg_map")
QUESTION_COLUMNS = ("question",)
ANSWER_COLUMNS = ("answer", "multiple_choice_answer")  # VQAv2's single answer column


def model_directory(spec: str) -> Path | None:
    """The directory of the model ``spec`` names (the transformer folder of a sentence-transformers pipeline);
    None for 'reference', 'tiny:<Class>' or anything that is not a directory."""
    if not Path(spec).is_dir():  # 'reference' and 'tiny:<Class>' name no directory (unless one of that name exists)
        return None
    return Path(spec) / transformer_path(Path(spec))


def image_size(model: nn.Module) -> int | None:
    """The model's input image side (None for a text-only model)."""
    cfg = getattr(model.config, "vision_config", None) or model.config
    size = getattr(cfg, "image_size", None)
    return size if isinstance(size, int) or size is None else int(size[0])


def _dual(model: nn.Module) -> bool:
    return (
        getattr(model.config, "vision_config", None) is not None
        and getattr(model.config, "text_config", None) is not None
    )


def text_length(model: nn.Module, directory: Path | None) -> int:
    """Longest tokenized text: the model's positions, at most 77 for image-text models (CLIP's context) and, for a
    text encoder, its sentence-transformers max_seq_length (else 256)."""
    cfg = getattr(model.config, "text_config", None) or model.config
    positions = getattr(cfg, "max_position_embeddings", None) or 512
    if _dual(model):
        return min(positions, CAPTION_LENGTH)
    return min(positions, _st_length(directory) or SENTENCE_LENGTH)


def _st_length(directory: Path | None) -> int | None:
    """max_seq_length of a sentence-transformers directory (its transformer folder or the pipeline's root)."""
    for d in (directory, directory.parent if directory is not None else None):
        f = d / "sentence_bert_config.json" if d is not None else None
        if f is not None and f.is_file():
            try:
                n = json.loads(f.read_text(encoding="utf-8")).get("max_seq_length")
            except (ValueError, OSError, AttributeError):
                return None
            return n if isinstance(n, int) and n > 0 else None
    return None


# ---------------------------------------------------------------- tokenizers


def load_tokenizer(
    spec: str | None,
    model: nn.Module,
    model_spec: str,
    directory: Path | None,
    max_length: int,
    option: str = "--tokenizer",
) -> Callable:
    """'builtin' (the built-in word tokenizer; the default for the reference model), a local tokenizer directory, or
    (``spec`` None) the model's directory; never downloaded. Refused when its vocabulary exceeds the embedding table."""
    if spec == BUILTIN or (spec is None and model_spec == REFERENCE):
        tok, source = tokenizer(max_length), "builtin (the built-in word tokenizer)"
    else:
        where = spec if spec is not None else directory
        if where is None:
            raise ValueError(
                f"{model_spec} has no directory to read a tokenizer from: pass {option} DIR "
                f"(a local tokenizer directory{', or builtin' if model_spec == REFERENCE else ''})"
            )
        tok, source = _local_tokenizer(str(where), option if spec is not None else "the model directory"), str(where)
    check_vocabulary(tok, model, source, option)
    return tok


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _local_tokenizer(where: str, option: str) -> Callable:
    """AutoTokenizer from a local directory (or the local Hugging Face cache), with no network access; a directory
    without tokenizer files is refused (transformers 5 would build an empty tokenizer from config.json alone)."""
    from transformers import AutoTokenizer

    if Path(where).is_dir() and not any((Path(where) / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(
            f"{option} {where} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): pass --tokenizer DIR "
            "(a local tokenizer directory, e.g. the original model's)"
        )
    try:
        return AutoTokenizer.from_pretrained(where, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, EnvironmentError...
        if not Path(where).is_dir():
            raise ValueError(
                f"{option} {where!r} is not a directory, and vltrim never downloads (no hub access): give a "
                "local tokenizer directory, e.g. the model's, fetched beforehand with `hf download NAME --local-dir DIR`"
            ) from None
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(
            f"{option} {where}: no tokenizer can be read there ({type(e).__name__}: {why}); "
            "pass --tokenizer DIR (a directory with tokenizer.json / vocab files)"
        ) from None


def check_vocabulary(tok: Any, model: nn.Module, source: str, option: str = "--tokenizer") -> None:
    """Refuse a tokenizer whose ids run past the model's token embedding table, naming both sizes."""
    rows, size = text_vocab_rows(model), _vocab_size(tok)
    if rows is not None and size is not None and size > rows:
        raise ValueError(
            f"{option}: tokenizer {source} has a vocabulary of {size} tokens, but {type(model).__name__}'s "
            f"token embedding table has {rows} rows: its ids would index past the table. Use the model's own tokenizer"
        )


def check_token_ids(model: nn.Module, batch: dict[str, Any], option: str, items: Sequence[int]) -> None:
    """Refuse token ids past the model's embedding table in a batch of ``items`` of ``option`` (data tokenized in
    Python with another model's tokenizer), naming the largest id and the table's size."""
    rows, ids = text_vocab_rows(model), batch.get("input_ids") if isinstance(batch, dict) else None
    if rows is None or not torch.is_tensor(ids) or ids.numel() == 0 or int(ids.max()) < rows:
        return
    raise ValueError(
        f"{option}: items {list(items)} hold token id {int(ids.max())}, but {type(model).__name__}'s token "
        f"embedding table has {rows} rows: the text was tokenized with a tokenizer whose vocabulary does not "
        "fit the model. Tokenize with the model's own tokenizer"
    )


def _vocab_size(tok: Any) -> int | None:
    try:
        return len(tok)
    except TypeError:
        return getattr(tok, "vocab_size", None)


# ---------------------------------------------------------------- images and classes


def image_options(model: nn.Module, model_spec: str, directory: Path | None) -> dict[str, Any]:
    """How images are prepared for ``model``: its own processor (preprocessor_config.json in its directory), else
    resize + centre crop to its input size, normalised as the built-in data (reference) or as CLIP."""
    size = image_size(model)
    if directory is not None and (directory / PROCESSOR_FILE).is_file():
        return {"image_size": size, "processor": _processor(directory, size)}
    if model_spec == REFERENCE:
        return {"image_size": size, "mean": (MEAN,) * 3, "std": (STD,) * 3}
    return {"image_size": size, "mean": CLIP_MEAN, "std": CLIP_STD}


def _processor(directory: Path, size: int | None) -> ModelImageProcessor:
    """The model directory's image processor, checked to make images of the model's input size."""
    from transformers import AutoImageProcessor

    file = directory / PROCESSOR_FILE
    try:
        proc = ModelImageProcessor(AutoImageProcessor.from_pretrained(str(directory), local_files_only=True))
        shape = tuple(proc(Image.new("RGB", (2 * (size or 32), size or 32))).shape)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"{file} cannot be used as the model's image processor ({type(e).__name__}: "
            f"{(str(e).strip().splitlines() or [''])[0][:200]})"
        ) from None
    if size is not None and shape[-2:] != (size, size):
        raise ValueError(
            f"{file} makes {shape[-2]}x{shape[-1]} images, but the model takes {size}x{size}: fix its size / crop_size"
        )
    return proc


def model_classes(model: nn.Module) -> list[str] | None:
    """The model's class names by label id, when its config names them (not transformers' LABEL_0, LABEL_1, ...)."""
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(len(id2label))]
    return None if not names or names == [f"LABEL_{i}" for i in range(len(names))] else names


def use_classes(model: nn.Module, names: Sequence[str], source: str) -> list[str]:
    """The class list labels index: the model's own names when its config has them (``names`` must be among them),
    else ``names`` (sorted folder names), recorded in the model's config (id2label / label2id) for the saved model."""
    own = model_classes(model)
    if own is not None:
        unknown = [n for n in names if n not in own]
        if unknown:
            raise ValueError(
                f"{source}: classes {unknown[:5]} are not among the model's labels ({', '.join(own[:8])}"
                f"{', ...' if len(own) > 8 else ''}); name the class folders after the model's labels"
            )
        return own
    n = getattr(model.config, "num_labels", None)
    if n is not None and len(names) > n:
        raise ValueError(
            f"{source} has {len(names)} classes but the model has {n} labels (num_labels); "
            "use a model whose classifier has one output per class"
        )
    labels = list(names) + [f"LABEL_{i}" for i in range(len(names), n or len(names))]
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    return list(names)


def folder_classes(root: Path) -> list[str]:
    """The visible sub-folder names of an image folder, sorted (its classes)."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and _visible(d))


# ---------------------------------------------------------------- one data string -> a dataset


@dataclass
class DataSource:
    """Turns --data / --eval-data strings into datasets for ``task`` on ``model`` (loaded from ``model_spec``)."""

    model: nn.Module
    model_spec: str
    task: str
    tokenizer_spec: str | None = None
    directory: Path | None = field(init=False)

    def __post_init__(self) -> None:
        self.directory = model_directory(self.model_spec)

    @functools.cached_property
    def max_length(self) -> int:
        return text_length(self.model, self.directory)

    @functools.cached_property
    def tokenizer(self) -> Callable:
        return load_tokenizer(self.tokenizer_spec, self.model, self.model_spec, self.directory, self.max_length)

    @functools.cached_property
    def images(self) -> dict[str, Any]:
        return image_options(self.model, self.model_spec, self.directory)

    def check(self, specs: Sequence[str | None], options: Sequence[str] = ("--data", "--eval-data")) -> None:
        """What can be refused before any data is read: a data path that does not exist, a --tokenizer for a task
        without text, a tokenizer that does not fit the model (loaded now when the task reads text from any of ``specs``)."""
        given = [s for s in specs if s is not None]
        for spec, option in zip(specs, options):
            if spec is not None and spec != BUILTIN and not spec.startswith(HF_PREFIX) and not Path(spec).exists():
                raise FileNotFoundError(
                    f"{option} {spec!r} does not exist; the {self.task} task takes {FORMS[self.task]}"
                )
        if self.task in TEXTLESS_TASKS and self.tokenizer_spec is not None:
            raise ValueError(f"--tokenizer: the {self.task} task reads no text; drop it")
        if self.task not in TEXTLESS_TASKS and (self.tokenizer_spec is not None or any(s != BUILTIN for s in given)):
            self.tokenizer  # noqa: B018 - loads and checks it
        if self.task in SCENE_TASKS and BUILTIN in given:
            self._check_scenes_fit(next(o for s, o in zip(specs, options) if s == BUILTIN))

    def open(self, spec: str, option: str, split: str) -> Dataset:
        """The dataset ``spec`` names (see the module docstring); errors name ``option``."""
        if spec == BUILTIN:
            return self._builtin(option, split)
        if spec.startswith(HF_PREFIX):
            return self._from_hf(load_hf(spec, option, split), f"{option} {spec}")
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"{option} {spec!r} does not exist; the {self.task} task takes {FORMS[self.task]}")
        return getattr(self, "_" + self.task.replace("-", "_"))(path, option)

    def _builtin(self, option: str, split: str) -> Dataset:
        if self.task in SCENE_TASKS and _dual(self.model):
            return self._builtin_scenes(option, split)
        if self.task == "segmentation":
            use_classes(self.model, SceneSegments.classes, f"{option} builtin")
            return builtin_segments(split, image_size(self.model))
        if self.task != "retrieval" or not _dual(self.model):
            raise ValueError(
                f"{option} builtin is image-caption data for an image-text model (task retrieval); "
                f"{type(self.model).__name__} with task {self.task} takes {FORMS[self.task]}"
            )
        return builtin_pairs(split, image_size(self.model), self.max_length)

    def _retrieval(self, path: Path, option: str) -> Dataset:
        if path.is_dir():
            images = ImageFolder(path, **self.images)
            return ClassPrompts(images, images.classes, self.tokenizer, PROMPT_TEMPLATE, self.max_length)
        if path.suffix.lower() not in (".jsonl", ".csv"):
            raise ValueError(f"{option} {path}: the retrieval task takes {FORMS['retrieval']}")
        return ImageCaptionManifest(path, self.tokenizer, max_length=self.max_length, **self.images)

    def _builtin_scenes(self, option: str, split: str) -> Dataset:
        """The built-in scenes of the task at the model's image size and text length, checked to fit the model."""
        self._check_scenes_fit(option)
        try:
            return builtin_scenes(self.task == "vqa", split, image_size(self.model), self.max_length)
        except ValueError as e:
            raise ValueError(f"{option} builtin: {e}") from None

    def _check_scenes_fit(self, option: str) -> None:
        """Refuse a model whose token embedding table is smaller than the scenes' own word tokenizer."""
        rows, size = text_vocab_rows(self.model), len(scene_tokenizer())
        if rows is not None and size > rows:
            raise ValueError(
                f"{option} builtin: the built-in scenes are tokenized with their own word tokenizer ({size} tokens), "
                f"but {type(self.model).__name__}'s token embedding table has {rows} rows: its ids would index past "
                f"the table. Use a model with at least {size} token rows, or your own data (a manifest or hf:DIR) "
                "tokenized with the model's own tokenizer (--tokenizer DIR, else the model directory's)"
            )

    def _itm_retrieval(self, path: Path, option: str) -> Dataset:
        return self._caption_manifest(path, option)

    def _captioning(self, path: Path, option: str) -> Dataset:
        return self._caption_manifest(path, option)

    def _caption_manifest(self, path: Path, option: str) -> Dataset:
        self._manifest_file(path, option)
        with self._takes():
            return ImageCaptionManifest(path, self.tokenizer, max_length=self.max_length, **self.images)

    def _vqa(self, path: Path, option: str) -> Dataset:
        self._manifest_file(path, option)
        with self._takes():
            return ImageQuestionManifest(path, self.tokenizer, max_length=self.max_length, **self.images)

    def _manifest_file(self, path: Path, option: str) -> None:
        if path.is_dir() or path.suffix.lower() not in (".jsonl", ".csv"):
            raise ValueError(f"{option} {path}: the {self.task} task takes {FORMS[self.task]}")

    @contextlib.contextmanager
    def _takes(self) -> Iterator[None]:
        """Adds what the task takes to a missing manifest field or dataset column."""
        try:
            yield
        except (MissingField, MissingColumn) as e:
            raise ValueError(f"{e}; the {self.task} task takes {FORMS[self.task]}") from None

    def _classification(self, path: Path, option: str) -> Dataset:
        if not path.is_dir():
            raise ValueError(f"{option} {path} is a file; the classification task takes {FORMS['classification']}")
        classes = use_classes(self.model, folder_classes(path), f"{option} {path}")
        return ImageFolder(path, classes=classes, **self.images)

    @functools.cached_property
    def clips(self) -> ClipOptions:
        """How audio is prepared: the rate and per-clip normalisation of the model directory's feature extractor
        (preprocessor_config.json), else 16 kHz, not normalised; 1 s clips."""
        cfg = {}
        if self.directory is not None and (self.directory / PROCESSOR_FILE).is_file():
            cfg = json.loads((self.directory / PROCESSOR_FILE).read_text())
        return ClipOptions(rate=int(cfg.get("sampling_rate", SAMPLING_RATE)), normalize=bool(cfg.get("do_normalize")))

    def _audio_classification(self, path: Path, option: str) -> Dataset:
        where = f"{option} {path}"
        if path.is_dir():
            return AudioClips(
                folder_files(path, use_classes(self.model, folder_classes(path), where)), where, self.clips
            )
        if path.suffix.lower() not in (".jsonl", ".csv"):
            raise ValueError(f"{where}: the audio-classification task takes {FORMS['audio-classification']}")
        with self._takes():
            rows = manifest_files(path)
        classes = use_classes(self.model, sorted({name for _, name in rows}), where)
        return AudioClips([(p, classes.index(name)) for p, name in rows], where, self.clips)

    def _segment_norm(self) -> tuple[Sequence[float], Sequence[float]]:
        """Mean and std of segmentation images: the model processor's (the geometry is the masks': resize + centre
        crop), else CLIP's."""
        cfg = {}
        if self.directory is not None and (self.directory / PROCESSOR_FILE).is_file():
            cfg = json.loads((self.directory / PROCESSOR_FILE).read_text())
        return cfg.get("image_mean") or CLIP_MEAN, cfg.get("image_std") or CLIP_STD

    def _segmentation(self, path: Path, option: str) -> Dataset:
        if not path.is_dir():
            raise ValueError(f"{option} {path} is a file; the segmentation task takes {FORMS['segmentation']}")
        mean, std = self._segment_norm()
        try:
            return SegmentationFolder(path, image_size(self.model), self.model.config.num_labels, mean, std)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"{option} {path}: {e}") from None

    def _sentence_embedding(self, path: Path, option: str) -> Dataset:
        if path.is_dir() or path.suffix.lower() not in SENTENCE_SUFFIXES:
            raise ValueError(f"{option} {path}: the sentence-embedding task takes {FORMS['sentence-embedding']}")
        s = read_sentences(path)
        return self._sentences(s.texts, s.labels)

    def _text_classification(self, path: Path, option: str) -> Dataset:
        where = f"{option} {path}"
        if path.is_dir() or path.suffix.lower() not in (".jsonl", ".csv"):
            raise ValueError(f"{where}: the text-classification task takes {FORMS['text-classification']}")
        s = read_sentences(path)
        if s.labels is None:
            raise ValueError(
                f"{where} has no 'label' field; the text-classification task takes {FORMS['text-classification']}"
            )
        labels = s.labels
        if s.classes is not None:  # names: the model's own label ids when its config names them
            classes = use_classes(self.model, s.classes, where)
            labels = [classes.index(s.classes[i]) for i in labels]
        return TokenizedTexts(s.texts, self.tokenizer, self.max_length, labels)

    def _sentences(self, texts: Sequence[str], labels: Sequence[int] | None) -> Dataset:
        return SentenceDistillData(list(texts), self.tokenizer, self.model, max_length=self.max_length, labels=labels)

    def _from_hf(self, ds: Any, where: str) -> Any:
        """A loaded HF dataset for the task: as it is when it holds model inputs, else prepared from its raw columns."""
        cols = set(ds.column_names)
        ready = "teacher_embedding" in cols if self.task == "sentence-embedding" else bool(cols & set(PRIMARY_INPUTS))
        if ready:
            return ds
        if self.task == "sentence-embedding":
            labels = _column(ds, LABEL_COLUMNS, where, required=False)
            return self._sentences(ds[_text_column(ds, where)], ds[labels] if labels else None)
        if self.task in SCENE_TASKS:
            return self._scene_hf(ds, where)
        if self.task == "text-classification":
            with self._takes():
                label = _column(ds, LABEL_COLUMNS, where, required=True)
            return TokenizedTexts(
                ds[_text_column(ds, where)], self.tokenizer, self.max_length, _class_ids(self.model, ds, label, where)
            )
        if self.task == "segmentation":
            with self._takes():
                mask = _mask_column(ds, where)
                image = _image_column(ds.remove_columns([mask]), where)
            mean, std = self._segment_norm()
            return HFSegments(ds, image, mask, image_size(self.model), self.model.config.num_labels, mean, std, where)
        if self.task == "audio-classification":
            with self._takes():
                audio = _column(ds, AUDIO_COLUMNS, where, required=True)
                label = _column(ds, LABEL_COLUMNS, where, required=True)
            return HFAudio(ds, audio, label, _label_map(self.model, ds, label, where), self.clips, where)
        image = _image_column(ds, where)
        if self.task == "classification":
            label = _column(ds, LABEL_COLUMNS, where, required=True)
            return HFImages(ds, image, label, _label_map(self.model, ds, label, where), self.images, where)
        return HFPairs(ds, image, _text_column(ds, where), self.tokenizer, self.max_length, self.images, where)

    def _scene_hf(self, ds: Any, where: str) -> Dataset:
        """A dataset's image and caption columns (itm-retrieval, captioning) or image, question and answer (vqa)."""
        with self._takes():
            image = _image_column(ds, where)
            if self.task != "vqa":
                return HFPairs(ds, image, _text_column(ds, where), self.tokenizer, self.max_length, self.images, where)
            question = _string_column(ds, QUESTION_COLUMNS, where)
            answer = _string_column(ds, ANSWER_COLUMNS, where)
        return HFQuestions(ds, image, question, answer, self.tokenizer, self.max_length, self.images, where)


@functools.lru_cache(maxsize=4)
def builtin_scenes(questions: bool, split: str, size: int, max_length: int) -> Dataset:
    """The built-in scenes of one split (rendered once per process: read-only): SceneQA for ``questions``, else
    SceneCaptions (itm-retrieval and captioning share them)."""
    make = SceneQA if questions else SceneCaptions
    return make(split, BUILTIN_SIZES.get(split, BUILTIN_SIZES["val"]), image_size=size, max_length=max_length)


@functools.lru_cache(maxsize=4)
def builtin_segments(split: str, size: int) -> Dataset:
    """The built-in scenes of one split as segmentation items (rendered once per process: read-only)."""
    return SceneSegments(split, BUILTIN_SIZES.get(split, BUILTIN_SIZES["val"]), image_size=size)


@functools.lru_cache(maxsize=4)
def builtin_pairs(split: str, size: int, max_length: int) -> Dataset:
    """The built-in image-caption split (rendered once per process: it is read-only)."""
    return SyntheticCaptions(split, 8000 if split == "train" else 1000, image_size=size, max_length=max_length)


# ---------------------------------------------------------------- Hugging Face datasets saved to disk


def load_hf(spec: str, option: str, split: str) -> Any:
    """``datasets.load_from_disk`` of hf:DIR; a DatasetDict gives the split for ``split`` ('train' or an eval split)."""
    d = Path(spec[len(HF_PREFIX) :])
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"{option} {spec}: reading a saved Hugging Face dataset needs the 'datasets' package, "
            "which is not installed (pip install datasets)"
        ) from None
    if not d.is_dir():
        raise FileNotFoundError(
            f"{option} {spec}: {d} is not a directory (give a directory written by datasets' save_to_disk)"
        )
    try:
        ds = datasets.load_from_disk(str(d))
    except Exception as e:  # noqa: BLE001 - datasets raises FileNotFoundError, ValueError, pyarrow errors...
        raise ValueError(
            f"{option} {spec}: {d} cannot be read by datasets.load_from_disk ({type(e).__name__}: "
            f"{(str(e).strip().splitlines() or [''])[0][:200]})"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        return _split(ds, d, option, split)
    return ds


def _split(ds: Any, d: Path, option: str, split: str) -> Any:
    wanted = ("train",) if split == "train" else EVAL_SPLITS
    name = next((s for s in wanted if s in ds), None)
    if name is None:
        raise ValueError(
            f"{option} hf:{d} holds the splits {sorted(ds)}, none of them {' / '.join(wanted)}: "
            f"pick one with hf:{d}/SPLIT"
        )
    return ds[name]


class MissingColumn(ValueError):
    """A dataset lacks a column the task needs."""


def _column(ds: Any, names: Sequence[str], where: str, required: bool) -> str | None:
    col = next((c for c in names if c in ds.column_names), None)
    if col is None and required:
        raise MissingColumn(f"{where} has no {' / '.join(repr(n) for n in names)} column (columns {ds.column_names})")
    return col


def _text_column(ds: Any, where: str) -> str:
    """The column of strings: one of TEXT_COLUMNS, else the only string column."""
    strings = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    col = next((c for c in TEXT_COLUMNS if c in strings), None) or (strings[0] if len(strings) == 1 else None)
    if col is None:
        raise MissingColumn(
            f"{where}: no text column (one of {', '.join(TEXT_COLUMNS)}, or a single string column) "
            f"among {ds.column_names}"
        )
    return col


def _mask_column(ds: Any, where: str) -> str:
    """The column of segmentation masks: one of MASK_COLUMNS (an image of class indices per pixel)."""
    col = next((c for c in MASK_COLUMNS if c in ds.column_names), None)
    if col is None:
        raise MissingColumn(
            f"{where}: no mask column (one of {', '.join(MASK_COLUMNS)}: one class index per pixel) among "
            f"{ds.column_names}"
        )
    return col


def _image_column(ds: Any, where: str) -> str:
    """The column of images: a datasets.Image feature, else one of IMAGE_COLUMNS."""
    images = [c for c, f in ds.features.items() if type(f).__name__ == "Image"]
    col = images[0] if images else next((c for c in IMAGE_COLUMNS if c in ds.column_names), None)
    if col is None:
        raise MissingColumn(
            f"{where}: no image column (a datasets.Image feature, or one named {', '.join(IMAGE_COLUMNS)}) "
            f"among {ds.column_names}"
        )
    return col


def _string_column(ds: Any, names: Sequence[str], where: str) -> str:
    """The first of ``names`` among the dataset's columns, checked to hold strings (one per row)."""
    col = _column(ds, names, where, required=True)
    dtype = getattr(ds.features[col], "dtype", None)
    if dtype not in ("string", "large_string"):
        what = type(ds.features[col]).__name__ if dtype is None else dtype
        raise ValueError(f"{where}: column '{col}' holds {what}, not strings: one string per row (repeat the image)")
    return col


def _strings(ds: Any, col: str, where: str) -> list[str]:
    """The column's values, every one a non-empty string (a null or blank one is refused, naming its row)."""
    values = list(ds[col])
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()), None)
    if bad is not None:
        raise ValueError(f"{where} row {bad}: the '{col}' value is {values[bad]!r}; every row needs a non-empty string")
    return values


def _label_map(model: nn.Module, ds: Any, label: str, where: str) -> list[int] | None:
    """Dataset label index -> model label id when the column is a ClassLabel (its names recorded or matched with
    the model's); None: the labels are the model's ids as they are."""
    names = getattr(ds.features[label], "names", None)
    if not names:
        return None
    classes = use_classes(model, list(names), where)
    return [classes.index(n) for n in names]


def _class_ids(model: nn.Module, ds: Any, label: str, where: str) -> list[int]:
    """The model's label id of every row: a ClassLabel or class-name column matched with the model's classes (or
    recorded as them), else the integers as they are."""
    values = ds[label]
    if values and all(isinstance(y, str) for y in values):
        classes = use_classes(model, sorted(set(values)), where)
        return [classes.index(y) for y in values]
    ids = _label_map(model, ds, label, where)
    try:
        return [int(y) if ids is None else ids[int(y)] for y in values]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: the {label!r} column must hold class indices or class names") from None


def _pil(value: Any, where: str) -> Image.Image:
    """A datasets image value (a PIL image, {'bytes', 'path'} when not decoded, or an image file's path) as a PIL image."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes"):
        import io

        return Image.open(io.BytesIO(value["bytes"]))
    file = value.get("path") if isinstance(value, dict) else value if isinstance(value, (str, Path)) else None
    if file:
        if not Path(file).is_file():
            raise FileNotFoundError(
                f"{where}: image file {str(file)!r} does not exist (paths are read as they are: "
                "absolute, or relative to the current directory)"
            )
        return Image.open(file)
    raise TypeError(
        f"{where}: an image value is {type(value).__name__}, not an image (a datasets.Image column, or "
        "a column of image file paths)"
    )


class HFImages(Dataset):
    """Rows of a Hugging Face dataset with an image and a class label as {'pixel_values', 'label'} items."""

    def __init__(
        self, ds: Any, image: str, label: str, label_map: list[int] | None, images: dict[str, Any], where: str
    ):
        self.ds, self.image, self.label, self.map, self.opts, self.where = ds, image, label, label_map, images, where

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.ds[int(i)]
        y = int(row[self.label])
        return {
            "pixel_values": _image(row[self.image], f"{self.where} row {i}", self.opts),
            "label": torch.tensor(self.map[y] if self.map is not None else y),
        }


class HFSegments(Dataset):
    """Rows of a Hugging Face dataset with an image column and a mask column (images, or image files) as
    {'pixel_values', 'labels'} items, fitted as `SegmentationFolder` fits files; every pair is checked when built."""

    def __init__(
        self,
        ds: Any,
        image: str,
        mask: str,
        size: int,
        num_labels: int,
        mean: Sequence[float],
        std: Sequence[float],
        where: str,
    ) -> None:
        self.ds, self.image, self.mask, self.size, self.mean, self.std, self.where = (
            ds, image, mask, size, mean, std, where
        )  # fmt: skip
        checked([self._problem(i, num_labels) for i in range(len(ds))], len(ds), where, "image / mask rows")

    def _pair(self, i: int) -> tuple[Image.Image, Image.Image]:
        row = self.ds[int(i)]
        return _pil(row[self.image], f"{self.where} row {i}"), _pil(row[self.mask], f"{self.where} row {i}")

    def _problem(self, i: int, num_labels: int) -> str | None:
        try:
            image, mask = self._pair(i)
            return pair_problem(image, mask, num_labels, f"row {i}'s {self.mask!r}", f"in {self.image!r}")
        except Exception as e:  # noqa: BLE001 - PIL and datasets raise many types for a broken value
            return f"row {i} cannot be read ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})"

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, mask = self._pair(i)
        return segment_item(image, mask, self.size, self.mean, self.std, f"{self.where} row {i}")


class HFAudio(Dataset):
    """Rows of a Hugging Face dataset with an audio column (a datasets.Audio feature, read undecoded, or file paths)
    and a class label as {'input_values', 'label'} items; every clip is checked when built (`audio_problem`)."""

    def __init__(
        self, ds: Any, audio: str, label: str, label_map: list[int] | None, options: ClipOptions, where: str
    ) -> None:
        import datasets

        if isinstance(ds.features[audio], datasets.Audio):
            ds = ds.cast_column(audio, datasets.Audio(decode=False))  # decoded here: no torchcodec needed
        self.ds, self.audio, self.label, self.map, self.options, self.where = (
            ds,
            audio,
            label,
            label_map,
            options,
            where,
        )
        bad = [
            (i, why) for i, v in enumerate(ds[audio]) if (why := audio_problem(_audio_source(v, where), options.rate))
        ]
        if bad:
            shown = "; ".join(f"row {i} {why}" for i, why in bad[:5])
            raise ValueError(f"{where}: {len(bad)} of {len(ds)} clips cannot be used: {shown}")

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.ds[int(i)]
        x = read_audio(_audio_source(row[self.audio], self.where), self.options.rate, f"{self.where} row {i}")
        y = int(row[self.label])
        return {
            "input_values": self.options.prepare(x),
            "label": torch.tensor(self.map[y] if self.map is not None else y),
        }


def _audio_source(value: Any, where: str) -> bytes | Path:
    """An undecoded datasets.Audio value ({'bytes', 'path'}) or a file path as what `read_audio` reads."""
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    file = value.get("path") if isinstance(value, dict) else value if isinstance(value, (str, Path)) else None
    if not file:
        raise TypeError(f"{where}: an audio value is {type(value).__name__}, not audio (a datasets.Audio column, or "
                        "a column of audio file paths)")  # fmt: skip
    if not Path(file).is_file():
        raise FileNotFoundError(f"{where}: audio file {str(file)!r} does not exist")
    return Path(file)


class HFPairs(Dataset):
    """Rows of a Hugging Face dataset with an image and a caption as image-caption pairs (identical captions share a label)."""

    def __init__(
        self, ds: Any, image: str, text: str, tokenizer: Callable, max_length: int, images: dict[str, Any], where: str
    ):
        captions = list(ds[text])
        ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        self.labels = torch.tensor([ids[c] for c in captions])
        enc = tokenizer(captions, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        self.input_ids, self.attention_mask = enc["input_ids"], enc["attention_mask"]
        self.ds, self.image, self.opts, self.where = ds, image, images, where
        self.captions, self.tokenizer = captions, tokenizer  # captioning's references and decoder

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": _image(self.ds[int(i)][self.image], f"{self.where} row {i}", self.opts),
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "label": self.labels[i],
        }


class HFQuestions(Dataset):
    """Rows of a Hugging Face dataset with an image, a question and an answer as VQA items (the format of
    `ImageQuestionManifest`: ``answer`` indexes ``answers``, the dataset's distinct answers, sorted)."""

    def __init__(
        self,
        ds: Any,
        image: str,
        question: str,
        answer: str,
        tokenizer: Callable,
        max_length: int,
        images: dict[str, Any],
        where: str,
    ):
        self.questions, self.answer_texts = _strings(ds, question, where), _strings(ds, answer, where)
        self.answers = sorted(set(self.answer_texts))
        index = {a: k for k, a in enumerate(self.answers)}
        self.answer = torch.tensor([index[a] for a in self.answer_texts])
        self.fields = encode_questions(tokenizer, self.questions, self.answer_texts, max_length, None)
        self.tokenizer, self.ds, self.image, self.opts, self.where = tokenizer, ds, image, images, where

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = _image(self.ds[int(i)][self.image], f"{self.where} row {i}", self.opts)
        return {"pixel_values": image, **{k: v[i] for k, v in self.fields.items()}, "answer": self.answer[i]}


def _image(value: Any, where: str, opts: dict[str, Any]) -> torch.Tensor:
    """One dataset image as the model's pixel values (its processor, or resize + centre crop and normalise)."""
    return image_tensor(
        _pil(value, where),
        where,
        opts["image_size"],
        opts.get("mean", CLIP_MEAN),
        opts.get("std", CLIP_STD),
        opts.get("processor"),
    )
