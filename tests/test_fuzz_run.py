"""Runs that must refuse or survive: changed-option resumes, kills while a checkpoint is written, mixed
precision, non-finite training, bad options found before any work, the caller's model left as it was."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import max_diff, run
from torch.utils.data import DataLoader, Dataset

import vltrim
from vltrim.arch.apply import masked
from vltrim.data import SyntheticCaptions
from vltrim.methods import get_method
from vltrim.tasks import contrastive_loss
from vltrim.train import loop
from vltrim.train.loop import TrainingDivergedError, checkpoints, latest_checkpoint, train
from vltrim.train.run_record import ResumeMismatchError
from vltrim.zoo import tiny_model

DATA = SyntheticCaptions("train", 64)
RUN = dict(
    method="upop",
    target=0.4,
    train_data=DATA,
    search_steps=6,
    retrain_steps=2,
    batch_size=16,
    latency_batch=0,
    progress=False,
    checkpoint_every=2,
    method_settings={"interval": 2},
)


class Kill(Exception):
    pass


class KilledOnceThere(Dataset):
    """``data`` that raises Kill on the first read after ``path`` exists: a run killed right after a checkpoint,
    whatever reads the checks before the run make (the data's fingerprint reads every item once)."""

    def __init__(self, data: Dataset, path):
        self.data, self.path = data, path

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        if self.path.exists():
            raise Kill()
        return self.data[i]


def killed_run(work, **changes):
    with pytest.raises(Kill):
        vltrim.compress(
            tiny_model("CLIPModel"),
            **{**RUN, "train_data": KilledOnceThere(DATA, work / "search" / "checkpoint-4"), **changes},
            work_dir=work,
        )
    assert latest_checkpoint(work / "search").name == "checkpoint-4"


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- 1. resume refuses changed options --------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        dict(target=0.3),
        dict(search_steps=4),
        dict(batch_size=8),
        dict(seed=1),
        dict(train_data=SyntheticCaptions("train", 48)),
        dict(model_seed=1),
    ],
)
def test_resume_with_changed_options_is_refused_naming_them(tmp_path, change):
    killed_run(tmp_path)
    change = dict(change)
    model = tiny_model("CLIPModel", seed=change.pop("model_seed", 0))
    with pytest.raises(ResumeMismatchError) as e:
        vltrim.compress(model, **{**RUN, **change}, work_dir=tmp_path, resume=True)
    named = next(iter(change), "model")
    assert named in str(e.value) and "override" in str(e.value)


def test_resume_with_same_options_matches_an_uninterrupted_run_and_override_accepts_changes(tmp_path):
    full = vltrim.compress(tiny_model("CLIPModel"), **RUN, work_dir=tmp_path / "a")
    killed_run(tmp_path / "b")
    resumed = vltrim.compress(tiny_model("CLIPModel"), **RUN, work_dir=tmp_path / "b", resume=True)
    assert resumed.plan.keep == full.plan.keep and same_weights(full.model, resumed.model)
    killed_run(tmp_path / "c")
    over = vltrim.compress(
        tiny_model("CLIPModel"), **{**RUN, "retrain_steps": 3}, work_dir=tmp_path / "c", resume=True, override=True
    )
    assert over.plan.keep == full.plan.keep  # the search was resumed; only the retraining changed


def test_cli_resume_refuses_changed_target_and_override_continues(tmp_path):
    from typer.testing import CliRunner

    from vltrim.cli import app

    args = [
        "compress",
        "tiny:CLIPModel",
        "--method",
        "upop",
        "--data",
        "builtin",
        "--search-steps",
        "4",
        "--batch-size",
        "16",
        "--latency-batch",
        "0",
        "--work-dir",
        str(tmp_path / "w"),
        "--checkpoint-every",
        "2",
    ]
    assert CliRunner().invoke(app, [*args, "--target", "0.3", "--out", str(tmp_path / "a")]).exit_code == 0
    r = CliRunner().invoke(app, [*args, "--target", "0.5", "--out", str(tmp_path / "b"), "--resume"])
    assert r.exit_code == 2 and "target" in r.output and "--override" in r.output and not (tmp_path / "b").exists()
    r = CliRunner().invoke(app, [*args, "--target", "0.5", "--out", str(tmp_path / "b"), "--resume", "--override"])
    assert r.exit_code == 0, r.output


