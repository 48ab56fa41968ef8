"""Fuzzed data inputs (issue 7): images of every storage kind, bad manifests, unreadable files, hidden folders,
and every form of train_data / eval_data. Each case asserts the clear error type and that its message names
the file / row / field / option, or asserts the correct result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from vltrim.data import ImageCaptionManifest, ImageFolder, SyntheticCaptions, as_dataset, load_image, read_manifest
from vltrim.data.synthetic import tokenizer
from vltrim.tasks import contrastive_loss, evaluate_classification, evaluate_retrieval, zero_shot_accuracy
from vltrim.tasks.sentence import SentenceDistillData, evaluate_embeddings
from vltrim.train import train
from vltrim.zoo import tiny_model

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # load_image without normalisation: intensities in [0, 1]
GRADIENT = np.tile(np.arange(256, dtype=np.uint8), (16, 1))


def _png(folder: Path, name: str, value: int = 100) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(folder / name)
    return folder / name


def _noise(path: Path) -> Path:
    """A 64x64 noise image (so a cut loses pixel data, not just the trailer)."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


# ---------------------------------------------------------------- images of every storage kind


@pytest.mark.parametrize("kind", ["uint16 png", "int32 tiff", "float [0,1] tiff", "float 0..255 tiff"])
def test_deep_images_load_like_their_8bit_version(tmp_path, kind):
    """16-bit, 32-bit integer and float greyscale images are neither saturated nor black: within 1/255 of 8-bit."""
    Image.fromarray(GRADIENT).save(tmp_path / "g8.png")
    arr = {
        "uint16 png": GRADIENT.astype(np.uint16) * 257,
        "int32 tiff": GRADIENT.astype(np.int32) * 257,
        "float [0,1] tiff": GRADIENT.astype(np.float32) / 255,
        "float 0..255 tiff": GRADIENT.astype(np.float32),
    }[kind]
    path = tmp_path / ("deep.png" if "png" in kind else "deep.tif")
    Image.fromarray(arr).save(path)
    ref, got = load_image(tmp_path / "g8.png", 32, **RAW), load_image(path, 32, **RAW)
    assert (got - ref).abs().max().item() <= 1 / 255 + 1e-6
    assert 0.45 < got.mean().item() < 0.55


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[:4, :, 3] = 200, 255  # top half opaque red-ish, bottom half fully transparent (black underneath)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba).convert("LA").save(tmp_path / "la.png")
    for name in ("rgba.png", "la.png"):
        x = load_image(tmp_path / name, 8, **RAW)
        assert torch.allclose(x[:, 6:, :], torch.ones_like(x[:, 6:, :]))  # transparent -> white, not black
        assert x[:, :2, :].max() < 0.9
    pal = Image.fromarray(np.full((8, 8), 7, np.uint8)).convert("P")
    pal.save(tmp_path / "p.png", transparency=int(np.asarray(pal)[0, 0]))
    assert torch.allclose(load_image(tmp_path / "p.png", 8, **RAW), torch.ones(3, 8, 8))


@pytest.mark.parametrize("mode,suffix", [("L", "png"), ("P", "png"), ("CMYK", "jpg"), ("YCbCr", "tif"), ("1", "png")])
def test_8bit_modes_convert_to_their_colour(tmp_path, mode, suffix):
    value = 255 if mode == "1" else 128
    im = Image.fromarray(np.full((8, 8, 3), value, np.uint8))
    (im.convert(mode, palette=Image.ADAPTIVE) if mode == "P" else im.convert(mode)).save(tmp_path / f"x.{suffix}")
    x = load_image(tmp_path / f"x.{suffix}", 8, **RAW)
    assert (x - value / 255).abs().max().item() <= 2 / 255


