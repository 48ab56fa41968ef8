"""A resumed or cached run is the same run: the data is compared by content (every item), so one changed item in the
middle of the train, eval or calibration data is named on resume and recomputed (or refused) by a study; a
hand-edited study cell is not reused; a DataLoader's dataset is fingerprinted like any other."""

from __future__ import annotations

import json

import pytest
from torch.utils.data import DataLoader, Dataset

import vltrim
from vltrim.data import SyntheticCaptions
from vltrim.data.fingerprint import data_change, fingerprint
from vltrim.run.study import StudyError
from vltrim.train.loop import CheckpointError
from vltrim.train.run_record import RUN_FILE, ResumeMismatchError
from vltrim.zoo import tiny_model

TRAIN, EVAL = SyntheticCaptions("train", 32), SyntheticCaptions("val", 24)


class Edited(Dataset):
    """``data`` with item ``i`` changed (one caption token, or a few pixels): same size, same fields and shapes;
    keeps the attributes vltrim batches and evaluates with."""

    def __init__(self, data: Dataset, i: int | None = None, field: str = "input_ids"):
        # default: just past the middle item (an older study hashed the first, middle and last items only)
        self.data, self.i, self.field = data, len(data) // 2 + 1 if i is None else i, field
        for name in ("collate", "class_texts", "captions_by_label"):
            if hasattr(data, name):
                setattr(self, name, getattr(data, name))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, j: int):
        item = dict(self.data[j])
        if j == self.i:
            v = item[self.field].clone()
            if self.field == "input_ids":
                v[1] = v[1] % 20 + 3 if v[1] != v[1] % 20 + 3 else v[1] + 1  # another word, still in the vocabulary
            else:
                v[..., :4, :4] += 1.0
            item[self.field] = v
        return item


def test_fingerprint_sees_every_item_and_is_stable():
    assert fingerprint(TRAIN) == fingerprint(SyntheticCaptions("train", 32))
    for i in (1, 16, 30):  # not the first, middle or last item only
        assert fingerprint(Edited(TRAIN, i)) != fingerprint(TRAIN)
    assert fingerprint(Edited(TRAIN, 16, "pixel_values")) != fingerprint(TRAIN)
    rows = [{"text": "a cat", "n": 1}, {"text": "a dog", "n": 2}]
    assert fingerprint(rows) != fingerprint([rows[0], {"text": "a dug", "n": 2}])
    change = data_change("train_data", fingerprint(TRAIN), fingerprint(Edited(TRAIN)))
    assert "train data" in change and "same size" in change


# ---- compress resume -----------------------------------------------------------------------------------------
RUN = dict(
    method="l1",
    target=0.3,
    retrain_steps=4,
    batch_size=8,
    checkpoint_every=2,
    latency_batch=0,
    progress=False,
    evaluate_before=False,
)


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        (dict(train_data=Edited(TRAIN)), "train data"),
        (dict(eval_data=Edited(EVAL)), "eval data"),
        (dict(calib_data=Edited(TRAIN)), "calibration data"),
        (dict(train_data=DataLoader(Edited(TRAIN), batch_size=8)), "train data"),
    ],
)
def test_compress_resume_with_one_item_changed_in_the_middle_is_refused_naming_the_data(tmp_path, changed, named):
    given = dict(train_data=TRAIN, eval_data=EVAL, calib_data=TRAIN)
    if isinstance(changed.get("train_data"), DataLoader):  # the first run took a DataLoader too
        given["train_data"] = DataLoader(TRAIN, batch_size=8)
    vltrim.compress(tiny_model("CLIPModel"), **RUN, **given, work_dir=tmp_path)
    with pytest.raises(ResumeMismatchError) as e:
        vltrim.compress(tiny_model("CLIPModel"), **RUN, **{**given, **changed}, work_dir=tmp_path, resume=True)
    assert named in str(e.value) and "same size" in str(e.value) and "override" in str(e.value)
    others = {"train data", "eval data", "calibration data"} - {named}
    assert not any(o in str(e.value) for o in others)
    # the same data resumes; override=True resumes with the change knowingly and records it
    vltrim.compress(tiny_model("CLIPModel"), **RUN, **given, work_dir=tmp_path, resume=True)
    vltrim.compress(
        tiny_model("CLIPModel"), **RUN, **{**given, **changed}, work_dir=tmp_path, resume=True, override=True
    )
    record = json.loads((tmp_path / RUN_FILE).read_text())
    assert any(named in d for d in record["overridden"])


