"""The files a save writes for transformers and sentence-transformers: config.json with its ``auto_map``,
modeling_vltrim.py (one subclass of the transformers class, loaded by vltrim.hf), and the tokenizer, processor and
sentence-transformers files copied from the source model."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from torch import nn

from vltrim._version import __version__
from vltrim.arch.registry import registered_class
from vltrim.checks import path as checked_path
from vltrim.io.layout import MODELING, MissingModelFileError, ModelDirError
from vltrim.structure.plan import read_json

#: tokenizer and processor files copied from a source model directory (never weights)
SOURCE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)
ST_MODULES = "modules.json"  # sentence-transformers: the pipeline of modules (transformer, pooling, ...)
ST_FILES = ("sentence_bert_config.json", "config_sentence_transformers.json")


# ---- what save writes -----------------------------------------------------------------------------------
def auto_classes(cls: type) -> list[str]:
    """'AutoModel' and every transformers auto class that maps ``cls``'s model type to ``cls`` itself (e.g.
    AutoModelForImageClassification for ViTForImageClassification), read from transformers' own mappings."""
    import transformers

    model_type = getattr(cls.config_class, "model_type", None)
    out = ["AutoModel"]
    for name in sorted(n for n in dir(transformers) if n.startswith("AutoModel") and n != "AutoModel"):
        mapping = getattr(getattr(transformers, name, None), "_model_mapping", None)
        names = getattr(mapping, "_model_mapping", {}).get(model_type) if mapping is not None else None
        if names is not None and cls.__name__ in (names if isinstance(names, (list, tuple)) else [names]):
            out.append(name)
    return out


def remote_name(cls: type) -> str:
    """Name of the class modeling_vltrim.py defines for ``cls``: the transformers class's own name (e.g. CLIPModel),
    because pipelines check a model's class name against their supported classes. Directories saved
    before this name it Vltrim<Class>; they keep loading through their own modeling file."""
    return cls.__name__


def auto_map(cls: type) -> dict[str, str]:
    """config.json's ``auto_map``: every auto class of ``cls`` -> 'modeling_vltrim.<cls>'."""
    ref = f"{Path(MODELING).stem}.{remote_name(cls)}"
    return {name: ref for name in auto_classes(cls)}


def config_text(config: Any, model: nn.Module) -> str:
    """config.json: the unpruned ``config`` plus ``auto_map`` and ``architectures`` (the saved class), so
    transformers finds modeling_vltrim.py; the original config object is not changed."""
    cls = registered_class(model)
    cfg = copy.deepcopy(config)
    cfg.auto_map = auto_map(cls)
    cfg.architectures = [cls.__name__]
    return cfg.to_json_string(use_diff=False)


def modeling_source(model: nn.Module) -> str:
    """Text of modeling_vltrim.py for ``model``'s class: one subclass of the transformers class, loaded by vltrim."""
    return modeling_text(registered_class(model))


def modeling_text(cls: type, name: str | None = None) -> str:
    """modeling_vltrim.py for the transformers class ``cls``. The code comes first and the explanation after it, as
    comments: a file cut short (truncated) still runs, and loading it through vltrim.load then names the file as not
    matching its recorded checksum, instead of transformers raising a SyntaxError from inside its import machinery.
    ``name``: the class name config.json's auto_map gives (default: `remote_name`)."""
    return f"""import transformers
import vltrim.hf  # a vltrim with vltrim.hf must be installed: pip install -U vltrim
class {name or remote_name(cls)}(vltrim.hf.VltrimPretrainedMixin, transformers.{cls.__name__}): pass  # noqa: E701
# A {cls.__name__} pruned by vltrim (written by vltrim {__version__}).
#
# Load it with transformers (vltrim must be installed: pip install vltrim):
#
#     from transformers import AutoModel
#     model = AutoModel.from_pretrained("<this directory>", trust_remote_code=True)
#
# from_pretrained rebuilds the pruned shapes from config.json + plan.json and loads model.safetensors strictly
# (vltrim.load): the model vltrim saved, bit for bit, or an error naming the file that does not match. This file's
# SHA-256 is recorded in vltrim.json too: a truncated or edited copy is refused by name.
"""


# ---- what came with the model -----------------------------------------------------------------------------
def copy_source_files(source: str | os.PathLike, dest: Path) -> list[str]:
    """Copy the tokenizer / processor files (SOURCE_FILES) and the sentence-transformers files (modules.json, its
    module folders, ST_FILES) of the model directory ``source`` into ``dest``; returns the names copied. Weights of
    the source model are never copied; the transformer module of a sentence-transformers pipeline moves to the root."""
    src = checked_path("source", source)
    if not src.is_dir():
        kind = MissingModelFileError if not src.exists() else ModelDirError
        raise kind(f"source {src} is not a directory: pass the model directory the compressed model came from")
    root = src / transformer_path(src)
    copied = [n for n in SOURCE_FILES + ST_FILES if _copy(root / n, dest / n) or _copy(src / n, dest / n)]
    if (src / ST_MODULES).is_file():
        copied += _copy_st_modules(src, dest)
    return sorted(set(copied))


def _copy(file: Path, to: Path) -> bool:
    """Copy ``file`` (following links, as in the Hub cache) to ``to`` unless it is absent or already there."""
    if to.exists() or not file.is_file():
        return False
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, to)
    return True


def _st_modules(src: Path) -> list[dict[str, Any]]:
    """modules.json as a list of module entries with safe relative paths; ModelDirError naming the file otherwise."""
    file = src / ST_MODULES
    mods = read_json(file, error=ModelDirError)
    if not isinstance(mods, list) or not all(isinstance(m, dict) and isinstance(m.get("path", ""), str) for m in mods):
        raise ModelDirError(f'{file} must be a list of modules, each with a "path" string')
    for m in mods:
        p = PurePosixPath(m.get("path", ""))
        if p.is_absolute() or ".." in p.parts or "\\" in str(p):
            raise ModelDirError(f"{file}: module path {m['path']!r} must be a folder inside the model directory")
    return mods


def _is_transformer(module: dict[str, Any]) -> bool:
    return str(module.get("type", "")).rsplit(".", 1)[-1] in ("Transformer", "CLIPModel")


def transformer_path(src: Path) -> str:
    """Folder of a sentence-transformers pipeline's transformer module ('' for the usual layout, or no modules.json)."""
    if not (src / ST_MODULES).is_file():
        return ""
    return next((m.get("path", "") for m in _st_modules(src) if _is_transformer(m)), "")


def _copy_st_modules(src: Path, dest: Path) -> list[str]:
    """modules.json (the transformer module at the root, where vltrim saves the model) and every other module's folder."""
    mods = copy.deepcopy(_st_modules(src))
    out = [ST_MODULES]
    for m in mods:
        if _is_transformer(m):
            m["path"] = ""
        elif PurePosixPath(m.get("path", "")).parts:  # a module at the root ('' or '.') has no folder of its own
            (dest / m["path"]).mkdir(parents=True, exist_ok=True)  # a module may have no file (Normalize)
            for f in sorted(p for p in (src / m["path"]).rglob("*") if p.is_file()):
                rel = f.relative_to(src).as_posix()
                if _copy(f, dest / rel):
                    out.append(rel)
    (dest / ST_MODULES).write_text(json.dumps(mods, indent=2), encoding="utf-8")
    return out
