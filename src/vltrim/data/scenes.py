"""Built-in scenes for the BLIP tasks (itm-retrieval, captioning, vqa): 1 to 3 objects (colour, shape, size) at
distinct cells of a 2 x 3 grid (top / bottom x left / center / right), templated captions, answerable questions.

Deterministic by (seed, split, n), generated in memory in about a second, no download. A scene's *description* (its
set of objects) belongs to one split by a hash of its text, so every val / test description is unseen in training:
evaluation measures composition, not memory. Each dataset draws ``n / REPEATS`` descriptions of its split and shows
each on several items (own jitter, tint and noise); items of one description share a ``label``: each other's
reference captions and retrieval hits. Images are rendered once when they fit in `PRECOMPUTE_BYTES`, else on access
(identical values: each item has its own random stream)."""

from __future__ import annotations

import functools
import hashlib
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from vltrim.checks import integer
from vltrim.data.manifest import encode_questions
from vltrim.data.synthetic import COLORS, MEAN, SHAPES, SIZES, SPLITS, STD, _shape_mask
from vltrim.data.tokenizer import WordTokenizer

ROWS = ("top", "bottom")
COLUMNS = ("left", "center", "right")
CELLS = tuple((r, c) for r in range(len(ROWS)) for c in range(len(COLUMNS)))  # cell index -> (row, column)
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COUNTS = ("zero", "one", "two", "three")
MAX_OBJECTS = 3
RADIUS = {"small": 0.08, "large": 0.13}  # of the image side: a large object stays inside its third of the width
JITTER = 0.02  # of the image side, each way
REPEATS = 4  # items per description, on average
SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}  # description hash % 10
PRECOMPUTE_BYTES = 256 << 20  # pixel values held in memory up to this size, else rendered per item
RENDER_PIXELS = 1 << 21  # pixels rendered at once (bounds the working memory of a batch)
CAPTIONS = (  # (object phrase, separator, last separator, prefix); objects in reading order
    ("{size} {color} {shape} at {row} {column}", " , ", " and ", ""),
    ("{row} {column} : {size} {color} {shape}", " , ", " , ", ""),
    ("{size} {color} {shape} {row} {column}", " and ", " and ", "a photo of "),
)
QUESTIONS = {
    "colour": "what colour is the {shape} ?",
    "size": "what size is the {shape} ?",
    "shape": "what shape is at {row} {column} ?",
    "count": "how many {plural} are there ?",
    "exists": "is there a {color} {shape} ?",
    "relation": "is the {shape} {relation} the {other} ?",
}
RELATIONS = {  # relation -> whether it holds from cell a to cell b
    "left of": lambda a, b: CELLS[a][1] < CELLS[b][1],
    "right of": lambda a, b: CELLS[a][1] > CELLS[b][1],
    "above": lambda a, b: CELLS[a][0] < CELLS[b][0],
    "below": lambda a, b: CELLS[a][0] > CELLS[b][0],
}
ANSWERS = tuple(sorted({*COLORS, *SHAPES, *SIZES, *COUNTS, "yes", "no"}))  # the answer vocabulary of SceneQA
_SCENE_STREAM, _IMAGE_STREAM, _TEXT_STREAM = 11, 12, 13  # independent random streams of one (seed, split)


class Thing(NamedTuple):
    """One object of a scene."""

    color: str
    shape: str
    size: str
    cell: int  # index into CELLS


Scene = tuple[Thing, ...]  # objects at distinct cells, in cell order


# ---------------------------------------------------------------- descriptions and splits


def random_scene(rng: np.random.Generator) -> Scene:
    """1 to MAX_OBJECTS objects of random colour, shape and size at distinct random cells."""
    k = int(rng.integers(1, MAX_OBJECTS + 1))
    cells = sorted(rng.choice(len(CELLS), k, replace=False).tolist())
    colors, shapes, sizes = list(COLORS), list(SHAPES), list(SIZES)
    return tuple(
        Thing(colors[rng.integers(len(colors))], shapes[rng.integers(len(shapes))], sizes[rng.integers(2)], c)
        for c in cells
    )


def describe(scene: Scene) -> str:
    """The scene's canonical text (its first caption): equal texts <=> equal descriptions."""
    return caption(scene, 0)


def split_of(scene: Scene) -> str:
    """The split a description belongs to, by a stable hash of its text (80% train, 10% val, 10% test)."""
    bucket = int.from_bytes(hashlib.blake2b(describe(scene).encode(), digest_size=8).digest(), "little") % 10
    return next(s for s, b in SPLIT_BUCKETS.items() if bucket in b)


