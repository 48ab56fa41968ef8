"""A vltrim model directory as a Hugging Face model directory.

``vltrim.save`` writes ``modeling_vltrim.py`` beside config.json and an ``auto_map`` in config.json that points
transformers' auto classes at it. The class in that file subclasses the original transformers class with
``VltrimPretrainedMixin``, whose ``from_pretrained`` is ``vltrim.load``: the unpruned architecture from config.json,
every plan of plan.json applied, model.safetensors loaded strictly (a missing, extra or mis-shaped tensor is an error,
never a re-initialised weight), checksums verified. So ``AutoModel.from_pretrained(dir, trust_remote_code=True)``
returns the pruned model bit for bit. ``io.remote_code.copy_source_files`` keeps the tokenizer, processor and sentence-transformers
files of the model a directory was compressed from."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vltrim.arch.apply import base_config
from vltrim.io import CHECKED, CHECKSUMS, CONFIG, MODELING, PLAN, ModelDirError, load, save

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
    sub = hub.pop("subfolder", "") or ""
    local = Path(name_or_path) / sub
    if local.exists() or Path(name_or_path).exists():
        return local
    from transformers.utils import cached_file

    files = [cached_file(str(name_or_path), n, subfolder=sub, **hub) for n in CHECKED]
    for name in (CHECKSUMS, MODELING):  # vltrim.load names either one when it is missing
        cached_file(str(name_or_path), name, subfolder=sub, _raise_exceptions_for_missing_entries=False, **hub)
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
