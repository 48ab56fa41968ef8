"""MoPE-CLIP: fast scoring equals naive scoring; width-then-depth plans meet their target, equal their masked
model, survive save/load; bad calibration data fails clearly."""
from __future__ import annotations

import pytest
import torch

import vltrim
from vltrim.data import ClassPrompts, SyntheticCaptions
from vltrim.data.synthetic import tokenizer
from vltrim.methods import get_method
from vltrim.methods.common import prunable_groups
from vltrim.methods.mope import fast_errors, layer_ablations, make_probe, naive_errors, width_ablations
from vltrim.tasks import SentenceDistillData
from vltrim.zoo import tiny_model

from conftest import max_diff, run
from test_quality_levers import TEXTS
from test_tasks_more import shape_data


def calib(name: str):
    """(model, task, calibration data) for each kind of probe."""
    model = tiny_model(name)
    if name == "BertModel":
        return model, "sentence-embedding", SentenceDistillData(TEXTS, tokenizer(16), tiny_model(name, seed=1), max_length=16)
    if name == "ViTForImageClassification":
        return model, "classification", shape_data("val", 24)
    if name == "SiglipModel":  # zero-shot with class prompts
        d = SyntheticCaptions("val", 24)
        images = [{"pixel_values": d.pixel_values[i], "label": d.labels[i] % 4} for i in range(24)]
        return model, "retrieval", ClassPrompts(images, ["red", "green", "blue", "cube"], tokenizer(16))
    return model, "retrieval", SyntheticCaptions("val", 24)


@pytest.mark.parametrize("name", ["CLIPModel", "BertModel", "ViTForImageClassification", "SiglipModel", "VisionTextDualEncoderModel"])
def test_fast_scoring_equals_naive(name):
    model, task, data = calib(name)
    probe = make_probe(task, data, batch_size=10)  # uneven chunks: 10 + 10 + 4
    ab = width_ablations(model, prunable_groups(model, "heads,neurons"), 16, 8) + layer_ablations(model)
    fast = fast_errors(model, probe, ab, ablation_batch=3)
    naive = naive_errors(model, probe, ab)
    assert len(fast) == len(ab) and max(abs(a - b) for a, b in zip(fast, naive)) < 1e-5
    if task == "sentence-embedding":
        assert sum(abs(e) > 1e-6 for e in fast) > len(ab) // 2  # a continuous metric: removal errors are real


@pytest.mark.parametrize("depth_share", [0.0, 0.5, 1.0])
def test_width_then_depth_meets_target_and_equals_masked(tmp_path, depth_share):
    model, task, data = calib("BertModel")
    plan = get_method("mope").search(model, 0.5, data=data, task=task, depth_share=depth_share, group_size=16)
    groups = {g.name: g for g in vltrim.inspect(model)}
    got = plan.achieved["params_removed"]
    biggest = max(g.align_step(8) * g.cost_per_unit("params") for g in groups.values() if g.kind.value != "layers")
    layer = max(g.size * g.cost_per_unit("params") for g in groups.values() if g.kind.value == "neurons") * 2
    slack = (biggest if depth_share < 1 else layer) / plan.achieved["prunable_params"]
    assert 0.5 <= got <= 0.5 + slack + 1e-9, (got, slack)
    dropped = "text.layers" in plan.keep
    assert dropped == (depth_share > 0)
    small = vltrim.apply_plan(model, plan)
    assert vltrim.count_params(small) == plan.achieved["model_params_after"]
    inputs = vltrim.get_adapter(model).reference_inputs(model, 2)
    with vltrim.masked(model, plan):
        assert max_diff(run(model, inputs), run(small, inputs)) < 1e-5
    vltrim.save(small, tmp_path / "m")
    assert max_diff(run(small, inputs), run(vltrim.load(tmp_path / "m"), inputs)) == 0.0


def test_mope_keeps_the_modules_whose_removal_hurts():
    model, task, data = calib("BertModel")
    probe = make_probe(task, data)
    ab = layer_ablations(model)
    errors = fast_errors(model, probe, ab)
    plan = get_method("mope").search(model, 0.4, data=data, task=task, depth_share=1.0, units="heads,neurons")
    dropped = set(range(2)) - set(plan.keep["text.layers"])
    assert dropped == {min(range(2), key=lambda i: errors[i])}