@pytest.mark.parametrize("case", ["lab", "negative float", "nan float", "huge float", "huge int32"])
def test_unreadable_values_and_modes_are_refused_naming_the_file(tmp_path, case):
    path = tmp_path / f"{case.replace(' ', '_')}.tif"
    if case == "lab":
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).convert("LAB").save(path)
    else:
        value = {"negative float": -1.0, "nan float": np.nan, "huge float": 1e4, "huge int32": 70000}[case]
        Image.fromarray(np.full((8, 8), value, np.int32 if "int" in case else np.float32)).save(path)
    with pytest.raises(ValueError, match=path.name):
        load_image(path, 8)
    with pytest.raises(ValueError, match=rf"1 of 1 images of .*{re.escape(tmp_path.name)}.*{path.name}"):
        ImageFolder(_class_dir(tmp_path, path), 8)


def _class_dir(tmp_path: Path, image: Path) -> Path:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    image.rename(root / "a" / image.name)
    return root


def test_a_broken_file_is_a_clear_error_not_a_pil_traceback(tmp_path):
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(ValueError, match="junk.png") as e:
        load_image(tmp_path / "junk.png", 8)
    assert type(e.value) is ValueError and e.value.__suppress_context__
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_image(tmp_path / "gone.png", 8)


# ---------------------------------------------------------------- manifests


def _manifest(tmp_path: Path, rows: list, name: str = "m.jsonl") -> Path:
    _png(tmp_path / "img", "0.png")
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    return path


GOOD = {"image": "img/0.png", "caption": "a red circle"}


@pytest.mark.parametrize("caption", [None, "", "   ", ["a", "b"], {"text": "a"}, 3, True], ids=repr)
def test_bad_captions_name_the_file_and_row(tmp_path, caption):
    path = _manifest(tmp_path, [GOOD, {"image": "img/0.png", "caption": caption}])
    with pytest.raises(ValueError, match=r"m\.jsonl row 2 \(line 2\).*caption"):
        read_manifest(path)


def test_missing_caption_or_image_key_and_non_object_rows(tmp_path):
    for bad, field in [
        ({"image": "img/0.png"}, "caption"),
        ({"caption": "x"}, "image"),
        ({"image": None, "caption": "x"}, "image"),
        ([1, 2], "JSON object"),
        ('"just text"', "JSON object"),
    ]:
        path = _manifest(tmp_path, [GOOD, GOOD, bad])
        with pytest.raises(ValueError, match=rf"m\.jsonl row 3.*{field}"):
            read_manifest(path)


def test_csv_empty_and_missing_cells_name_the_row(tmp_path):
    _png(tmp_path / "img", "0.png")
    for body in ("img/0.png,a cat\nimg/0.png,\n", "img/0.png,a cat\nimg/0.png\n"):
        (tmp_path / "m.csv").write_text("image,caption\n" + body)
        with pytest.raises(ValueError, match=r"m\.csv row 2 \(line 3\).*caption"):
            read_manifest(tmp_path / "m.csv")
    (tmp_path / "bom.csv").write_bytes("\ufeffimage,caption\nimg/0.png,café\n".encode("utf-8"))  # Excel's UTF-8 BOM
    assert read_manifest(tmp_path / "bom.csv") == [(tmp_path / "img/0.png", "café")]


def test_non_utf8_and_broken_json_manifests_name_the_file(tmp_path):
    _png(tmp_path / "img", "0.png")
    (tmp_path / "latin.csv").write_bytes("image,caption\nimg/0.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv is not UTF-8 text \(line 2"):
        read_manifest(tmp_path / "latin.csv")
    for text in ("[" * 100_000 + "]" * 100_000, '{"image": "img/0.png", "caption": NaN', "{'image': 1}"):
        (tmp_path / "bad.jsonl").write_text(json.dumps(GOOD) + "\n" + text)
        with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
            read_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(FileNotFoundError, match="dir.jsonl"):
        read_manifest(tmp_path / "dir.jsonl")