# ---- 6. kills while a checkpoint is written; reruns in the same work dir --------------------------------
def test_kill_while_writing_a_checkpoint_leaves_a_resumable_work_dir(tmp_path, monkeypatch):
    full = vltrim.compress(tiny_model("CLIPModel"), **RUN, work_dir=tmp_path / "a")
    real_save, calls = torch.save, {"n": 0}

    def dying_save(*args, **kwargs):  # the second checkpoint dies half-written (weights on disk, state not)
        calls["n"] += 1
        if calls["n"] == 2:
            raise Kill()
        return real_save(*args, **kwargs)

    monkeypatch.setattr(loop.torch, "save", dying_save)
    with pytest.raises(Kill):
        vltrim.compress(tiny_model("CLIPModel"), **RUN, work_dir=tmp_path / "b")
    monkeypatch.undo()
    search = tmp_path / "b" / "search"
    assert (search / "checkpoint-4.tmp").is_dir() and [p.name for p in checkpoints(search)] == ["checkpoint-2"]
    (search / "checkpoint-9").mkdir()  # an incomplete directory with a checkpoint's name is ignored too
    resumed = vltrim.compress(tiny_model("CLIPModel"), **RUN, work_dir=tmp_path / "b", resume=True)
    assert resumed.plan.keep == full.plan.keep and same_weights(full.model, resumed.model)
    assert not list(search.glob("*.tmp"))


