"""Caption metrics (BLEU, CIDEr-D) against coco-caption's numbers, and the word tokenizer's decode."""

from __future__ import annotations

import math

import pytest
import torch

from vltrim.data.tokenizer import WordTokenizer
from vltrim.tasks.text_metrics import bleu, caption_scores, cider, cider_per_image, tokenize

CORPORA = {
    "perfect": (
        ["a cat sits on a mat", "two dogs play in the park", "a man rides a red bicycle down the street"],
        [["a cat sits on a mat"], ["two dogs play in the park"], ["a man rides a red bicycle down the street"]],
    ),
    "no_overlap": (
        ["purple elephants dance", "quantum soup recipes", "seven blue violins"],
        [["a cat sits on a mat"], ["two dogs play in the park"], ["a man rides a bicycle"]],
    ),
    "short": (
        ["a cat", "two dogs play", "a man rides"],
        [
            ["a cat sits on a mat", "a small cat on the mat"],
            ["two dogs play in the green park"],
            ["a man rides a red bicycle down the street", "a man on a bike"],
        ],
    ),
    "multi_ref": (
        [
            "a black cat sitting on a wooden table",
            "a group of people standing near a bus",
            "a plate of food with broccoli",
        ],
        [
            ["a black cat is sitting on a table", "a cat sits on top of a wooden table", "black cat on a desk"],
            ["people wait at a bus stop", "a group of people standing next to a bus", "a crowd near a city bus"],
            ["a plate with broccoli and rice", "food on a white plate", "a dish of broccoli and meat on a plate"],
        ],
    ),
    "clipping": (
        ["the the the the the the", "a dog a dog a dog", "man"],
        [["the cat is on the mat", "there is a cat on the mat"], ["a dog runs on the grass"], ["a man surfing a wave"]],
    ),
    "empty_hyp": (
        ["", "a dog on the beach", "a bird"],
        [["a cat on a couch"], ["a dog runs on the beach", "dog at the beach"], ["a bird on a branch"]],
    ),
}

# (BLEU-1, BLEU-2, BLEU-4, CIDEr) from pycocoevalcap 1.2 (pip, Python 3.11.7, numpy 2.4.6), computed as
#   res = {i: [h] for i, h in enumerate(hyps)}; gts = {i: list(r) for i, r in enumerate(refs)}
#   b, _ = Bleu(4).compute_score(gts, res, verbose=0)  # b[0], b[1], b[3]
#   c, _ = Cider().compute_score(gts, res)
# on the strings above as they are (already lower-cased and without punctuation, so PTBTokenizer is skipped).
EXPECTED = {
    "perfect": (0.999999999904762, 0.9999999999007937, 0.9999999998890874, 10.0),
    "no_overlap": (4.56791433795366e-17, 5.594529658209448e-17, 2.0491875413092e-14, 0.0),
    "short": (0.2865047967885641, 0.28650479677782015, 0.009060077183419444, 2.466152863678007),
    "multi_ref": (0.9555630361814149, 0.8202506043737863, 0.43389278462942926, 2.462710684881555),
    "clipping": (0.28274672326099465, 0.1441731059295596, 3.91126536487279e-09, 0.718116136793542),
    "empty_hyp": (0.367879441066334, 0.32904137509017906, 3.953121858461659e-05, 2.1599164780011773),
}

# raw captions, and the tokens coco-caption's PTBTokenizer gives for them (lower-cased, clitics split off,
# punctuation tokens removed); pycocoevalcap 1.2 on TOKENIZED (same call as above): BLEU-4 and CIDEr below
RAW = (
    ["A Dog's ball, on the GRASS.", "Two people -- standing near a bus!", "It isn't a black-and-white photo?"],
    [
        ["A dog's red ball lies on the grass.", "The ball of a dog, on green grass"],
        ["People standing (near) a bus.", "Two people wait at the bus stop..."],
        ["A black-and-white photo of a street.", "It's not a colour photo; it is black-and-white"],
    ],
)
TOKENIZED = (
    ["a dog 's ball on the grass", "two people standing near a bus", "it is n't a black-and-white photo"],
    [
        ["a dog 's red ball lies on the grass", "the ball of a dog on green grass"],
        ["people standing near a bus", "two people wait at the bus stop"],
        ["a black-and-white photo of a street", "it 's not a colour photo it is black-and-white"],
    ],
)
RAW_EXPECTED = {"BLEU-4": 0.5060629179130369, "CIDEr": 3.663992248411247}