def test_unreadable_images_fail_when_the_manifest_is_built_naming_them(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    _truncate(_noise(img / "cut.png"))
    _truncate(_noise(img / "cut.jpg"))
    (img / "text.png").write_text("hello")
    names = ["cut.png", "cut.jpg", "text.png"]
    _png(img, "ok.png")
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps({"image": f"img/{n}", "caption": n}) for n in [*names, "ok.png"]))
    with pytest.raises(ValueError, match=r"3 of 4 images of .*m\.jsonl cannot be read") as e:
        ImageCaptionManifest(path, tokenizer(8), 16)
    assert all(n in str(e.value) for n in names) and "ok.png" not in str(e.value)
    lazy = ImageCaptionManifest(path, tokenizer(8), 16, check_images=False)  # skipped: the load still names the file
    with pytest.raises(ValueError, match="cut.jpg"):
        lazy[1]


def test_sound_images_of_every_format_pass_the_check(tmp_path):
    (tmp_path / "a").mkdir()
    _noise(tmp_path / "a" / "n.jpg")
    for suffix in ("png", "webp", "gif", "bmp", "tif"):
        _png(tmp_path / "a", f"x.{suffix}")
    with (tmp_path / "a" / "n.jpg").open("ab") as f:
        f.write(b"\x00" * 16)  # padding after JPEG's end marker is harmless
    assert len(ImageFolder(tmp_path, 8)) == 6


