"""Segmentation data: the built-in scenes with per-pixel shape labels, and a user's image + mask folders.

Built-in (`SceneSegments`): the scenes of `vltrim.data.scenes` (1 to 3 objects on a 2 x 3 grid; a description
belongs to one split by a hash of its text, so val / test layouts are unseen in training), each pixel labelled with
the shape of the object drawn there: background 0, then one class per shape (``SEGMENT_CLASSES``). Deterministic by
(seed, split, n); the label maps are drawn from the same geometry as the images (a later object covers an earlier).

A user's folder (`SegmentationFolder`): root/images/<name>.<png|jpg|...> and root/masks/<name>.png, the mask
single-channel (mode L, P or 16-bit greyscale) holding one class index per pixel, 255 for pixels that count for
nothing. Every pair is checked when the dataset is built (image readable, mask present, readable, single-channel,
of the image's size, every label below the model's num_labels or 255); one error names every bad file and why.
Image and mask are resized alike: the shorter side to the model's input size (image bicubic, mask nearest), then the
centre square, the image normalised with the model processor's mean and std when it has one."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vltrim.checks import integer
from vltrim.data.manifest import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_SUFFIXES,
    SHOWN_BAD_FILES,
    SIXTEEN_BIT_MODES,
    _array,
    _as_rgb,
    _visible,
    image_problem,
)
from vltrim.data.scenes import MAX_OBJECTS, SceneImages, _grid
from vltrim.data.synthetic import SHAPES, _shape_mask

SEGMENT_CLASSES = ("background", *SHAPES)  # label id -> name of the built-in scenes' classes
IGNORE_INDEX = 255  # a mask value no loss or metric counts
MASK_MODES = {"L", "P", *SIXTEEN_BIT_MODES}  # single-channel modes whose values are class indices


def render_labels(looks, items: np.ndarray, image_size: int) -> torch.Tensor:
    """[len(items), H, W] uint8 label maps of ``items`` (indices into a `scenes.Looks`): 0 for the background, 1 +
    the shape's index where an object is drawn, by the geometry `scenes.render` draws the images with."""
    s, items = image_size, np.asarray(items, np.int64)
    yy, xx = _grid(s)
    out = np.zeros((len(items), s, s), np.uint8)
    for j in range(MAX_OBJECTS):
        for k, shape in enumerate(SHAPES):
            sel = np.flatnonzero(looks.shape[items, j] == k)
            if len(sel):
                it = items[sel]
                (cx, cy), r = (looks.center[it, j].T * s)[..., None, None], looks.radius[it, j, None, None] * s
                out[sel] = np.where(_shape_mask(shape, xx, yy, cx, cy, r), k + 1, out[sel])
    return torch.from_numpy(out)


class SceneSegments(SceneImages):
    """``n`` built-in scenes of one split as segmentation items {pixel_values [3, S, S], labels [S, S] (long)}:
    each pixel's class is the shape of the object drawn there, 0 the background (`SEGMENT_CLASSES`)."""

    classes = SEGMENT_CLASSES

    def __init__(self, split: str = "train", n: int = 2000, seed: int = 0, image_size: int = 32):
        super().__init__(split, n, seed, image_size)
        step = max(1, (1 << 22) // self.image_size**2)
        self.labels = torch.cat(
            [render_labels(self.looks, np.arange(a, min(a + step, n)), self.image_size) for a in range(0, n, step)]
        )

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.image(i), "labels": self.labels[i].long()}


# ---------------------------------------------------------------- a user's image + mask folders


def _fit(im: Image.Image, size: int, resample: int) -> Image.Image:
    """Shorter side to ``size`` (aspect ratio kept), then the centre square (the geometry of
    `vltrim.data.manifest.resize_crop`; masks resample by nearest neighbour so labels stay labels)."""
    w, h = im.size
    short = min(w, h)
    nw, nh = max(size, int(size * w / short)), max(size, int(size * h / short))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def _mask_values(im: Image.Image) -> np.ndarray:
    """A single-channel mask's class indices (a palette image's indices, not its colours)."""
    return np.asarray(im).astype(np.int64)