@pytest.mark.parametrize("data,err,words", [
    ([], ValueError, ["calib_data", "empty"]),
    ([{"pixel_values": torch.zeros(3, 32, 32)}] * 4, ValueError, ["label"]),
    ([{"input_ids": torch.zeros(4, dtype=torch.long)}] * 4, ValueError, ["teacher_embedding"]),
    ("data.jsonl", TypeError, ["calib_data"]),
])
def test_bad_calibration_data_is_refused(data, err, words):
    task = "classification" if data and isinstance(data, list) and "pixel_values" in data[0] else "sentence-embedding"
    with pytest.raises(err) as e:
        make_probe(task, data)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_hidden_state_distillation_maps_across_dropped_layers():
    from vltrim.compress import task_loss
    from vltrim.tasks import get_task
    from vltrim.train.distill import hidden_kd, kept_teacher_layers, layer_outputs

    teacher, task, data = calib("BertModel")
    groups = {g.name: g for g in vltrim.inspect(teacher)}
    plan = vltrim.Plan.from_keep("BertModel", groups.values(), {"text.layers": [1]})
    student = vltrim.apply_plan(teacher, plan)
    assert kept_teacher_layers(student, teacher, "text", 2) == [1]
    batch = data.collate([data[i] for i in range(4)])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad(), layer_outputs(student) as s, layer_outputs(teacher) as t:
        student(**inputs), teacher(**inputs)
    assert len(s["text"]) == 1 and len(t["text"]) == 2
    same = vltrim.apply_plan(teacher, vltrim.Plan.from_keep("BertModel", groups.values(), {}))
    with torch.no_grad(), layer_outputs(same) as s2:
        same(**inputs)
    assert hidden_kd(same, teacher, s2, t).item() == 0.0 and hidden_kd(student, teacher, s, t).item() > 0
    loss = task_loss(get_task(task), teacher, kd_hidden=1.0)(student, batch)
    assert loss.item() > task_loss(get_task(task), teacher)(student, batch).item()


def test_compress_with_mope_reports_and_saves_the_table(tmp_path):
    from vltrim.methods.mope import save_table

    res = vltrim.compress(tiny_model("CLIPModel"), "mope", 0.5, train_data=SyntheticCaptions("train", 32), eval_data=SyntheticCaptions("val", 16),
                          retrain_steps=2, batch_size=16, depth_share=0.3, latency_batch=0, progress=False, method_settings={"group_size": 16})
    assert res.plan.method == "mope" and res.plan.settings["depth_share"] == 0.3
    rows = res.report["scores_table"]
    assert {r["kind"] for r in rows} == {"heads", "neurons", "layers"}
    csv_file, png = save_table(rows, tmp_path)
    assert csv_file.read_text().splitlines()[0] == "group,modality,kind,layer,units,error,cost" and png.stat().st_size > 1000
    with pytest.raises(ValueError, match="heads,neurons"):
        vltrim.compress(tiny_model("CLIPModel"), "mope", 0.5, train_data=SyntheticCaptions("train", 32), units="head_dims,neurons",
                        retrain_steps=0, latency_batch=0, progress=False)
    with pytest.raises(ValueError, match="depth_share"):
        vltrim.compress(tiny_model("CLIPModel"), "mope", 0.5, train_data=SyntheticCaptions("train", 32), depth_share=1.5,
                        retrain_steps=0, latency_batch=0, progress=False)


def test_one_tower_only():
    plan = get_method("mope").search(tiny_model("CLIPModel"), 0.4, data=SyntheticCaptions("val", 24), depth_share=0.5,
                                     modalities=["vision"], group_size=16)
    assert plan.keep and all(name.startswith("vision.") for name in plan.keep) and plan.settings["modalities"] == ["vision"]


def test_cli_mope_writes_the_table_next_to_the_model(tmp_path):
    from typer.testing import CliRunner

    from vltrim.cli import app

    r = CliRunner().invoke(app, ["compress", "tiny:CLIPModel", "--out", str(tmp_path / "m"), "--method", "mope", "--target", "0.4",
                                 "--depth-share", "0.5", "--data", "builtin", "--latency-batch", "0"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m" / "mope.csv").exists() and (tmp_path / "m" / "mope.png").exists()
    plan = vltrim.Plan.load(tmp_path / "m" / "plan.json")
    assert plan.method == "mope" and plan.settings["depth_share"] == 0.5
    assert vltrim.load(tmp_path / "m") is not None
