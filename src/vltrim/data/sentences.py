"""Sentences from the files users have: .txt (one sentence per line), .jsonl or .csv (a 'text' or 'sentence'
field, optional 'label'), for sentence-embedding distillation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vltrim.data.manifest import _csv_rows, _decoded, _jsonl_rows

SENTENCE_SUFFIXES = (".txt", ".jsonl", ".csv")
TEXT_FIELDS = ("text", "sentence")
LABEL_FIELD = "label"


@dataclass
class Sentences:
    texts: list[str]
    labels: list[int] | None  # one class index per sentence, or None (no 'label' field)
    classes: list[str] | None  # names of string labels (label i is classes[i]); None for integer labels


def read_sentences(path: str | Path) -> Sentences:
    """The sentences (and labels, when every row has one) of a UTF-8 .txt / .jsonl / .csv file; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"sentence file {path} does not exist" + (" (it is a directory)" if path.is_dir() else "")
        )
    suffix = path.suffix.lower()
    if suffix not in SENTENCE_SUFFIXES:
        raise ValueError(f"sentence file {path.name}: give a .txt (one sentence per line), .jsonl or .csv file")
    text = _decoded(path)
    if suffix == ".txt":
        return (
            Sentences([line.strip() for line in text.splitlines() if line.strip()], None, None)
            if text.strip()
            else _empty(path)
        )
    rows = _jsonl_rows(path, text) if suffix == ".jsonl" else _csv_rows(path, text)
    if not rows:
        _empty(path)
    texts, labels = zip(*(_row(path, n, line, r) for n, (line, r) in enumerate(rows, 1)))
    return _with_labels(path, list(texts), list(labels))


def _empty(path: Path) -> Sentences:
    raise ValueError(f"sentence file {path} has no sentences")


def _row(path: Path, n: int, line: int, row: Any) -> tuple[str, Any]:
    """(text, label or None) of one .jsonl / .csv row; a JSONL line may also be a bare string."""
    where = f"{path} row {n} (line {line})"
    if isinstance(row, str):
        row = {"text": row}
    if not isinstance(row, dict):
        raise ValueError(
            f'{where} must be a JSON object like {{"text": ..., "label": ...}} or a string, got {type(row).__name__}'
        )
    key = next((k for k in TEXT_FIELDS if k in row), None)
    if key is None:
        raise ValueError(
            f"{where} has no 'text' or 'sentence' field (has {sorted(str(k) for k in row if k is not None)})"
        )
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: the '{key}' field must be a non-empty string, got {str(value)[:60]!r}")
    label = row.get(LABEL_FIELD)
    return value.strip(), (None if label in ("", None) else label)


def _with_labels(path: Path, texts: list[str], labels: list[Any]) -> Sentences:
    """Integer labels as they are, string labels as indices into their sorted names; labels on some rows only are refused."""
    given = [lab is not None for lab in labels]
    if not any(given):
        return Sentences(texts, None, None)
    if not all(given):
        raise ValueError(
            f"{path}: row {given.index(False) + 1} has no '{LABEL_FIELD}' but others do; label every row or none"
        )
    if all(isinstance(lab, int) and not isinstance(lab, bool) and lab >= 0 for lab in labels):
        return Sentences(texts, labels, None)
    if path.suffix.lower() == ".csv" and all(str(lab).isdigit() for lab in labels):
        return Sentences(texts, [int(lab) for lab in labels], None)
    if all(isinstance(lab, str) for lab in labels):
        classes = sorted(set(labels))
        return Sentences(texts, [classes.index(lab) for lab in labels], classes)
    shown = sorted({repr(lab) for lab in labels})[:5]
    raise ValueError(
        f"{path}: '{LABEL_FIELD}' values must all be class indices >= 0 or all class names (strings); got {', '.join(shown)}"
    )