def mask_problem(image: Path, mask: Path, num_labels: int) -> str | None:
    """Why the pair (``image``, ``mask``) cannot be used (None when it can)."""
    why = image_problem(image)
    if why is not None:
        return f"image {image}: {why}"
    if not mask.is_file():
        return f"image {image} has no mask {mask}"
    try:
        with Image.open(image) as im, Image.open(mask) as m:
            return pair_problem(im, m, num_labels, f"mask {mask}", image.name)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a broken file
        return f"mask {mask} cannot be read ({type(e).__name__}: {e})"


def pair_problem(image: Image.Image, mask: Image.Image, num_labels: int, what: str, image_name: str) -> str | None:
    """Why an opened mask cannot label its image (None when it can): single-channel, the image's size, every value a
    class below ``num_labels`` or 255. ``what`` names the mask, ``image_name`` the image, in the message."""
    if mask.mode not in MASK_MODES:
        bands = len(mask.getbands())
        return (
            f"{what} is not single-channel (mode {mask.mode}, {bands} band{'s' * (bands != 1)}): save one "
            "class index per pixel (mode L or P)"
        )
    if mask.size != image.size:
        return f"{what} is {mask.size[0]}x{mask.size[1]} but its image {image_name} is {image.size[0]}x{image.size[1]}"
    values = _mask_values(mask)
    bad = values[((values < 0) | (values >= num_labels)) & (values != IGNORE_INDEX)]
    if len(bad):
        return (
            f"{what} holds label {int(bad.max())}, above the model's {num_labels} classes (0..{num_labels - 1}; "
            f"{IGNORE_INDEX} marks ignored pixels)"
        )
    return None


def segment_item(
    image: Image.Image, mask: Image.Image, size: int, mean: Sequence[float], std: Sequence[float], where: str
) -> dict[str, torch.Tensor]:
    """{pixel_values, labels} of an image and its mask, both fitted to ``size`` (image bicubic, mask nearest)."""
    rgb = _array(_fit(_as_rgb(image, where), size, Image.BICUBIC))
    pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    pixels = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    labels = _mask_values(_fit(mask, size, Image.NEAREST))
    return {"pixel_values": pixels.float(), "labels": torch.from_numpy(labels)}


def checked(problems: Sequence[str | None], total: int, source: str, what: str = "image / mask pairs") -> None:
    """One error naming the first bad pairs of ``source`` and why, when any of ``problems`` is not None."""
    bad = [w for w in problems if w is not None]
    if bad:
        more = f"; and {len(bad) - SHOWN_BAD_FILES} more" if len(bad) > SHOWN_BAD_FILES else ""
        raise ValueError(
            f"{len(bad)} of {total} {what} of {source} cannot be used: " + "; ".join(bad[:SHOWN_BAD_FILES]) + more
        )


class SegmentationFolder(Dataset):
    """root/images/<name>.<image suffix> with root/masks/<name>.png: items {pixel_values, labels [S, S] (long)}.
    Hidden files are skipped; every pair is checked when built (`mask_problem`)."""

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        num_labels: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ):
        self.root = Path(root)
        self.image_size, self.num_labels = integer("image_size", image_size, 1), integer("num_labels", num_labels, 1)
        self.mean, self.std = tuple(mean), tuple(std)
        images, masks = self.root / "images", self.root / "masks"
        for d in (images, masks):
            if not d.is_dir():
                raise FileNotFoundError(
                    f"segmentation folder {self.root} has no {d.name}/ folder: give root/images/<name>.png|jpg and "
                    "root/masks/<name>.png (one class index per pixel)"
                )
        files = sorted(
            f for f in images.iterdir() if f.is_file() and _visible(f) and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise ValueError(f"no images found in {images} (suffixes {sorted(IMAGE_SUFFIXES)})")
        self.items = [(f, masks / f"{f.stem}.png") for f in files]
        workers = min(16, 2 * (os.cpu_count() or 1)) if len(self.items) > 32 else 1
        with ThreadPoolExecutor(workers) as pool:
            why = list(pool.map(lambda p: mask_problem(p[0], p[1], self.num_labels), self.items))
        checked(why, len(self.items), str(self.root))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, mask = self.items[i]
        with Image.open(image) as im, Image.open(mask) as m:
            return segment_item(im, m, self.image_size, self.mean, self.std, str(image))
