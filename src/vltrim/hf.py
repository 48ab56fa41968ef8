"""A vltrim model directory as a Hugging Face model directory.

``vltrim.save`` writes ``modeling_vltrim.py`` beside config.json and an ``auto_map`` in config.json that points
transformers' auto classes at it. The class in that file subclasses the original transformers class with
``VltrimPretrainedMixin``, whose ``from_pretrained`` is ``vltrim.load``: the unpruned architecture from config.json,
every plan of plan.json applied, model.safetensors loaded strictly (a missing, extra or mis-shaped tensor is an error,
never a re-initialised weight), checksums verified. So ``AutoModel.from_pretrained(dir, trust_remote_code=True)``
returns the pruned model bit for bit. ``copy_source_files`` keeps the tokenizer, processor and sentence-transformers
files of the model a directory was compressed from."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from .adapters import registered_class
from .io import MODELING

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
#: config fields a caller may change when loading (runtime switches); any other change is refused
RUNTIME_FIELDS = ("output_hidden_states", "output_attentions", "return_dict", "use_cache")
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
_PASSED_BY_TRANSFORMERS = (
    "trust_remote_code",
    "_from_auto",
    "_from_pipeline",
    "code_revision",
    "low_cpu_mem_usage",
    "weights_only",
    "_commit_hash",
)


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
    from . import __version__

    cls = registered_class(model)
    return f'''"""A {cls.__name__} pruned by vltrim (written by vltrim {__version__}).

Load it with transformers (vltrim must be installed: pip install vltrim):

    from transformers import AutoModel
    model = AutoModel.from_pretrained("<this directory>", trust_remote_code=True)

from_pretrained rebuilds the pruned shapes from config.json + plan.json and loads model.safetensors strictly
(vltrim.load): the model vltrim saved, bit for bit, or an error naming the file that does not match."""
import transformers
import vltrim

try:
    from vltrim.hf import VltrimPretrainedMixin
except ImportError as e:
    raise ImportError(f"the installed vltrim {{getattr(vltrim, '__version__', '?')}} has no vltrim.hf, which this "
                      "model (saved by vltrim {__version__}) needs to load with transformers: upgrade vltrim") from e


class {remote_name(cls)}(VltrimPretrainedMixin, transformers.{cls.__name__}):
    """transformers' {cls.__name__} with the pruned shapes recorded in plan.json, loaded by vltrim."""