def test_plain_rerun_in_the_same_work_dir_starts_afresh(tmp_path):
    first = vltrim.compress(tiny_model("CLIPModel"), **RUN, work_dir=tmp_path)
    with pytest.warns(UserWarning, match="afresh"):
        again = vltrim.compress(tiny_model("CLIPModel"), **RUN, work_dir=tmp_path)
    assert again.plan.keep == first.plan.keep and same_weights(first.model, again.model)
    steps = [
        int(line.split('"step": ')[1].split(",")[0])
        for line in (tmp_path / "search" / "log.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(steps)  # one run's log, not two appended


# ---- 2. mixed precision returns the plain model -------------------------------------------------------
def test_bf16_compress_returns_the_plain_model_equal_to_its_reload(tmp_path):
    res = vltrim.compress(tiny_model("CLIPModel"), **{**RUN, "checkpoint_every": 0}, mixed_precision="bf16")
    assert "forward" not in vars(res.model) and "_original_forward" not in vars(res.model)
    vltrim.save(res.model, tmp_path / "m")
    inputs = vltrim.get_adapter(res.model).reference_inputs(res.model, 2)
    assert max_diff(run(res.model, inputs), run(vltrim.load(tmp_path / "m"), inputs)) == 0.0


def test_bf16_search_masked_equals_sliced():
    res = get_method("upop").run(
        tiny_model("CLIPModel"),
        0.4,
        train_data=DATA,
        steps=4,
        interval=2,
        batch_size=16,
        progress=False,
        mixed_precision="bf16",
    )
    inputs = vltrim.get_adapter(res.model).reference_inputs(res.model, 2)
    with masked(res.model, res.plan):
        soft = run(res.model, inputs)
    assert max_diff(soft, run(vltrim.apply_plan(res.model, res.plan), inputs)) < 1e-5


# ---- 5. non-finite training stops; bad options fail before any work ------------------------------------
@pytest.mark.parametrize(
    "option,value",
    [
        ("lr", math.nan),
        ("lr", math.inf),
        ("lr", -1e-4),
        ("retrain_lr", math.nan),
        ("kd_weight", math.nan),
        ("kd_weight", math.inf),
        ("kd_weight", -1.0),
        ("batch_size", -1),
        ("batch_size", 0),
        ("search_steps", -3),
        ("retrain_steps", -1),
        ("latency_batch", -1),
        ("grad_accum", 0),
        ("eval_every", -1),
        ("checkpoint_every", 2),
        ("resume", True),
        ("resume", "no"),
        ("mixed_precision", "fp8"),
        ("target", 1.5),
        ("target", math.nan),
        ("align", 0),
        ("units", "rows"),
        ("allocation", "most"),
        ("retrain_schedule", "linear"),
        ("method", "nope"),
        ("task", "nope"),
        ("seed", 1.5),
    ],
)
def test_bad_options_fail_before_any_work(option, value):
    calls = {"n": 0}

    class Counted(SyntheticCaptions):
        def __getitem__(self, i):
            calls["n"] += 1
            return super().__getitem__(i)

    data = Counted("train", 32)
    calls["n"] = 0
    opts = {**RUN, "train_data": data, "checkpoint_every": 0, option: value}
    with pytest.raises(ValueError) as e:
        vltrim.compress(tiny_model("CLIPModel"), **opts)
    assert option.split("_")[0] in str(e.value) or "work_dir" in str(e.value)
    assert calls["n"] < 16  # not one batch was read: only items to check the data's form


def test_method_setting_typos_and_bad_values_fail_before_any_work():
    with pytest.raises(ValueError, match="intervall"):
        vltrim.compress(tiny_model("CLIPModel"), **{**RUN, "checkpoint_every": 0, "method_settings": {"intervall": 2}})
    with pytest.raises(ValueError, match="saliency"):
        vltrim.compress(
            tiny_model("CLIPModel"), **{**RUN, "checkpoint_every": 0, "method_settings": {"saliency": "magic"}}
        )


def test_a_loss_that_turns_nan_stops_training_naming_the_step():
    model, data = tiny_model("CLIPModel"), SyntheticCaptions("train", 32)
    calls = {"n": 0}

    def loss(m, batch):
        calls["n"] += 1
        value = contrastive_loss(m, batch)
        return value * math.nan if calls["n"] == 3 else value

    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingDivergedError, match="step 3"):
        train(model, data, loss, steps=5, batch_size=8, progress=False)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # two good steps were taken


def test_huge_lr_diverges_with_a_clear_error():
    with pytest.raises(TrainingDivergedError, match="step"):
        vltrim.compress(
            tiny_model("CLIPModel"),
            **{**RUN, "checkpoint_every": 0, "lr": 1e30, "search_steps": 20, "method_settings": {"interval": 2}},
        )


# ---- fp16 models, task fit, unsupported and meta models ------------------------------------------------------
def test_fp16_model_is_searched_in_fp32_and_returned_in_fp16():
    model = tiny_model("CLIPModel").half()
    res = vltrim.compress(model, **{**RUN, "checkpoint_every": 0})
    assert next(res.model.parameters()).dtype == torch.float16
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    assert next(model.parameters()).dtype == torch.float16  # the caller's model is not converted
    with pytest.raises(ValueError, match="float16"):
        train(tiny_model("CLIPModel").half(), DATA, contrastive_loss, steps=1, batch_size=8, progress=False)


@pytest.mark.parametrize(
    "name,task",
    [
        ("CLIPModel", "classification"),
        ("CLIPModel", "sentence-embedding"),
        ("BertModel", "retrieval"),
        ("ViTModel", "classification"),
    ],
)
def test_task_that_does_not_fit_the_model(name, task):
    with pytest.raises(ValueError, match=f"task '{task}' needs .*{name} is not one"):
        vltrim.compress(
            tiny_model(name), "l1", 0.3, task=task, train_data=DATA, retrain_steps=1, progress=False, latency_batch=0
        )


def test_unsupported_and_meta_models_are_refused():
    with pytest.raises(vltrim.UnsupportedModelError, match="Linear"):
        vltrim.compress(torch.nn.Linear(2, 2), "l1", 0.3, eval_data=DATA, retrain_steps=0)
    with torch.device("meta"):
        meta = tiny_model("CLIPModel")
    with pytest.raises(ValueError, match="meta"):
        vltrim.compress(meta, "l1", 0.3, retrain_steps=0)
    with pytest.raises(TypeError, match="nn.Module"):
        vltrim.compress("openai/clip", "l1", 0.3, retrain_steps=0)


# ---- the caller's model, data forms -------------------------------------------------------------------
def test_compress_and_measure_leave_the_callers_mode_alone():
    model = tiny_model("CLIPModel").train()
    model.vision_model.eval()  # a mixed state survives too
    modes = [m.training for m in model.modules()]
    vltrim.compress(model, **{**RUN, "checkpoint_every": 0, "latency_batch": 1}, eval_data=SyntheticCaptions("val", 16))
    vltrim.measure(model, rounds=1, warmup=0, min_round_s=0.0)
    vltrim.compare(model, tiny_model("CLIPModel").train(), rounds=1, warmup=0, min_round_s=0.0)
    assert [m.training for m in model.modules()] == modes


def test_a_dataloader_gives_its_dataset_batch_size_and_collate():
    seen = []

    def collate(items):
        seen.append(len(items))
        return torch.utils.data.default_collate(items)

    vltrim.compress(
        tiny_model("CLIPModel"),
        **{
            **RUN,
            "checkpoint_every": 0,
            "batch_size": None,
            "train_data": DataLoader(DATA, batch_size=8, collate_fn=collate),
        },
    )
    assert seen.count(8) == 6 + 2  # every search and retrain step took one batch of the loader's size