def test_resume_of_a_work_dir_without_data_fingerprints_says_it_cannot_check_the_data(tmp_path):
    vltrim.compress(tiny_model("CLIPModel"), **RUN, train_data=TRAIN, work_dir=tmp_path)
    record = json.loads((tmp_path / RUN_FILE).read_text())
    del record["data"]  # as an older vltrim wrote it (sizes only)
    record["settings"]["train_data_size"], record["settings"]["calib_data_size"] = 32, 0
    (tmp_path / RUN_FILE).write_text(json.dumps(record))
    with pytest.raises(ResumeMismatchError) as e:
        vltrim.compress(tiny_model("CLIPModel"), **RUN, train_data=TRAIN, work_dir=tmp_path, resume=True)
    assert "no fingerprint of the data" in str(e.value) and "older vltrim" in str(e.value)
    assert "train_data_size" not in str(e.value)
    vltrim.compress(tiny_model("CLIPModel"), **RUN, train_data=TRAIN, work_dir=tmp_path, resume=True, override=True)


class Kill(Exception):
    pass


class KilledOnceThere(Dataset):
    """``data`` that raises Kill on the first read after ``path`` exists (a run killed right after a checkpoint)."""

    def __init__(self, data: Dataset, path):
        self.data, self.path = data, path

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        if self.path.exists():
            raise Kill()
        return self.data[i]


def test_lowrank_chain_resumed_with_other_data_names_the_data(tmp_path):
    chain = dict(RUN, method=["l1", ("lowrank", {"target": 0.2})], calib_data=None)
    chain.pop("target")
    killed = KilledOnceThere(TRAIN, tmp_path / "stage-2-lowrank" / "retrain" / "checkpoint-2")
    with pytest.raises(Kill):  # killed in the lowrank stage's retraining, after its checkpoint at step 2
        vltrim.compress(tiny_model("CLIPModel"), **chain, train_data=killed, work_dir=tmp_path)
    other = SyntheticCaptions("train", 32, seed=3)  # same size, other items: lowrank's data-aware SVD keeps other ranks
    with pytest.raises(ResumeMismatchError) as e:
        vltrim.compress(tiny_model("CLIPModel"), **chain, train_data=other, work_dir=tmp_path, resume=True)
    assert "train data" in str(e.value) and "damaged" not in str(e.value)
    with pytest.raises(CheckpointError) as e:  # resumed knowingly: the checkpoint's shapes are another plan's
        vltrim.compress(
            tiny_model("CLIPModel"), **chain, train_data=other, work_dir=tmp_path, resume=True, override=True
        )
    assert "train data" in str(e.value) and "override" in str(e.value)


# ---- study ---------------------------------------------------------------------------------------------------
STUDY = dict(
    task="retrieval", methods=["l1"], ratios=[0.25], retrain_steps=2, batch_size=8, latency_batches=(), progress=False
)


def _metric(res) -> float:
    return next(r for r in res.rows if r["cell"] == "l1-0.25")["metric"]


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        (dict(train_data=Edited(TRAIN)), "train data"),
        (dict(eval_data=Edited(EVAL, field="pixel_values")), "eval data"),
        (dict(train_data=DataLoader(Edited(TRAIN), batch_size=8)), "train data"),
    ],
)
def test_study_rerun_with_one_item_changed_in_the_middle_is_refused_then_recomputed(tmp_path, changed, named):
    vltrim.study(tiny_model("CLIPModel"), train_data=TRAIN, eval_data=EVAL, **STUDY, out=tmp_path / "s")
    now = {"train_data": TRAIN, "eval_data": EVAL, **changed}
    with pytest.raises(StudyError) as e:
        vltrim.study(tiny_model("CLIPModel"), **now, **STUDY, out=tmp_path / "s")
    assert named in str(e.value) and "same size" in str(e.value)
    again = vltrim.study(tiny_model("CLIPModel"), **now, **STUDY, out=tmp_path / "s", override=True)
    fresh = vltrim.study(tiny_model("CLIPModel"), **now, **STUDY, out=tmp_path / "fresh")
    row = next(r for r in again.rows if r["cell"] == "l1-0.25")
    assert not row["cached"] and _metric(again) == _metric(fresh)
    assert again.rows[0]["metric"] == fresh.rows[0]["metric"]  # the original's row too


def test_study_does_not_reuse_a_hand_edited_cell(tmp_path):
    first = vltrim.study(tiny_model("CLIPModel"), train_data=TRAIN, eval_data=EVAL, **STUDY, out=tmp_path)
    cell = tmp_path / "cells" / "l1-0.25.json"
    rec = json.loads(cell.read_text())
    rec["metrics"] = {k: 0.999 for k in rec["metrics"]}  # a better number, typed in by hand
    cell.write_text(json.dumps(rec, indent=1))
    with pytest.warns(UserWarning, match="checksum"):
        again = vltrim.study(tiny_model("CLIPModel"), train_data=TRAIN, eval_data=EVAL, **STUDY, out=tmp_path)
    row = next(r for r in again.rows if r["cell"] == "l1-0.25")
    assert not row["cached"] and _metric(again) == _metric(first) != 0.999
    cached = vltrim.study(tiny_model("CLIPModel"), train_data=TRAIN, eval_data=EVAL, **STUDY, out=tmp_path)
    assert next(r for r in cached.rows if r["cell"] == "l1-0.25")["cached"]  # the recomputed cell is reused again