def scene_pool(split: str, count: int, rng: np.random.Generator) -> list[Scene]:
    """``count`` distinct random descriptions of ``split``."""
    pool: dict[Scene, None] = {}
    for _ in range(100 * count + 1000):
        s = random_scene(rng)
        if split_of(s) == split:
            pool[s] = None
            if len(pool) == count:
                return list(pool)
    raise ValueError(f"cannot draw {count} distinct {split} scene descriptions")  # unreachable for sane counts


# ---------------------------------------------------------------- text


def _phrase(template: str, t: Thing) -> str:
    row, col = CELLS[t.cell]
    return template.format(size=t.size, color=t.color, shape=t.shape, row=ROWS[row], column=COLUMNS[col])


def caption(scene: Scene, template: int = 0) -> str:
    """Caption ``template`` (an index into CAPTIONS) of ``scene``, objects in reading order."""
    phrase, sep, last, prefix = CAPTIONS[template]
    parts = [_phrase(phrase, t) for t in scene]
    body = sep.join(parts[:-1]) + last + parts[-1] if len(parts) > 1 else parts[0]
    return prefix + body


def caption_tokens() -> int:
    """Tokens of the longest caption, [bos] and [eos] included (every attribute is one word, a cell two)."""
    full = tuple(Thing("red", "circle", "small", c) for c in range(MAX_OBJECTS))
    return max(len(caption(full, t).split()) for t in range(len(CAPTIONS))) + 2


def question_tokens() -> int:
    """Tokens of the longest question, [bos] and [eos] included."""
    fill = dict(shape="x", row="x", column="x", plural="x", color="x", other="x")
    return max(len(q.format(relation=r, **fill).split()) for q in QUESTIONS.values() for r in RELATIONS) + 2


def vocabulary() -> list[str]:
    """Every word of the captions, questions and answers, sorted (its order fixes the token ids)."""
    words = {*COLORS, *SHAPES, *SIZES, *ROWS, *COLUMNS, *PLURALS.values(), *COUNTS, "yes", "no"}
    for template in [part for c in CAPTIONS for part in c] + [*QUESTIONS.values(), *RELATIONS]:
        words.update(w for w in template.split() if not w.startswith("{"))
    return sorted(words)


def tokenizer(max_length: int = 24) -> WordTokenizer:
    """The word tokenizer of the scenes: every caption, question and answer word; [pad] 0, [unk] 1, [bos] 2, [eos] 3."""
    return WordTokenizer(vocabulary(), max_length=max_length)


# ---------------------------------------------------------------- questions


def _unique_shapes(scene: Scene) -> list[Thing]:
    """The objects whose shape no other object of the scene has (``the <shape>`` names one object)."""
    return [t for t in scene if sum(o.shape == t.shape for o in scene) == 1]


def _pick(items: list, rng: np.random.Generator):
    return items[int(rng.integers(len(items)))]


