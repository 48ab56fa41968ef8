"""A word-level tokenizer with the call signature of HF tokenizers (enough for the built-in data)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

SPECIALS = ("[pad]", "[unk]", "[bos]", "[eos]")  # ids 0..3; eos != 2 so CLIP pools at the first eos
UNKNOWN_WARN = 0.2  # share of unknown words above which tokenizing texts warns: the model would learn from [unk]s


def warn_unknown(texts: Sequence[str], unknown: int, words: int, vocabulary: int, what: str, example: str) -> None:
    """Warn when more than `UNKNOWN_WARN` of the ``words`` of ``texts`` are unknown to a tokenizer (``what``, with
    ``vocabulary`` words; ``example`` a text with unknown words): training or scoring on such text sees mostly the
    unknown token."""
    if words and unknown / words > UNKNOWN_WARN:
        warnings.warn(
            f"{unknown / words:.0%} of the words of {len(texts)} texts ({unknown} of {words}) are unknown to {what} "
            f"(a vocabulary of {vocabulary} words), e.g. {example[:60]!r}: they all become [unk], so the model would "
            "learn from unknown tokens; use a tokenizer that knows the texts (the model's own: --tokenizer DIR)",
            stacklevel=3,
        )


class WordTokenizer:
    """Lower-cased whitespace split; [bos] words [eos] then [pad] up to ``max_length``."""

    def __init__(self, words: list[str], max_length: int = 16):
        self.vocab = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length
        self.pad_token_id, self.unk_token_id, self.bos_token_id, self.eos_token_id = range(4)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        n = max_length or self.max_length
        ids = [self.index.get(w, self.unk_token_id) for w in text.lower().split()][: n - 2]
        return [self.bos_token_id, *ids, self.eos_token_id]

    def __call__(
        self, texts, max_length: int | None = None, return_tensors: str = "pt", **_
    ) -> dict[str, torch.Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        n = max_length or self.max_length
        ids = torch.full((len(texts), n), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(texts), n), dtype=torch.long)
        unknown = words = 0
        example = ""
        for i, t in enumerate(texts):
            e = self.encode(t, n)
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
            unk = sum(1 for w in e[1:-1] if w == self.unk_token_id)
            example = example or (t if unk else "")
            unknown, words = unknown + unk, words + len(e) - 2
        warn_unknown(texts, unknown, words, len(self.vocab) - len(SPECIALS), "the built-in word tokenizer", example)
        return {"input_ids": ids, "attention_mask": mask}

    def _words(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """The vocabulary words of one sequence of ``ids``; ids outside the vocabulary (a model's padded one) are [unk]."""
        ids = ids.tolist() if torch.is_tensor(ids) else ids
        if isinstance(ids, (int, str)) or any(isinstance(i, (list, tuple)) for i in ids):
            raise ValueError("decode takes one sequence of ids (a list or 1-D tensor); batch_decode takes several")
        return [self.vocab[i] if 0 <= i < len(self.vocab) else SPECIALS[self.unk_token_id] for i in map(int, ids)]

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """The words of token ``ids`` joined by spaces, as HF's ``decode`` (to read generated captions);
        ``skip_special_tokens`` stops at the first [eos] and drops [pad] [unk] [bos]."""
        words = self._words(ids)
        if skip_special_tokens:
            eos = SPECIALS[self.eos_token_id]
            words = [w for w in words[: words.index(eos) if eos in words else None] if w not in SPECIALS]
        return " ".join(words)

    def batch_decode(
        self, sequences: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = True
    ) -> list[str]:
        """:meth:`decode` of each sequence (rows of a 2-D tensor, or a list of id lists), as HF's ``batch_decode``."""
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"vocab": self.vocab, "max_length": self.max_length}))

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        d = json.loads(Path(path).read_text())
        return cls(d["vocab"][len(SPECIALS) :], d["max_length"])
