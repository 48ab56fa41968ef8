"""Semantic segmentation (DPTForSemanticSegmentation): the task's loss, distillation and mIoU on hand-made tensors,
the built-in scene masks (deterministic, disjoint splits, labels where the objects are drawn), a user's image + mask
folders (every bad pair named before any work), and compress end to end from Python and from the shell. Masks ==
slicing, costs, save / load run over the DPT classes in the generic tests (their zoo entries)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import vltrim
from vltrim.arch import get_adapter
from vltrim.data import SceneSegments
from vltrim.data.scenes import describe
from vltrim.tasks import TASKS, default_task, get_task
from vltrim.tasks.segmentation import (
    confusion,
    evaluate_segmentation,
    miou,
    segmentation_kd,
    segmentation_loss,
)
from vltrim.tasks.sources import DataSource
from vltrim.zoo import tiny_model

NAME = "DPTForSemanticSegmentation"


class Fixed(nn.Module):
    """A 'segmenter' whose logits are given (per item, by the first pixel value as the item's index)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits[pixel_values[:, 0, 0, 0].long()])


def _batch(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    n = len(labels)
    return {
        "pixel_values": torch.arange(n, dtype=torch.float)[:, None, None, None].expand(n, 3, 2, 2),
        "labels": labels,
    }


# ---- the task on hand-made tensors ------------------------------------------------------------------------
def test_loss_is_per_pixel_cross_entropy_of_upsampled_logits_ignoring_255():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[0, :2] = 255
    got = segmentation_loss(Fixed(logits), _batch(labels))
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    keep = labels != 255
    want = -up.log_softmax(1).gather(1, labels.clamp(max=2)[:, None])[:, 0][keep].mean()
    assert torch.allclose(got, want, atol=1e-6)
    none = segmentation_loss(m := Fixed(logits), _batch(torch.full((2, 8, 8), 255)))
    none.backward()
    assert none.item() == 0 and m.logits.grad is not None


def test_labels_outside_the_classes_are_refused():
    m = Fixed(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="label 7 is outside the model's 3 classes"):
        segmentation_loss(m, _batch(torch.full((1, 2, 2), 7)))
    with pytest.raises(ValueError, match=r"one \[H, W\] map of integer class indices"):
        segmentation_loss(m, _batch(torch.zeros(1, 2, 2)))
    with pytest.raises(ValueError, match="needs a 'labels' map"):
        segmentation_loss(m, {"pixel_values": torch.zeros(1, 3, 2, 2), "label": torch.zeros(1)})


def test_kd_is_the_mean_per_pixel_kl_and_zero_against_itself():
    torch.manual_seed(1)
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    batch = _batch(torch.zeros(2, 3, 3, dtype=torch.long))
    got = segmentation_kd(Fixed(s), Fixed(t), batch)
    pt, ls = t.softmax(1), s.log_softmax(1)
    want = (pt * (pt.log() - ls)).sum(1).mean()
    assert torch.allclose(got, want, atol=1e-6)
    assert segmentation_kd(Fixed(s), Fixed(s), batch).abs().item() < 1e-7


def test_miou_of_a_perfect_prediction_is_one():
    y = torch.tensor([[0, 1], [2, 2]])
    assert miou(confusion(y, y, 4)) == {"mIoU": 1.0, "pixel_acc": 1.0}


def test_miou_of_a_known_confusion():
    """Labels 0 0 1 1 (and one ignored), predictions 0 1 1 1: IoU 1/2 and 2/3; class 2 is in neither (left out)."""
    y, p = torch.tensor([0, 0, 1, 1, 255]), torch.tensor([0, 1, 1, 1, 2])
    got = miou(confusion(p, y, 3))
    assert got["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2) and got["pixel_acc"] == pytest.approx(3 / 4)
    # a class predicted but absent from the labels counts (IoU 0)
    assert miou(confusion(torch.tensor([2, 1]), torch.tensor([1, 1]), 3))["mIoU"] == pytest.approx((0 + 1 / 2) / 2)


def test_evaluate_upsamples_and_pools_every_pixel_of_the_set():
    logits = torch.zeros(2, 2, 1, 1)
    logits[0, 1] = 1  # item 0 predicts class 1 everywhere, item 1 class 0
    data = [
        {"pixel_values": torch.full((3, 2, 2), float(i)), "labels": torch.tensor([[1, 1], [0, 255]])} for i in range(2)
    ]
    got = evaluate_segmentation(Fixed(logits), data)
    # item 0 predicts 1: both 1s right, its 0 wrong; item 1 predicts 0: both 1s wrong, its 0 right (255: no pixel)
    assert got["pixel_acc"] == pytest.approx(3 / 6)
    assert got["mIoU"] == pytest.approx((1 / 4 + 2 / 5) / 2)


# ---- task registry and the tiny DPT -----------------------------------------------------------------------
def test_segmenters_default_to_segmentation_and_it_comes_last():
    assert list(TASKS)[-1] == "segmentation"
    assert default_task(tiny_model(NAME)) == "segmentation"
    with pytest.raises(ValueError, match="needs a semantic segmenter"):
        get_task("segmentation").check(tiny_model("ViTForImageClassification"))


def test_the_segmenter_keeps_its_depth_the_bare_model_does_not():
    kinds = {g.kind.value for g in vltrim.inspect(tiny_model(NAME))}
    assert kinds == {"heads", "head_dims", "neurons"}
    assert "layers" in {g.kind.value for g in vltrim.inspect(tiny_model("DPTModel"))}


# ---- built-in data ----------------------------------------------------------------------------------------
def test_builtin_scenes_are_deterministic_with_disjoint_splits():
    a, b = SceneSegments("train", 24, seed=0), SceneSegments("train", 24, seed=0)
    assert all(torch.equal(a[i]["pixel_values"], b[i]["pixel_values"]) for i in range(24))
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, SceneSegments("train", 24, seed=1).labels)
    val = SceneSegments("val", 24, seed=0)
    assert not {describe(s) for s in a.scenes} & {describe(s) for s in val.scenes}
    item = a[0]
    assert item["labels"].shape == (32, 32) and item["labels"].dtype == torch.long
    assert set(a.labels.unique().tolist()) <= set(range(len(SceneSegments.classes)))


def test_builtin_labels_are_where_the_objects_are_drawn():
    """Object pixels stand out from the background tint (noise std 0.04 in [0, 1]); each scene's shapes are labelled."""
    from vltrim.data.synthetic import MEAN, SHAPES, STD

    d = SceneSegments("train", 16, seed=0, image_size=48)
    for i in range(16):
        rgb = d[i]["pixel_values"] * STD + MEAN
        labels = d.labels[i]
        tint = torch.as_tensor(d.looks.tint[i])[:, None]
        away = (rgb.flatten(1) - tint).abs().amax(0).reshape(48, 48)
        assert away[labels > 0].median() > 0.2 and away[labels == 0].median() < 0.1
        assert set(labels.unique().tolist()) - {0} == {1 + SHAPES.index(t.shape) for t in d.scenes[i]}


def test_builtin_data_records_the_classes_in_the_model():
    model = tiny_model(NAME)
    ds = DataSource(model, f"tiny:{NAME}", "segmentation").open("builtin", "--data", "val")
    assert len(ds) == 1000 and ds[0]["pixel_values"].shape == (3, 32, 32)
    assert model.config.id2label[1] == "circle"


# ---- a user's folders ---------------------------------------------------------------------------------------
def _pair(root, stem, size=(40, 30), mask=None, mode="L", mask_size=None):
    rng = np.random.default_rng(len(stem))
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
    if mask is False:
        return
    w, h = mask_size or size
    values = rng.integers(0, 5, (h, w)).astype(np.uint8) if mask is None else np.full((h, w), mask, np.uint8)
    m = Image.fromarray(values)
    (m.convert("RGB") if mode == "RGB" else m).save(root / "masks" / f"{stem}.png")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "seg"
    for i in range(3):
        _pair(root, f"im{i}")
    _pair(root, "ignored", mask=255)
    return root


def _open(root):
    return DataSource(tiny_model(NAME), f"tiny:{NAME}", "segmentation").open(str(root), "--data", "train")


def test_folder_gives_model_sized_images_and_label_maps(folder):
    ds = _open(folder)
    assert len(ds) == 4
    names = [image.stem for image, _ in ds.items]
    assert names == ["ignored", "im0", "im1", "im2"]
    item = ds[1]
    assert item["pixel_values"].shape == (3, 32, 32) and item["labels"].shape == (32, 32)
    assert set(item["labels"].unique().tolist()) == set(range(5)) and ds[0]["labels"].unique().tolist() == [255]


@pytest.mark.parametrize(
    "kw, why",
    [
        (dict(mask=False), "has no mask"),
        (dict(mask_size=(20, 30)), "is 20x30 but its image bad.png is 40x30"),
        (dict(mode="RGB"), "is not single-channel (mode RGB"),
        (dict(mask=7), "holds label 7, above the model's 5 classes"),
    ],
    ids=["missing", "size", "rgb", "label"],
)
def test_bad_pairs_are_named_before_any_work(folder, kw, why):
    _pair(folder, "bad", **kw)
    with pytest.raises(ValueError, match="1 of 5 image / mask pairs") as e:
        _open(folder)
    assert "--data" in str(e.value) and "bad.png" in str(e.value) and why in str(e.value)


def test_every_bad_pair_is_named_at_once(folder):
    _pair(folder, "a", mask=False)
    _pair(folder, "b", mask=9)
    with pytest.raises(ValueError, match="2 of 6") as e:
        _open(folder)
    assert "a.png" in str(e.value) and "b.png" in str(e.value)


def test_a_folder_without_masks_says_what_it_takes(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="has no masks/ folder"):
        _open(tmp_path)


def _hf(folder, out):
    datasets = pytest.importorskip("datasets")
    stems = sorted(f.stem for f in (folder / "images").iterdir())
    ds = (
        datasets.Dataset.from_dict(
            {
                "image": [str(folder / "images" / f"{n}.png") for n in stems],
                "annotation": [str(folder / "masks" / f"{n}.png") for n in stems],
            }
        )
        .cast_column("image", datasets.Image())
        .cast_column("annotation", datasets.Image())
    )
    ds.save_to_disk(str(out))
    return f"hf:{out}"


def test_hf_dir_with_image_and_annotation_columns_equals_the_folder(tmp_path, folder):
    """ADE20K's layout on the hub (scene_parse_150): an image column and an annotation image of class indices."""
    spec = _hf(folder, tmp_path / "hf")
    got, want = (
        DataSource(tiny_model(NAME), f"tiny:{NAME}", "segmentation").open(spec, "--data", "train"),
        _open(folder),
    )
    assert len(got) == len(want) == 4
    for i in range(4):
        for k in ("pixel_values", "labels"):
            assert torch.equal(got[i][k], want[i][k]), (i, k)


def test_hf_dir_bad_rows_are_named_before_any_work(tmp_path, folder):
    _pair(folder, "zbad", mask=9)
    spec = _hf(folder, tmp_path / "hf")
    with pytest.raises(ValueError, match=r"1 of 5 image / mask rows .*row 4's 'annotation' holds label 9"):
        DataSource(tiny_model(NAME), f"tiny:{NAME}", "segmentation").open(spec, "--data", "train")


# ---- end to end ---------------------------------------------------------------------------------------------
def test_compress_a_segmenter_by_half_its_prunable_macs():
    model = tiny_model(NAME)
    res = vltrim.compress(model, method="upop", target=0.5, metric="macs", task="segmentation",
                          train_data=SceneSegments("train", 128), eval_data=SceneSegments("val", 32),
                          search_steps=4, retrain_steps=2, batch_size=16, latency_batch=0, progress=False)  # fmt: skip
    r = res.report
    assert r["task"] == "segmentation" and {"mIoU", "pixel_acc"} <= set(r["after"]) and r["after"]["mIoU"] > 0
    assert 0.45 <= r["plan"]["macs_removed"] <= 0.6  # of the prunable MACs: the blocks' (the neck is kept whole)
    inputs = get_adapter(model).reference_inputs(model, 1)
    assert vltrim.count_macs(res.model, inputs) == r["plan"]["model_macs_after"] < r["plan"]["model_macs_before"]


def test_compress_from_the_shell(tmp_path, folder):
    from typer.testing import CliRunner

    from vltrim.cli import app

    out = tmp_path / "out"
    args = ["compress", f"tiny:{NAME}", "--task", "segmentation", "--data", "builtin", "--eval-data", str(folder),
            "--method", "l1", "--target", "0.5", "--metric", "macs", "--retrain-steps", "1", "--batch-size", "8",
            "--latency-batch", "0", "--out", str(out)]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "segmentation" and "mIoU" in report["after"]
    small = vltrim.load(out)
    assert vltrim.count_params(small) == report["model"]["params"] < report["source"]["params"]
    assert small.config.id2label[4] == "cross"
