"""Caption metrics (corpus BLEU-n and CIDEr-D) as the COCO caption evaluation (coco-caption) defines them.

Pure Python: scores generated captions (one per image) against the reference captions of each image, so a captioning
model can be judged without Java or extra packages. Written from the metric definitions; the numbers agree with
pycocoevalcap's ``Bleu(4)`` and ``Cider()`` on the same tokens (see tests/test_text_metrics.py).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

NGRAMS = 4  # BLEU-4 and CIDEr use 1..4-grams
CIDER_SIGMA = 6.0  # standard deviation of CIDEr-D's gaussian length penalty
_TINY, _SMALL = 1e-15, 1e-9  # coco-caption's BLEU smoothing: (count + tiny) / (total + small), so 0 counts give 0

# PTB-like tokens: clitics split off ("dog's" -> dog 's, "don't" -> do n't), then words (letters, digits, underscore;
# internal hyphens and apostrophes kept: "black-and-white", "o'neil") and numbers with internal . or , ("3.5",
# "1,000"); all other punctuation (. , ! ? ; : quotes, brackets, lone hyphens) is dropped, as coco-caption drops the
# punctuation tokens of its PTB tokenizer's output.
_CLITIC = re.compile(r"(?<=\w)(n't|'(?:s|re|ve|ll|d|m))\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\d+(?:[.,]\d+)+|\w+(?:['-]\w+)*")

Ngrams = Counter  # n-gram (a tuple of words) -> count
Weights = tuple[dict[tuple[str, ...], float], list[float]]  # tf-idf weight per n-gram, and the norm per n-gram order


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and split it into PTB-like word tokens without punctuation (rules above ``_TOKEN``)."""
    return _TOKEN.findall(_CLITIC.sub(r" \1", text.lower()))


def _ngrams(words: Sequence[str], n: int) -> Ngrams:
    """Counts of the 1..n-grams of ``words``."""
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _checked(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[tuple[list[str], list[list[str]]]]:
    """Tokenized (hypothesis, references) per image, after checking the corpus is well formed."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("hypotheses and references must be lists (one entry per image), not a single string")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but references for {len(references)} images: one per image")
    if not hypotheses:
        raise ValueError("no captions to score: hypotheses and references are empty")
    pairs = []
    for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
        if not isinstance(hyp, str):
            raise TypeError(f"hypothesis {i} is a {type(hyp).__name__}, not a string (one caption per image)")
        if isinstance(refs, str):
            raise TypeError(f"references of image {i} are a string, not a list of strings: wrap it as [{refs[:30]!r}]")
        if len(refs) == 0:
            raise ValueError(f"image {i} has no reference captions: every image needs at least one")
        pairs.append((tokenize(hyp), [tokenize(r) for r in refs]))
    return pairs


def _closest(lengths: Sequence[int], length: int) -> int:
    """The reference length closest to ``length`` (the shorter one on a tie), BLEU's effective reference length."""
    return min(lengths, key=lambda r: (abs(r - length), r))


def bleu(hypotheses: list[str], references: list[list[str]], n: int = NGRAMS) -> float:
    """Corpus BLEU-n (0..1) of one hypothesis per image against its references, as coco-caption's Bleu scorer: clipped
    n-gram counts summed over the corpus, closest reference length for the brevity penalty, no other smoothing."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    correct, guess = [0] * n, [0] * n
    hyp_len = ref_len = 0
    for hyp, refs in _checked(hypotheses, references):
        counts, best = _ngrams(hyp, n), Counter()
        for ref in refs:
            best |= _ngrams(ref, n)  # max count of each n-gram over the references
        for gram, c in counts.items():
            correct[len(gram) - 1] += min(c, best[gram])
        for k in range(n):
            guess[k] += max(0, len(hyp) - k)
        hyp_len += len(hyp)
        ref_len += _closest([len(r) for r in refs], len(hyp))
    log_precision = sum(math.log((correct[k] + _TINY) / (guess[k] + _SMALL)) for k in range(n)) / n
    ratio = (hyp_len + _TINY) / (ref_len + _SMALL)
    penalty = 1.0 - 1.0 / ratio if ratio < 1 else 0.0
    return math.exp(log_precision + penalty)


def _tfidf(counts: Ngrams, df: Counter, log_images: float) -> Weights:
    """tf-idf weight of each n-gram (idf = log(images) - log(max(1, document frequency))) and the norm per order."""
    vec = {g: c * (log_images - math.log(max(1.0, df[g]))) for g, c in counts.items()}
    norms = [0.0] * NGRAMS
    for g, w in vec.items():
        norms[len(g) - 1] += w * w
    return vec, [math.sqrt(x) for x in norms]


def _cider_d(hyp: Weights, ref: Weights, hyp_len: int, ref_len: int) -> float:
    """CIDEr-D of a hypothesis against one reference: per n-gram order the cosine of the tf-idf vectors with the
    hypothesis weights clipped by the reference's, times a gaussian penalty on the length difference; summed.
    (coco-caption counts lengths in bigrams, words - 1: the same difference unless a caption is empty, scoring 0.)"""
    (h, h_norms), (r, r_norms) = hyp, ref
    dots = [0.0] * NGRAMS
    for g, w in h.items():
        dots[len(g) - 1] += min(w, r.get(g, 0.0)) * r.get(g, 0.0)
    penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2 * CIDER_SIGMA**2))
    return sum(d / (hn * rn) * penalty for d, hn, rn in zip(dots, h_norms, r_norms) if hn and rn)  # 0 if a norm is 0


def cider_per_image(hypotheses: list[str], references: list[list[str]]) -> list[float]:
    """CIDEr-D of each image (coco-caption's: document frequencies from the references of the whole corpus, so a
    corpus of one image scores 0; mean over 1..4-grams and over the references, times 10)."""
    pairs = _checked(hypotheses, references)
    df = Counter(g for _, refs in pairs for g in set().union(*(_ngrams(r, NGRAMS) for r in refs)))
    log_images = math.log(len(pairs))
    scores = []
    for hyp, refs in pairs:
        h = _tfidf(_ngrams(hyp, NGRAMS), df, log_images)
        total = sum(_cider_d(h, _tfidf(_ngrams(r, NGRAMS), df, log_images), len(hyp), len(r)) for r in refs)
        scores.append(10.0 * total / NGRAMS / len(refs))
    return scores


def cider(hypotheses: list[str], references: list[list[str]]) -> float:
    """Corpus CIDEr-D: the mean over images of :func:`cider_per_image` (about 0..10; COCO models score ~1.0-1.4)."""
    scores = cider_per_image(hypotheses, references)
    return sum(scores) / len(scores)


def caption_scores(hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
    """BLEU-4 and CIDEr of a captioning corpus, the two numbers captioning papers report first."""
    return {"BLEU-4": bleu(hypotheses, references), "CIDEr": cider(hypotheses, references)}