'''


# ---- what from_pretrained does ----------------------------------------------------------------------------
class VltrimPretrainedMixin:
    """Mixed into the classes of modeling_vltrim.py: ``from_pretrained`` is ``vltrim.load`` (strict), and
    ``save_pretrained`` is ``vltrim.save`` (plain transformers saving would drop plan.json)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any) -> Any:
        """The pruned model of a vltrim directory (local or on the Hub), as an instance of this class."""
        return from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: Any = None,
        safe_serialization: bool = True,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """``vltrim.save(self, save_directory)``; options transformers' saving has but vltrim cannot honour are refused."""
        from .io import save

        bad = sorted(kwargs) + [
            n
            for n, v in (
                ("state_dict", state_dict is not None),
                ("safe_serialization", not safe_serialization),
                ("push_to_hub", push_to_hub),
            )
            if v
        ]
        if bad:
            raise TypeError(
                f"{type(self).__name__}.save_pretrained saves with vltrim.save and does not support "
                f"{', '.join(bad)}; upload the saved directory with huggingface_hub to publish it"
            )
        if is_main_process:
            save(self, save_directory)


def from_pretrained(cls: type, name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any) -> Any:
    """``vltrim.load`` of the directory (resolved on the Hub when it is not a local one) as an instance of ``cls``,
    with transformers' loading options that keep the model as saved (see ``_options``)."""
    from .io import PLAN, ModelDirError, load

    if model_args:
        raise TypeError(f"{cls.__name__}.from_pretrained takes no positional model arguments (got {len(model_args)})")
    o = _options(cls, kwargs)
    folder = resolve_folder(name_or_path, o["hub"])
    model = load(folder, device=o["device"], verify=o["verify"])
    if not issubclass(cls, type(model)):
        raise ModelDirError(
            f"{folder / PLAN} holds a {type(model).__name__}, but {cls.__name__} in {folder / MODELING} "
            f"loads a {registered_class_of(cls).__name__}: config.json's auto_map is from another model"
        )
    model.__class__ = cls
    _apply_config(model, o["config"], o["runtime"], folder)
    if o["dtype"] is not None:
        model.to(o["dtype"])
    if o["attn"] is not None:
        model.set_attn_implementation(o["attn"])
    model.config._name_or_path = str(name_or_path)
    info = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}  # a strict load
    return (model, info) if o["info"] else model


def _options(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """transformers' from_pretrained options that keep the saved model: Hub options, dtype, device_map to one device,
    attn_implementation, output_loading_info, runtime config switches, ``verify`` (as in ``vltrim.load``); the ones
    transformers passes along are dropped; anything else (config overrides, lenient loading) is refused by name."""
    kwargs = dict(kwargs)
    for k in _PASSED_BY_TRANSFORMERS:
        kwargs.pop(k, None)
    _check_peft(kwargs.pop("adapter_kwargs", None))
    _check_strict(kwargs.pop("ignore_mismatched_sizes", False), kwargs.pop("use_safetensors", None))
    config = kwargs.pop("config", None)
    o = {
        "hub": {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs},
        "config": config,
        "info": kwargs.pop("output_loading_info", False),
        "verify": kwargs.pop("verify", True),
        "dtype": _dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)),
        "device": _device(kwargs.pop("device_map", None)),
        "attn": kwargs.pop("attn_implementation", None) or getattr(config, "_attn_implementation_internal", None),
        "runtime": {k: kwargs.pop(k) for k in RUNTIME_FIELDS if k in kwargs},
    }  # AutoModel passes attn inside config
    if kwargs:
        raise TypeError(
            f"{cls.__name__}.from_pretrained got {', '.join(sorted(kwargs))}: a vltrim model's architecture "
            "comes from config.json and plan.json and cannot be changed when loading"
        )
    return o


def registered_class_of(cls: type) -> type:
    """The transformers class a modeling_vltrim.py class subclasses (its first base that is not the mixin)."""
    return next(b for b in cls.__mro__[1:] if b is not VltrimPretrainedMixin)


def resolve_folder(name_or_path: str | os.PathLike, hub: dict[str, Any]) -> Path:
    """The local folder holding the directory's files: the path itself (plus ``subfolder``), or the Hub snapshot
    folder transformers' cache puts config.json, plan.json, model.safetensors and vltrim.json in."""
    from .io import CHECKED, CHECKSUMS

    sub = hub.pop("subfolder", "") or ""
    local = Path(name_or_path) / sub
    if local.exists() or Path(name_or_path).exists():
        return local
    from transformers.utils import cached_file

    files = [cached_file(str(name_or_path), n, subfolder=sub, **hub) for n in CHECKED]
    cached_file(str(name_or_path), CHECKSUMS, subfolder=sub, _raise_exceptions_for_missing_entries=False, **hub)
    return Path(files[0]).parent


def _check_peft(adapter_kwargs: Any) -> None:
    """TypeError if transformers found a PEFT adapter to put on the model (vltrim loads the saved model only)."""
    if isinstance(adapter_kwargs, dict) and "_adapter_model_path" in adapter_kwargs:
        raise TypeError(
            "this directory holds a PEFT adapter config; load the vltrim model first, then the adapter with peft"
        )


def _check_strict(ignore_mismatched_sizes: Any, use_safetensors: Any) -> None:
    """ValueError for options that would load something other than the saved weights."""
    if ignore_mismatched_sizes:
        raise ValueError(
            "ignore_mismatched_sizes=True is refused: a vltrim model loads strictly (every tensor with the "
            "shape config.json + plan.json give) and never re-initialises a weight"
        )
    if use_safetensors is False:
        raise ValueError(
            "use_safetensors=False is refused: a vltrim directory holds its weights in model.safetensors only"
        )


def _dtype(dtype: Any, torch_dtype: Any) -> torch.dtype | None:
    """The dtype to cast to (None: the stored one, also for 'auto'); names such as 'float16' are accepted."""
    value = dtype if dtype is not None else torch_dtype
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return None if value == "auto" else value
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
        return getattr(torch, value)
    raise ValueError(f"dtype must be a torch.dtype, a name such as 'float16', or 'auto'; got {value!r}")


def _device(device_map: Any) -> str | torch.device:
    """The one device ``device_map`` names ('cpu', 'cuda:0', 0, {'': 'cuda'}, 'auto': the GPU if any); a map that
    spreads the model over several devices is refused."""
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if device_map is None:
        return "cpu"
    if device_map == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        return torch.device("cuda", device_map)
    if isinstance(device_map, (str, torch.device)):
        return device_map
    raise ValueError(f"device_map must name one device (a vltrim model is loaded whole), got {device_map!r}")


def _apply_config(model: nn.Module, config: Any, runtime: dict[str, Any], folder: Path) -> None:
    """Copy the runtime switches (RUNTIME_FIELDS) given as kwargs or set in ``config`` onto ``model.config``; any other
    field of ``config`` that differs from config.json is refused (it would not describe the saved model)."""
    from .api import base_config
    from .io import CONFIG

    if config is not None:
        saved, given = _fields(base_config(model)), _fields(config)
        changed = sorted(k for k in set(saved) | set(given) if saved.get(k) != given.get(k))
        other = [k for k in changed if k not in RUNTIME_FIELDS]
        if other:
            raise ValueError(
                f"config= differs from {folder / CONFIG} in {', '.join(other[:5])}: a vltrim model's "
                "architecture comes from its directory; pass only runtime switches "
                f"({', '.join(RUNTIME_FIELDS)})"
            )
        runtime = {**{k: given[k] for k in changed}, **runtime}
    for k, v in runtime.items():
        setattr(model.config, k, v)


def _fields(config: Any) -> dict[str, Any]:
    """A config's JSON fields that describe the model (bookkeeping such as _name_or_path, auto_map, dtype left out)."""
    skip = {"transformers_version", "auto_map", "architectures", "dtype", "torch_dtype"}
    d = json.loads(config.to_json_string(use_diff=False)) if hasattr(config, "to_json_string") else {}
    return {k: v for k, v in d.items() if not k.startswith("_") and k not in skip}


# ---- what came with the model -----------------------------------------------------------------------------
def copy_source_files(source: str | os.PathLike, dest: Path) -> list[str]:
    """Copy the tokenizer / processor files (SOURCE_FILES) and the sentence-transformers files (modules.json, its
    module folders, ST_FILES) of the model directory ``source`` into ``dest``; returns the names copied. Weights of
    the source model are never copied; the transformer module of a sentence-transformers pipeline moves to the root."""
    from .checks import path as checked_path
    from .io import MissingModelFileError, ModelDirError

    src = checked_path("source", source)
    if not src.is_dir():
        kind = MissingModelFileError if not src.exists() else ModelDirError
        raise kind(f"source {src} is not a directory: pass the model directory the compressed model came from")
    root = src / _transformer_path(src)
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
    from .io import ModelDirError
    from .structure.plan import read_json

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


def _transformer_path(src: Path) -> str:
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