def _ask_colour(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    unique = _unique_shapes(scene)
    t = _pick(unique, rng) if unique else None
    return None if t is None else (QUESTIONS["colour"].format(shape=t.shape), t.color)


def _ask_size(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    unique = _unique_shapes(scene)
    t = _pick(unique, rng) if unique else None
    return None if t is None else (QUESTIONS["size"].format(shape=t.shape), t.size)


def _ask_shape(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    t = _pick(list(scene), rng)
    row, col = CELLS[t.cell]
    return QUESTIONS["shape"].format(row=ROWS[row], column=COLUMNS[col]), t.shape


def _ask_count(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """A count drawn uniformly among those the scene has (zero included), then a shape with that count."""
    counts = {s: sum(t.shape == s for t in scene) for s in SHAPES}
    n = _pick(sorted(set(counts.values())), rng)
    shape = _pick([s for s in SHAPES if counts[s] == n], rng)
    return QUESTIONS["count"].format(plural=PLURALS[shape]), COUNTS[n]


def _ask_exists(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """Yes or no with equal chance: an object of the scene, or a colour-shape pair the scene lacks."""
    present = {(t.color, t.shape) for t in scene}
    if rng.integers(2):
        color, shape = _pick(sorted(present), rng)
        return QUESTIONS["exists"].format(color=color, shape=shape), "yes"
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    color, shape = _pick(absent, rng)
    return QUESTIONS["exists"].format(color=color, shape=shape), "no"


def _ask_relation(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """Yes or no with equal chance: two objects of unique shapes and a relation that holds (or not) between them
    (distinct cells always have one relation that holds and one that does not)."""
    unique = _unique_shapes(scene)
    if len(unique) < 2:
        return None
    i, j = rng.choice(len(unique), 2, replace=False).tolist()
    a, b = unique[i], unique[j]
    want = bool(rng.integers(2))
    relation = _pick([r for r, holds in RELATIONS.items() if holds(a.cell, b.cell) == want], rng)
    return QUESTIONS["relation"].format(shape=a.shape, relation=relation, other=b.shape), "yes" if want else "no"


ASKERS = (_ask_colour, _ask_size, _ask_shape, _ask_count, _ask_exists, _ask_relation)


def ask(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """A (question, answer) about ``scene``: a question kind drawn uniformly among those the scene can answer."""
    order = rng.permutation(len(ASKERS))
    for k in order:
        qa = ASKERS[k](scene, rng)
        if qa is not None:
            return qa
    raise AssertionError("the shape and count questions fit every scene")


# ---------------------------------------------------------------- images


class Looks(NamedTuple):
    """How each item's scene looks (float32 arrays, one row per item, one column per object slot): drawn for all items
    at once, so an image renders the same alone or in a batch."""

    tint: np.ndarray  # [n, 3] background colour
    shape: np.ndarray  # [n, MAX_OBJECTS] index into SHAPES, -1 for an empty slot
    center: np.ndarray  # [n, MAX_OBJECTS, 2] (x, y) as fractions of the side: the cell's centre, jittered
    radius: np.ndarray  # [n, MAX_OBJECTS] fraction of the side
    color: np.ndarray  # [n, MAX_OBJECTS, 3] RGB in [0, 1], shaded
    noise_seed: int  # item i's pixel noise comes from torch's generator seeded noise_seed + i


def draw_looks(scenes: list[Scene], rng: np.random.Generator) -> Looks:
    """Random background tint, jitter, radius and shade of every object of every scene."""
    n, k = len(scenes), MAX_OBJECTS
    shape = np.full((n, k), -1, np.int64)
    center = np.zeros((n, k, 2), np.float32)
    base = np.zeros((n, k, 3), np.float32)
    size = np.zeros((n, k), np.float32)
    for i, scene in enumerate(scenes):
        for j, t in enumerate(scene):
            row, col = CELLS[t.cell]
            shape[i, j], size[i, j] = SHAPES.index(t.shape), RADIUS[t.size]
            center[i, j] = ((col + 0.5) / len(COLUMNS), (row + 0.5) / len(ROWS))
            base[i, j] = np.array(COLORS[t.color], np.float32) / 255
    tint = rng.uniform(0.05, 0.35, (n, 3)).astype(np.float32)
    center += rng.uniform(-JITTER, JITTER, (n, k, 2)).astype(np.float32)
    radius = size * rng.uniform(0.9, 1.1, (n, k)).astype(np.float32)
    color = base * rng.uniform(0.85, 1.0, (n, k, 1)).astype(np.float32)
    return Looks(tint, shape, center, radius, color, int(rng.integers(2**62)))


@functools.lru_cache(maxsize=8)
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    return yy, xx


def render(looks: Looks, items: np.ndarray, image_size: int) -> torch.Tensor:
    """Images [len(items), 3, H, W] of ``items`` (indices into ``looks``), normalised with MEAN / STD: tinted
    background, the objects (drawn shape by shape over all images at once), pixel noise (std 0.04), clipped to [0, 1]."""
    s, items = image_size, np.asarray(items, np.int64)
    yy, xx = _grid(s)
    img = np.repeat(looks.tint[items][:, None, None, :], s * s, axis=1).reshape(len(items), s, s, 3)
    for j in range(MAX_OBJECTS):
        for k, shape in enumerate(SHAPES):
            sel = np.flatnonzero(looks.shape[items, j] == k)
            if len(sel):
                it = items[sel]
                (cx, cy), r = (looks.center[it, j].T * s)[..., None, None], looks.radius[it, j, None, None] * s
                mask = _shape_mask(shape, xx, yy, cx, cy, r)[..., None]
                img[sel] = np.where(mask, looks.color[it, j, None, None, :], img[sel])
    img += np.stack([_noise(looks.noise_seed + int(i), s) for i in items])
    pixels = (np.clip(img, 0, 1, out=img) - np.float32(MEAN)) / np.float32(STD)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def _noise(seed: int, s: int) -> np.ndarray:
    """Pixel noise (std 0.04) of one image, from its own seed (torch's generator: cheap to seed per image)."""
    return 0.04 * torch.randn((s, s, 3), generator=torch.Generator().manual_seed(seed)).numpy()


# ---------------------------------------------------------------- datasets


class SceneImages(Dataset):
    """The scenes of one split and their images (the part SceneCaptions and SceneQA share); ``scene_ids[i]`` indexes
    item i's description in ``descriptions``."""

    def __init__(self, split: str, n: int, seed: int, image_size: int):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        n, self.seed = integer("n", n, 1), integer("seed", seed, 0)
        self.split, self.image_size = split, integer("image_size", image_size, 16)
        rng = self._stream(_SCENE_STREAM)
        self.descriptions = scene_pool(split, -(-n // REPEATS), rng)
        ids = rng.permutation(n) % len(self.descriptions)
        self.scene_ids = torch.as_tensor(ids, dtype=torch.long)
        self.scenes = [self.descriptions[k] for k in ids.tolist()]
        self.looks = draw_looks(self.scenes, self._stream(_IMAGE_STREAM))
        held = n * 3 * self.image_size**2 * 4 <= PRECOMPUTE_BYTES
        self.pixel_values = self._render_all() if held else None

    def __len__(self) -> int:
        return len(self.scenes)

    def _stream(self, kind: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[self.split], kind])

    def _render_all(self) -> torch.Tensor:
        step, n = max(1, RENDER_PIXELS // self.image_size**2), len(self)
        chunks = [np.arange(a, min(a + step, n)) for a in range(0, n, step)]
        return torch.cat([render(self.looks, items, self.image_size) for items in chunks])

    def image(self, i: int) -> torch.Tensor:
        """Item i's normalised [3, H, W] pixel values (held, or rendered now: the same values)."""
        return self.pixel_values[i] if self.pixel_values is not None else render(self.looks, [i], self.image_size)[0]


def _fits(what: str, max_length: int, needed: int) -> int:
    """``max_length`` checked to hold the longest ``what`` (no text is cut)."""
    max_length = integer("max_length", max_length, 1)
    if max_length < needed:
        raise ValueError(
            f"max_length {max_length} cannot hold the longest scene {what} ({needed} tokens with [bos] and [eos]); "
            f"give max_length >= {needed} (a model whose text takes that many positions)"
        )
    return max_length


class SceneCaptions(SceneImages):
    """``n`` scene-caption pairs of one split: items {pixel_values, input_ids, attention_mask, label}, ``label`` the
    scene description (items with equal labels are each other's reference captions and retrieval hits)."""

    def __init__(self, split: str = "train", n: int = 2000, seed: int = 0, image_size: int = 32, max_length: int = 24):
        max_length = _fits("caption", max_length, caption_tokens())
        super().__init__(split, n, seed, image_size)
        self.labels = self.scene_ids
        templates = self._stream(_TEXT_STREAM).integers(0, len(CAPTIONS), len(self))
        self.captions = [caption(s, int(t)) for s, t in zip(self.scenes, templates)]
        self.tokenizer = tokenizer(max_length)
        enc = self.tokenizer(self.captions)
        self.input_ids, self.attention_mask = enc["input_ids"], enc["attention_mask"]
        groups: dict[int, dict[str, None]] = {}
        for k, c in zip(self.labels.tolist(), self.captions):
            groups.setdefault(k, {})[c] = None
        self._references = {k: list(g) for k, g in groups.items()}

    def references(self, i: int) -> list[str]:
        """The distinct captions of item i's description in this dataset (its own first among them when first seen)."""
        return list(self._references[int(self.labels[i])])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": self.image(i),
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "label": self.labels[i],
        }


class SceneQA(SceneImages):
    """``n`` scene-question-answer triples of one split: items {pixel_values, input_ids, attention_mask (the
    question), decoder_input_ids, decoder_attention_mask ([bos] answer [eos] [pad]...), labels (-100 at padding),
    answer (an index into ``answers``, the fixed ANSWERS)}."""

    def __init__(
        self,
        split: str = "train",
        n: int = 2000,
        seed: int = 0,
        image_size: int = 32,
        max_length: int = 24,
        answer_length: int = 6,
    ):
        max_length = _fits("question", max_length, question_tokens())
        answer_length = integer("answer_length", answer_length, 3)  # [bos] word [eos]
        super().__init__(split, n, seed, image_size)
        rng = self._stream(_TEXT_STREAM)
        qa = [ask(s, rng) for s in self.scenes]
        self.questions, self.answer_texts = [q for q, _ in qa], [a for _, a in qa]
        self.answers = list(ANSWERS)
        self.tokenizer = tokenizer(max_length)
        self.fields = encode_questions(self.tokenizer, self.questions, self.answer_texts, max_length, answer_length)
        self.answer = torch.tensor([ANSWERS.index(a) for a in self.answer_texts])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.image(i), **{k: v[i] for k, v in self.fields.items()}, "answer": self.answer[i]}