def close(a: float, b: float) -> bool:
    return a == pytest.approx(b, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("name", list(CORPORA))
def test_matches_coco_caption(name):
    hyps, refs = CORPORA[name]
    b1, b2, b4, c = EXPECTED[name]
    assert close(bleu(hyps, refs, n=1), b1) and close(bleu(hyps, refs, n=2), b2)
    assert close(bleu(hyps, refs), b4) and close(cider(hyps, refs), c)
    assert caption_scores(hyps, refs) == {"BLEU-4": bleu(hyps, refs), "CIDEr": cider(hyps, refs)}


def test_perfect_match_and_no_overlap():
    hyps, refs = CORPORA["perfect"]
    assert bleu(hyps, refs) == pytest.approx(1.0, abs=1e-6)
    assert bleu(*CORPORA["no_overlap"]) == pytest.approx(0.0, abs=1e-6)
    assert cider(*CORPORA["no_overlap"]) == 0.0


def test_brevity_penalty_lowers_short_hypotheses():
    """Unigram precision of "short" is 1 (every hypothesis word is in a reference): BLEU-1 is the brevity penalty."""
    hyps, refs = CORPORA["short"]
    closest = [6, 7, 5]  # the reference lengths closest to the hypothesis lengths 2, 3, 3
    assert close(bleu(hyps, refs, n=1), math.exp(1 - sum(closest) / 8))


def test_closest_reference_length_prefers_the_shorter_on_a_tie():
    assert bleu(["a b c d"], [["a b c", "a b c d e"]], n=1) == pytest.approx(1.0)  # reference length 3: no penalty


def test_tokenization_matches_ptb_tokens():
    for raw, tokens in zip(RAW[0] + sum(RAW[1], []), TOKENIZED[0] + sum(TOKENIZED[1], [])):
        assert tokenize(raw) == tokens.split()
    scores = caption_scores(*RAW)
    assert close(scores["BLEU-4"], RAW_EXPECTED["BLEU-4"]) and close(scores["CIDEr"], RAW_EXPECTED["CIDEr"])
    assert tokenize("Hello.World  3.5 m, 1,000 o'neil") == ["hello", "world", "3.5", "m", "1,000", "o'neil"]


@pytest.mark.parametrize("name", ["multi_ref", "clipping", "short"])
def test_image_order_does_not_change_scores(name):
    hyps, refs = CORPORA[name]
    order = [2, 0, 1]
    shuffled = ([hyps[i] for i in order], [refs[i] for i in order])
    assert close(bleu(*shuffled), bleu(hyps, refs)) and close(cider(*shuffled), cider(hyps, refs))
    assert close(bleu(hyps, [r[::-1] for r in refs]), bleu(hyps, refs))  # nor the order of the references


def test_cider_properties():
    hyps, refs = CORPORA["multi_ref"]
    exact = [r[0] for r in refs]
    assert cider(exact, refs) > 0 and cider(exact, refs) > cider(hyps, refs)
    assert cider(["a cat on a mat"], [["a cat on a mat"]]) == 0.0  # one image: every n-gram has idf log(1/1) = 0
    assert cider(exact, refs) == pytest.approx(sum(cider_per_image(exact, refs)) / 3)


def test_clipping_limits_repeated_words():
    refs = [["the cat is on the mat"], ["a dog runs"]]
    assert bleu(["the the the the the the", "a dog runs"], refs, n=1) < bleu(
        ["the cat is on the mat", "a dog runs"], refs, n=1
    )
    assert cider(["the the the the the the", "a dog runs"], refs) < cider(["the cat is on the mat", "a dog runs"], refs)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="2 hypotheses but references for 1"):
        bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="image 1 has no reference"):
        cider(["a cat", "a dog"], [["a cat"], []])
    with pytest.raises(ValueError, match="no captions"):
        caption_scores([], [])
    with pytest.raises(TypeError, match="references of image 0 are a string"):
        bleu(["a cat"], ["a cat"])
    with pytest.raises(ValueError, match="n must be at least 1"):
        bleu(["a cat"], [["a cat"]], n=0)


def test_decode_round_trip():
    tok = WordTokenizer(["a", "cat", "on", "the", "mat", "dog"], max_length=8)
    text = "A cat on the MAT"
    ids = tok.encode(text)
    assert tok.decode(ids) == text.lower()
    assert tok.decode(torch.tensor(ids)) == text.lower()
    padded = tok([text, "the dog"])["input_ids"]
    assert tok.batch_decode(padded) == ["a cat on the mat", "the dog"]
    assert tok.batch_decode(padded.tolist()) == ["a cat on the mat", "the dog"]
    assert tok.decode(padded[1], skip_special_tokens=False) == "[bos] the dog [eos] [pad] [pad] [pad] [pad]"


def test_decode_stops_at_eos_and_drops_specials():
    tok = WordTokenizer(["a", "cat"])
    bos, eos, pad, unk = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id
    ids = [bos, 4, unk, 5, eos, 4, 5, pad]
    assert tok.decode(ids) == "a cat"
    assert tok.decode(ids, skip_special_tokens=False) == "[bos] a [unk] cat [eos] a cat [pad]"
    assert tok.decode([4, 99, 5]) == "a cat" and tok.decode([4, 99], skip_special_tokens=False) == "a [unk]"
    assert tok.decode([]) == "" and tok.batch_decode(torch.zeros(2, 0, dtype=torch.long)) == ["", ""]
    with pytest.raises(ValueError, match="batch_decode"):
        tok.decode(torch.tensor([[4, 5]]))