def test_image_folder_ignores_hidden_folders_and_files(tmp_path):
    _png(tmp_path / "cats", "1.png")
    _png(tmp_path / "dogs", "1.png")
    _png(tmp_path / ".ipynb_checkpoints", "1.png")
    (tmp_path / "cats" / "._1.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    _png(tmp_path / "cats", ".hidden.png")
    (tmp_path / "dogs" / "folder.png").mkdir()
    d = ImageFolder(tmp_path, 8)
    assert d.classes == ["cats", "dogs"] and [f.name for f, _ in d.items] == ["1.png", "1.png"]


# ---------------------------------------------------------------- train_data / eval_data forms


class Items(Dataset):
    """A map-style dataset of the given items."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class Stream(IterableDataset):
    def __iter__(self):
        yield {"input_ids": torch.zeros(3, dtype=torch.long)}


def _texts(n: int = 6, length: int = 4) -> list[dict[str, torch.Tensor]]:
    return [
        {"input_ids": torch.arange(length) + i, "attention_mask": torch.ones(length, dtype=torch.long)}
        for i in range(n)
    ]


def test_own_datasets_and_lists_pass_through_unchanged():
    data = SyntheticCaptions("test", 8)
    assert as_dataset(data, "train_data") == (data, None)
    items = _texts()
    assert as_dataset(items, "eval_data") == (items, None)
    teacher = tiny_model("BertModel")
    sent = SentenceDistillData(
        ["a red circle", "a big blue square in the top left"], tokenizer(16), teacher, max_length=16
    )
    assert as_dataset(sent, "train_data")[0] is sent
    assert as_dataset(DataLoader(sent, batch_size=4), "train_data") == (sent, 4)  # its own collate pads texts


def padding_collate(items: list) -> dict[str, torch.Tensor]:
    """A user's collate_fn: pads ragged token lists and adds a mask."""
    longest = max(len(it["ids"]) for it in items)
    ids = torch.zeros(len(items), longest, dtype=torch.long)
    for row, it in enumerate(items):
        ids[row, : len(it["ids"])] = torch.tensor(it["ids"])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_dataloader_gives_its_dataset_batch_size_and_collate():
    raw = [{"ids": list(range(1, 2 + i % 4))} for i in range(10)]  # ragged lists: only the collate_fn can batch them
    loader = DataLoader(raw, batch_size=4, collate_fn=padding_collate)
    data, hint = as_dataset(loader, "train_data")
    assert hint == 4 and len(data) == 10 and data.collate is padding_collate
    for i, batch in enumerate(loader):
        ours = data.collate([data[j] for j in range(4 * i, min(10, 4 * i + 4))])
        assert ours.keys() == batch.keys() and all(torch.equal(ours[k], batch[k]) for k in batch)
    assert as_dataset(data, "train_data")[0] is data  # accepted again as it is
    plain = SyntheticCaptions("test", 8)
    assert as_dataset(DataLoader(plain, batch_size=3, shuffle=True), "eval_data") == (plain, 3)


def test_hugging_face_datasets_become_tensors():
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict(
        {
            "input_ids": [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
            "attention_mask": [[1, 1, 1]] * 3,
            "text": ["a", "b", "c"],
            "label": [0, 1, 0],
        }
    )
    data, hint = as_dataset(hf, "train_data")
    item = data[np.int64(1)]
    assert hint is None and len(data) == 3 and set(item) == {"input_ids", "attention_mask", "label"}  # raw text dropped
    assert torch.equal(item["input_ids"], torch.tensor([4, 5, 6])) and item["label"].dtype == torch.long
    assert as_dataset(DataLoader(hf, batch_size=2), "train_data")[1] == 2
    with pytest.raises(
        TypeError, match=r"train_data is a Hugging Face DatasetDict with splits \['test', 'train'\].*data\['train'\]"
    ):
        as_dataset(datasets.DatasetDict({"train": hf, "test": hf}), "train_data")
    with pytest.raises(TypeError, match="train_data is an IterableDataset, which cannot be indexed"):
        as_dataset(hf.to_iterable_dataset(), "train_data")
    with pytest.raises(ValueError, match="eval_data is empty"):
        as_dataset(hf.select([]), "eval_data")
    with pytest.raises(TypeError, match=r"eval_data: no column .* becomes a tensor \(columns \['text'\]\)"):
        as_dataset(datasets.Dataset.from_dict({"text": ["a"]}), "eval_data")


BAD_INPUTS = {
    "None": (None, "is None"),
    "path string": ("pairs.jsonl", "is a str .*pairs.jsonl.*load it first"),
    "Path": (Path("pairs.csv"), "is a PosixPath|is a WindowsPath"),
    "number": (42, "is an int, which cannot be indexed"),
    "dict": ({"input_ids": torch.zeros(2, 3)}, r"is a dict \(keys \['input_ids'\]\), not a dataset"),
    "IterableDataset": (Stream(), "is a Stream, which cannot be indexed"),
    "DataLoader over IterableDataset": (DataLoader(Stream(), batch_size=2), "DataLoader over a Stream"),
    "DataLoader without batch_size": (DataLoader(_texts(), batch_size=None), "batch_size=None"),
    "TensorDataset": (TensorDataset(torch.zeros(4, 3)), "item 0 is a tuple.*TensorDataset"),
    "list of strings": (["a photo", "a cat"], "item 0 is a str; items must be dicts"),
    "tensor": (torch.zeros(4, 3), "item 0 is a Tensor"),
    "ragged items": (
        _texts(2) + [{"input_ids": torch.arange(7), "attention_mask": torch.ones(7, dtype=torch.long)}],
        r"field 'input_ids' has shape \(4,\) in item 0 but \(7,\) in item 2",
    ),
    "items missing a field": (
        Items([{"a": torch.zeros(1), "b": torch.zeros(1)}, {"a": torch.zeros(1)}]),
        "item 1 lacks field 'b'",
    ),
    "raw text field": (Items([{"text": "a", "label": 0}] * 2), "field 'text' of a batch is a list, not a tensor"),
    "list field": (Items([{"input_ids": [1, 2]}] * 2), "field 'input_ids' of a batch is a list"),
    "keyed, not positional": (Items({"x": 1}), r"Items\[0\] failed \(KeyError"),
    "collate_fn that fails": (
        DataLoader(_texts(), batch_size=2, collate_fn=lambda items: 1 / 0),
        r"items \[0, 5\] cannot be batched.*ZeroDivisionError",
    ),
    "collate_fn returning tuples": (
        DataLoader(_texts(), batch_size=2, collate_fn=lambda items: (1, 2)),
        "a batch is a tuple, not a dict",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_wrong_data_is_a_type_error_naming_the_option(case):
    obj, message = BAD_INPUTS[case]
    with pytest.raises(TypeError, match=message) as e:
        as_dataset(obj, "train_data")
    assert str(e.value).startswith("train_data")


@pytest.mark.parametrize(
    "empty", [[], Items([]), DataLoader(Items([]), batch_size=2)], ids=["list", "Dataset", "DataLoader"]
)
def test_empty_data_is_a_value_error_naming_the_option(empty):
    with pytest.raises(ValueError, match=r"eval_data is empty \(0 items\)"):
        as_dataset(empty, "eval_data")


# ---------------------------------------------------------------- evaluation: label-less pairs, collate, modes


class Unlabelled(Dataset):
    """Image-caption pairs without a 'label' field: pair i's caption is caption i, nothing else."""

    def __init__(self, data: SyntheticCaptions, keep_label: bool = False):
        self.data, self.keep_label = data, keep_label

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = dict(self.data[i])
        item["label"] = torch.tensor(i)
        return item if self.keep_label else {k: v for k, v in item.items() if k != "label"}


def test_retrieval_without_labels_trains_and_evaluates_pairwise():
    model = tiny_model("CLIPModel")
    base = SyntheticCaptions("test", 24)
    data, _ = as_dataset(Unlabelled(base), "train_data")
    losses = train(model, data, contrastive_loss, steps=2, lr=1e-3, batch_size=8, progress=False)
    assert len(losses) == 2 and all(np.isfinite(losses))
    model.train()
    got = evaluate_retrieval(model, data, batch_size=7)  # batches that do not divide 24: positions run on
    assert model.training  # the caller's mode is kept
    # the same batches with explicit labels 0..23 (the same batch size, so the embeddings are bit-identical and a
    # near-tie in the ranking cannot flip between two float summation orders)
    assert got == pytest.approx(evaluate_retrieval(model, Unlabelled(base, keep_label=True), batch_size=7))


def _strip_label(items: list) -> dict[str, torch.Tensor]:
    batch = torch.utils.data.default_collate(items)
    batch.pop("extra")
    return batch


def test_evaluators_batch_with_the_datasets_collate():
    """A DataLoader's collate_fn is used by evaluation too (here it drops a field the model cannot take)."""
    base = SyntheticCaptions("test", 12)
    items = [{**base[i], "extra": torch.zeros(2)} for i in range(12)]
    data, _ = as_dataset(DataLoader(items, batch_size=4, collate_fn=_strip_label), "eval_data")
    model = tiny_model("CLIPModel")
    assert evaluate_retrieval(model, data) == evaluate_retrieval(model, base)
    prompts = tokenizer(16)(["a photo of a circle", "a photo of a square"])
    labelled = DataLoader([{**it, "label": it["label"] % 2} for it in items], batch_size=4, collate_fn=_strip_label)
    assert 0 <= zero_shot_accuracy(model, as_dataset(labelled, "eval_data")[0], prompts) <= 1
    with pytest.raises(ValueError, match="zero-shot accuracy needs a class 'label'"):
        zero_shot_accuracy(model, Unlabelled(base), prompts)


def test_classification_and_sentence_evaluation_use_collate_and_name_a_missing_label():
    model = tiny_model("ViTForImageClassification")
    images = [
        {"pixel_values": torch.randn(3, 32, 32), "label": torch.tensor(i % 3), "extra": torch.zeros(1)}
        for i in range(6)
    ]
    data, _ = as_dataset(DataLoader(images, batch_size=2, collate_fn=_strip_label), "eval_data")
    model.train()
    assert 0 <= evaluate_classification(model, data)["top1"] <= 1 and model.training
    with pytest.raises(ValueError, match="classification needs a class 'label'"):
        evaluate_classification(model, [{"pixel_values": torch.randn(3, 32, 32)}])
    teacher = tiny_model("BertModel")
    sent = SentenceDistillData(
        ["a red circle", "a big blue square in the top left"], tokenizer(16), teacher, max_length=16
    )
    assert evaluate_embeddings(teacher, as_dataset(DataLoader(sent, batch_size=2), "eval_data")[0])[
        "cosine_to_teacher"
    ] == pytest.approx(1.0, abs=1e-5)
