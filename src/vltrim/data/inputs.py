"""What users pass as ``train_data`` / ``eval_data``, turned into the one form vltrim trains and evaluates on:
a map-style dataset (``len`` and ``data[i]``) whose batches are dicts of tensors.

Accepted: any map-style dataset of dict items, a list of such dicts included (vltrim's own datasets pass
through unchanged, with their ``collate``); a torch ``DataLoader`` (its dataset, batch size and collate_fn
are used; its sampler, shuffling and workers are not: vltrim draws its own seeded batches); a Hugging Face
``datasets.Dataset`` (items become tensors; columns that do not, such as raw text, are dropped, as the HF
Trainer does). Anything else fails at once, naming the option: checked on the first and last items."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from vltrim.arch.inputs import FLOATING_INPUTS

ITEM_HINT = (
    "items must be dicts of tensors like {'input_ids': ..., 'attention_mask': ..., 'pixel_values': ..., 'label': ...}"
)
Collate = Callable[[list[Any]], Any]
INTEGER_FIELDS = ("input_ids", "token_type_ids")


class LoaderData(Dataset):
    """A DataLoader's dataset with the loader's collate_fn as ``collate`` (how vltrim batches items);
    other attributes (e.g. ``class_texts``) are the wrapped dataset's."""

    def __init__(self, dataset: Any, collate: Collate):
        self.dataset, self.collate = dataset, collate

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("dataset", "collate"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class HFData(Dataset):
    """A Hugging Face ``datasets.Dataset`` read as dicts of torch tensors (only the ``columns`` that are tensors)."""

    def __init__(self, hf: Any, columns: Sequence[str]):
        self.columns = list(columns)
        self.hf = hf.with_format("torch", columns=self.columns)

    def __len__(self) -> int:
        return len(self.hf)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.hf[int(i)]


class Sample(Dataset):
    """Some items of ``data`` (by index), with the attributes vltrim batches and evaluates with
    (``collate``, ``class_texts``, ``captions_by_label``): to try a dataset on a model before a long run."""

    SHARED = ("collate", "class_texts", "captions_by_label")

    def __init__(self, data: Any, indices: Sequence[int]):
        self.data, self.indices = data, list(indices)
        for name in self.SHARED:
            if hasattr(data, name):
                setattr(self, name, getattr(data, name))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.data[self.indices[i]]


def _a(obj: Any) -> str:
    """'a dict', 'an int': the type name of ``obj`` with its article, for messages."""
    name = type(obj).__name__
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def _is_hf(obj: Any, name: str) -> bool:
    """Whether ``obj`` is a Hugging Face ``datasets`` object of class ``name`` (without importing ``datasets``)."""
    return type(obj).__module__.split(".")[0] == "datasets" and type(obj).__name__ == name


def _from_hf(hf: Any, option: str) -> HFData:
    """A Hugging Face Dataset as HFData, keeping the columns whose values become tensors."""
    if len(hf) == 0:
        raise ValueError(f"{option} is empty (a Hugging Face Dataset with 0 rows)")
    first = hf.with_format("torch")[0]
    columns = [k for k, v in first.items() if torch.is_tensor(v)]
    if not columns:
        raise TypeError(
            f"{option}: no column of the Hugging Face Dataset becomes a tensor (columns "
            f"{sorted(first)}); tokenize texts and preprocess images first"
        )
    return HFData(hf, columns)


ACCEPTED = "a map-style dataset of dict items, a torch DataLoader or a Hugging Face datasets.Dataset"


def _refuse_non_dataset(obj: Any, option: str) -> None:
    """TypeError naming ``option`` and what it accepts, for what is not a map-style dataset (None, paths, dicts, iterables)."""
    why = _not_a_dataset(obj, option)
    if why is not None:
        raise TypeError(f"{why}; {option} takes {ACCEPTED}")


def _not_a_dataset(obj: Any, option: str) -> str | None:
    """Why ``obj`` is not a map-style dataset (None when it may be one)."""
    what = _a(obj)
    if obj is None:
        return f"{option} is None; pass a dataset of dict items (e.g. vltrim.data.ImageCaptionManifest) or a DataLoader"
    if isinstance(obj, (str, bytes, os.PathLike)):
        return (
            f"{option} is {what} ({str(obj)[:80]!r}), not a dataset; load it first, e.g. "
            "vltrim.data.ImageCaptionManifest(path, tokenizer, image_size) (the CLI's --data reads files)"
        )
    if _is_hf(obj, "DatasetDict") or _is_hf(obj, "IterableDatasetDict"):
        return (
            f"{option} is a Hugging Face {type(obj).__name__} with splits {sorted(obj)}; pick one, e.g. data['train']"
        )
    if isinstance(obj, Mapping):
        return (
            f"{option} is {what} (keys {sorted(map(str, obj))[:6]}), not a dataset; pass a dataset "
            f"whose items are such dicts ({ITEM_HINT})"
        )
    if isinstance(obj, IterableDataset) or not (hasattr(obj, "__len__") and hasattr(obj, "__getitem__")):
        return (
            f"{option} is {what}, which cannot be indexed: vltrim needs a map-style dataset "
            "(with __len__ and __getitem__), not an IterableDataset or a stream"
        )
    return None


def _map_style(obj: Any, option: str, convert_hf: bool = True) -> Any:
    """``obj`` as a map-style dataset (Hugging Face Datasets read as tensors when ``convert_hf``), or a TypeError."""
    if _is_hf(obj, "Dataset") and convert_hf:
        return _from_hf(obj, option)
    _refuse_non_dataset(obj, option)
    return obj


def _item(data: Any, i: int, option: str) -> Any:
    """``data[i]``; an indexing failure means a dataset not indexed by position: a TypeError naming ``option``."""
    try:
        return data[i]
    except (KeyError, IndexError, TypeError) as e:
        raise TypeError(
            f"{option}: {type(data).__name__}[{i}] failed ({type(e).__name__}: {e}); vltrim needs a "
            f"map-style dataset indexed 0..len-1"
        ) from None


def _check_dict_items(items: list[Any], idx: list[int], option: str) -> None:
    """Items batched by torch's default collate: dicts with the same fields and the same shapes."""
    for i, it in zip(idx, items):
        if not isinstance(it, Mapping):
            tip = " (a TensorDataset gives tuples: use a Dataset that returns dicts)" if isinstance(it, tuple) else ""
            raise TypeError(f"{option}: item {i} is {_a(it)}; {ITEM_HINT}{tip}")
    first, last = items[0], items[-1]
    for k, v in first.items():
        if k not in last:
            raise TypeError(
                f"{option}: item {idx[-1]} lacks field {k!r} that item 0 has; every item needs the same fields"
            )
        a, b = getattr(v, "shape", None), getattr(last[k], "shape", None)
        if a is not None and b is not None and tuple(a) != tuple(b):
            raise TypeError(
                f"{option}: field {k!r} has shape {tuple(a)} in item 0 but {tuple(b)} in item {idx[-1]}; "
                "pad every item to one length (e.g. padding='max_length') or pass a DataLoader whose collate_fn pads"
            )


def _check_batch(batch: Any, option: str) -> None:
    """A batch must be a dict of tensors (what models and losses take)."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"{option}: a batch is {_a(batch)}, not a dict of tensors; {ITEM_HINT}")
    for k, v in batch.items():
        if not torch.is_tensor(v):
            raise TypeError(
                f"{option}: field {k!r} of a batch is {_a(v)}, not a tensor "
                "(tokenize raw text; return tensors or numbers, not lists)"
            )
        _check_dtype(k, v, option)


def _check_dtype(key: str, v: torch.Tensor, option: str) -> None:
    """Token ids must be integers (a float id would be rounded or refused deep in an embedding), pixel values
    floats (uint8 0..255 images reach the model unnormalised: a silently wrong input)."""
    if key in INTEGER_FIELDS and (v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool):
        raise TypeError(
            f"{option}: field {key!r} holds {str(v.dtype).replace('torch.', '')} values; token ids must be "
            "integers (torch.long): keep the tokenizer's output as it is"
        )
    if key in FLOATING_INPUTS and not v.dtype.is_floating_point:
        raise TypeError(
            f"{option}: field {key!r} holds {str(v.dtype).replace('torch.', '')} values; pixel values must be "
            "normalised floats (run the model's image processor, e.g. vltrim.data.load_image), not raw 0..255 pixels"
        )


def check_items(data: Any, option: str) -> None:
    """Batch the first and last items as vltrim will (``data.collate`` or torch's default) and check the result;
    an empty dataset is a ValueError, any other problem a TypeError, each naming ``option``."""
    n = len(data)
    if n == 0:
        raise ValueError(f"{option} is empty (0 items)")
    idx = [0] if n == 1 else [0, n - 1]
    items = [_item(data, i, option) for i in idx]
    collate = getattr(data, "collate", None)
    if collate is None or collate is default_collate:
        _check_dict_items(items, idx, option)
        collate = default_collate
    try:
        batch = collate(items)
    except Exception as e:  # a user's collate_fn may raise anything: report it against the option
        raise TypeError(f"{option}: items {idx} cannot be batched together ({type(e).__name__}: {e})") from None
    _check_batch(batch, option)


def _from_loader(loader: DataLoader, option: str) -> tuple[Any, int | None]:
    """A DataLoader's dataset (wrapped with its collate_fn when that is not torch's default) and its batch size."""
    if isinstance(loader.dataset, IterableDataset):
        raise TypeError(
            f"{option} is a DataLoader over {_a(loader.dataset)}, which cannot be indexed: "
            "vltrim needs a map-style dataset (with __len__ and __getitem__)"
        )
    if loader.batch_size is None and loader.batch_sampler is None:
        raise TypeError(
            f"{option} is a DataLoader with batch_size=None (its items are whole batches); give it a batch_size"
        )
    custom = loader.collate_fn is not default_collate
    data = _map_style(loader.dataset, option, convert_hf=not custom)
    return (LoaderData(data, loader.collate_fn) if custom else data), loader.batch_size


def as_dataset(obj: Any, option: str) -> tuple[Dataset, int | None]:
    """``obj`` (see the module docstring for what is accepted) as a map-style dataset, plus a batch-size hint
    (a DataLoader's batch size, else None). Bad input fails here, naming ``option`` (e.g. 'train_data')."""
    if isinstance(obj, DataLoader):
        data, hint = _from_loader(obj, option)
    else:
        data, hint = _map_style(obj, option), None
    check_items(data, option)
    return data, hint


def in_order(data: Any, batch_size: int) -> DataLoader:
    """Batches of ``data`` in order, as evaluation reads them: with the dataset's own ``collate`` when it has one."""
    return DataLoader(data, batch_size=batch_size, collate_fn=getattr(data, "collate", None))
