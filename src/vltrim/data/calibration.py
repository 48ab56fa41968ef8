"""The one check of the data a method scores or searches on (calibration data), the same for every method and the
same as train / eval data get: token ids inside the model's vocabulary, class labels inside its classes, finite
values, and, for a method that ranks modules by a metric (MoPE), enough distinct items for the metric to tell
modules apart. Each error names the option, the item and the reason.

Train / eval data are checked on their first and last items (`vltrim.tasks.Task.try_data`); calibration data on
its first and last items up front, then on the items a method reads: MoPE's first ``calib_size`` items before it
scores, every batch heads, taylor and lowrank draw as they draw it (`vltrim.methods.common.checked_batches`; no
item is read only to be checked)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from vltrim.arch.inputs import MODEL_INPUTS
from vltrim.data.inputs import as_dataset

CHUNK = 64  # items batched together while checking
LABEL_FIELDS = ("label", "labels")
#: dimensions of one item's model inputs (a batch has one more): a dict at these is an item, not a batch
ITEM_DIMS = {"pixel_values": 3, "input_ids": 1, "attention_mask": 1, "token_type_ids": 1}


def text_vocab_rows(model: nn.Module) -> int | None:
    """Rows of the model's token embedding table (None for a model that reads no text)."""
    for owner in (model, getattr(model, "text_model", None)):
        try:
            emb = owner.get_input_embeddings() if owner is not None else None
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, nn.Embedding):
            return emb.num_embeddings
    cfg = getattr(getattr(model, "config", None), "text_config", None)
    return getattr(cfg, "vocab_size", None) if cfg is not None else None


def class_count(model: nn.Module) -> int | None:
    """The number of classes of a model with a classification head (its ``classifier``), else None: labels of
    other models (retrieval's caption groups, a sentence file's optional labels) are not class indices."""
    if not isinstance(getattr(model, "classifier", None), nn.Module):
        return None
    n = getattr(getattr(model, "config", None), "num_labels", None)
    return n if isinstance(n, int) and n > 0 else None


def is_item(d: Any) -> bool:
    """Whether the dict ``d`` is one item (pixel_values of 3 dimensions, token ids of 1), not a batch of items."""
    return isinstance(d, Mapping) and any(torch.is_tensor(d.get(k)) and d[k].dim() == n for k, n in ITEM_DIMS.items())


def check_batch_values(
    batch: Mapping[str, Any],
    option: str,
    items: Sequence[int],
    vocab_rows: int | None = None,
    num_labels: int | None = None,
) -> None:
    """Refuse a batch (of ``items`` of ``option``) with token ids outside [0, vocab_rows), class labels outside
    [0, num_labels) or non-finite floating values (NaN / inf pixels or targets), naming the first bad item."""
    ids = batch.get("input_ids")
    if vocab_rows is not None and torch.is_tensor(ids) and ids.numel():
        bad = ((ids < 0) | (ids >= vocab_rows)).reshape(len(ids), -1).any(1)
        if bad.any():
            r = int(bad.nonzero()[0])
            row = ids[r]
            v = int(row[(row < 0) | (row >= vocab_rows)][0])
            raise ValueError(
                f"{option}: item {items[r]} holds token id {v}, but the model's token embedding table has {vocab_rows} "
                "rows (ids 0.."
                f"{vocab_rows - 1}): the text was tokenized with a tokenizer whose vocabulary does not fit the model. "
                "Tokenize with the model's own tokenizer"
            )
    for key in LABEL_FIELDS:
        y = batch.get(key)
        if num_labels is None or not torch.is_tensor(y) or y.dim() != 1 or y.dtype.is_floating_point:
            continue
        bad = (y < 0) | (y >= num_labels)
        if bad.any():
            r = int(bad.nonzero()[0])
            raise ValueError(
                f"{option}: item {items[r]} has {key} {int(y[r])}, outside the model's {num_labels} classes "
                f"(0..{num_labels - 1}); the model's num_labels must cover every class of the data"
            )
    for key, v in batch.items():
        if torch.is_tensor(v) and v.dtype.is_floating_point and v.numel() and not torch.isfinite(v).all():
            r = int((~torch.isfinite(v.reshape(len(v), -1))).any(1).nonzero()[0])
            raise ValueError(
                f"{option}: item {items[r]} has non-finite values (NaN or inf) in {key!r}; every value a method "
                "scores on must be a finite number (check the images / the preprocessing)"
            )


def _row_keys(batch: Mapping[str, Any], n: int) -> list[bytes]:
    """A content digest of each item of ``batch`` over its model inputs (all tensor fields when it has none)."""
    keys = sorted(k for k in batch if k in MODEL_INPUTS and torch.is_tensor(batch[k])) or sorted(
        k for k in batch if torch.is_tensor(batch[k])
    )
    out = []
    for r in range(n):
        h = hashlib.blake2b(digest_size=16)
        for k in keys:
            h.update(k.encode())
            h.update(batch[k][r].detach().cpu().contiguous().numpy().tobytes())
        out.append(h.digest())
    return out


def check_calibration(
    data: Any,
    option: str,
    model: nn.Module | None = None,
    indices: Sequence[int] | None = None,
    min_distinct: int = 0,
    why: str = "",
) -> None:
    """Check the items ``indices`` of the map-style ``data`` (default: the first and the last), batched
    as a method reads them (``data.collate`` or torch's default): vocabulary, labels and finite values against
    ``model`` (`check_batch_values`), and at least ``min_distinct`` distinct items (``why``: what needs them)."""
    n = len(data)
    if indices is None:
        indices = sorted({0, n - 1}) if n else []
    indices = list(indices)
    rows = text_vocab_rows(model) if model is not None else None
    classes = class_count(model) if model is not None else None
    collate = getattr(data, "collate", None) or default_collate
    seen: set[bytes] = set()
    for start in range(0, len(indices), CHUNK):
        chunk = indices[start : start + CHUNK]
        batch = collate([data[i] for i in chunk])
        if not isinstance(batch, Mapping):
            return  # as_dataset refuses such data; nothing more to check here
        check_batch_values(batch, option, chunk, rows, classes)
        if min_distinct:
            seen.update(_row_keys(batch, len(chunk)))
    if min_distinct and len(seen) < min_distinct:
        what = "item" if len(indices) == 1 else "items"
        raise ValueError(
            f"{option}: {len(seen)} distinct item{'s' if len(seen) != 1 else ''} among the {len(indices)} {what} "
            f"used, but at least {min_distinct} are needed: {why}. Give calibration data with more distinct items"
        )


def calibration_data(
    data: Any,
    model: nn.Module | None,
    option: str = "calib_data",
    indices: Sequence[int] | None = None,
    min_distinct: int = 0,
    why: str = "",
) -> Any:
    """``data`` as a checked map-style dataset (`as_dataset`, then `check_calibration`): what every method that
    scores or searches on data reads its calibration through."""
    data, _ = as_dataset(data, option)
    check_calibration(data, option, model, indices, min_distinct, why)
    return data
