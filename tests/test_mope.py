"""MoPE-CLIP: fast scoring equals naive scoring; width-then-depth plans meet their target, equal their masked
model, survive save/load; bad calibration data fails clearly."""

from __future__ import annotations

import pytest
import torch
from conftest import max_diff, run
from test_quality_levers import TEXTS
from test_tasks_more import shape_data

import vltrim
from vltrim.data import ClassPrompts, SyntheticCaptions
from vltrim.data.synthetic import tokenizer
from vltrim.methods import get_method
from vltrim.methods.common import prunable_groups
from vltrim.methods.mope import fast_errors, layer_ablations, make_probe, naive_errors, width_ablations
from vltrim.tasks import SentenceDistillData
from vltrim.zoo import tiny_model

TEXT_ENCODERS = ("BertModel", "DistilBertModel", "MPNetModel", "ModernBertModel")


def calib(name: str):
    """(model, task, calibration data) for each kind of probe."""
    model = tiny_model(name)
    if name in TEXT_ENCODERS:
        return (
            model,
            "sentence-embedding",
            SentenceDistillData(TEXTS, tokenizer(16), tiny_model(name, seed=1), max_length=16),
        )
    if name in ("ViTForImageClassification", "Dinov2ForImageClassification"):
        return model, "classification", shape_data("val", 24)
    if name == "WavLMForSequenceClassification":  # blocks hand on a position bias too
        g = torch.Generator().manual_seed(0)
        clips = [{"input_values": torch.randn(16_000, generator=g), "label": torch.tensor(i % 5)} for i in range(24)]
        return model, "audio-classification", clips
    if name == "SiglipModel":  # zero-shot with class prompts
        d = SyntheticCaptions("val", 24)
        images = [{"pixel_values": d.pixel_values[i], "label": d.labels[i] % 4} for i in range(24)]
        return model, "retrieval", ClassPrompts(images, ["red", "green", "blue", "cube"], tokenizer(16))
    return model, "retrieval", SyntheticCaptions("val", 24)


@pytest.mark.parametrize(
    "name,k",
    [
        ("CLIPModel", 3),
        ("CLIPModel", 1),
        ("BertModel", 3),
        ("BertModel", 1),
        ("DistilBertModel", 3),
        ("MPNetModel", 3),
        ("ModernBertModel", 3),  # the model's forward reads its layers' attention_type: the stand-ins carry it
        ("ModernBertModel", 1),
        ("ViTForImageClassification", 3),
        ("Dinov2ForImageClassification", 3),
        ("SiglipModel", 3),
        ("VisionTextDualEncoderModel", 3),
        ("WavLMForSequenceClassification", 3),
        ("WavLMForSequenceClassification", 1),
    ],
)
def test_fast_scoring_equals_naive(name, k):
    model, task, data = calib(name)
    probe = make_probe(task, data, batch_size=10)  # uneven chunks: 10 + 10 + 4
    ab = width_ablations(model, prunable_groups(model, "heads,neurons"), 16, 8) + layer_ablations(model)
    fast = fast_errors(model, probe, ab, ablation_batch=k)
    naive = naive_errors(model, probe, ab)
    assert len(fast) == len(ab) and max(abs(a - b) for a, b in zip(fast, naive)) < 1e-5
    if task == "sentence-embedding":
        assert sum(abs(e) > 1e-6 for e in fast) > len(ab) // 2  # a continuous metric: removal errors are real


@pytest.mark.parametrize("depth_share,rounds", [(0.0, 1), (0.5, 1), (1.0, 1), (0.0, 3), (0.5, 2)])
def test_width_then_depth_meets_target_and_equals_masked(tmp_path, depth_share, rounds):
    model, task, data = calib("BertModel")
    plan = get_method("mope").search(
        model, 0.5, data=data, task=task, depth_share=depth_share, group_size=16, rounds=rounds
    )
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


def test_rounds_keep_earlier_cuts_and_rescore_the_rest():
    """rounds=2 at 50%: its first round is the one-shot plan at 25% (same scores), whose cut stays cut; the second
    round re-scores the kept modules on the narrowed model, so the table holds errors from both models."""
    model, task, data = calib("CLIPModel")
    mope = get_method("mope")
    found = mope.search_result(model, 0.25, data=data, task=task, group_size=16)
    half, one_shot_table = found.plan, found.artifacts["scores_table"]
    found = mope.search_result(model, 0.5, data=data, task=task, group_size=16, rounds=2)
    two, two_table = found.plan, found.artifacts["scores_table"]
    assert two.settings["rounds"] == 2 and "rounds" not in half.settings
    for name, kept in two.keep.items():
        assert set(kept) <= set(half.keep.get(name, kept)), name
    rescored = {(r["group"], r["units"]): r["error"] for r in two_table}
    first = {(r["group"], r["units"]): r["error"] for r in one_shot_table}
    assert any(
        rescored[k] != first[k] for k in rescored if k in first
    )  # kept modules were scored again, on another model
    with pytest.raises(ValueError, match="rounds"):
        mope.search(model, 0.5, data=data, task=task, rounds=0)


def test_mope_keeps_the_modules_whose_removal_hurts():
    model, task, data = calib("BertModel")
    probe = make_probe(task, data)
    ab = layer_ablations(model)
    errors = fast_errors(model, probe, ab)
    plan = get_method("mope").search(model, 0.4, data=data, task=task, depth_share=1.0, units="heads,neurons")
    dropped = set(range(2)) - set(plan.keep["text.layers"])
    assert dropped == {min(range(2), key=lambda i: errors[i])}


@pytest.mark.parametrize(
    "data,err,words",
    [
        ([], ValueError, ["calib_data", "empty"]),
        ([{"pixel_values": torch.zeros(3, 32, 32)}] * 4, ValueError, ["label"]),
        ([{"input_ids": torch.zeros(4, dtype=torch.long)}] * 4, ValueError, ["teacher_embedding"]),
        ("data.jsonl", TypeError, ["calib_data"]),
    ],
)
def test_bad_calibration_data_is_refused(data, err, words):
    task = "classification" if data and isinstance(data, list) and "pixel_values" in data[0] else "sentence-embedding"
    with pytest.raises(err) as e:
        make_probe(task, data)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_hidden_state_distillation_maps_across_dropped_layers():
    from vltrim.run.runner import task_loss
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

    res = vltrim.compress(
        tiny_model("CLIPModel"),
        "mope",
        0.5,
        train_data=SyntheticCaptions("train", 32),
        eval_data=SyntheticCaptions("val", 16),
        retrain_steps=2,
        batch_size=16,
        depth_share=0.3,
        latency_batch=0,
        progress=False,
        method_settings={"group_size": 16},
    )
    assert res.plan.method == "mope" and res.plan.settings["depth_share"] == 0.3
    rows = res.report["scores_table"]
    assert {r["kind"] for r in rows} == {"heads", "neurons", "layers"}
    csv_file, png = save_table(rows, tmp_path)
    assert (
        csv_file.read_text().splitlines()[0] == "group,modality,kind,layer,units,error,cost"
        and png.stat().st_size > 1000
    )
    with pytest.raises(ValueError, match="heads,neurons"):
        vltrim.compress(
            tiny_model("CLIPModel"),
            "mope",
            0.5,
            train_data=SyntheticCaptions("train", 32),
            units="head_dims,neurons",
            retrain_steps=0,
            latency_batch=0,
            progress=False,
        )
    with pytest.raises(ValueError, match="depth_share"):
        vltrim.compress(
            tiny_model("CLIPModel"),
            "mope",
            0.5,
            train_data=SyntheticCaptions("train", 32),
            depth_share=1.5,
            retrain_steps=0,
            latency_batch=0,
            progress=False,
        )


def test_one_tower_only():
    plan = get_method("mope").search(
        tiny_model("CLIPModel"),
        0.4,
        data=SyntheticCaptions("val", 24),
        depth_share=0.5,
        modalities=["vision"],
        group_size=16,
    )
    assert (
        plan.keep
        and all(name.startswith("vision.") for name in plan.keep)
        and plan.settings["modalities"] == ["vision"]
    )


def test_cli_mope_writes_the_table_next_to_the_model(tmp_path):
    from typer.testing import CliRunner

    from vltrim.cli import app

    r = CliRunner().invoke(
        app,
        [
            "compress",
            "tiny:CLIPModel",
            "--out",
            str(tmp_path / "m"),
            "--method",
            "mope",
            "--target",
            "0.4",
            "--depth-share",
            "0.5",
            "--data",
            "builtin",
            "--latency-batch",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m" / "mope.csv").exists() and (tmp_path / "m" / "mope.png").exists()
    plan = vltrim.Plan.load(tmp_path / "m" / "plan.json")
    assert plan.method == "mope" and plan.settings["depth_share"] == 0.5
    assert vltrim.load(tmp_path / "m") is not None


def test_fast_scoring_skips_what_an_ablation_cannot_change():
    """Blocks below an ablated one run once (the clean pass); in the ablated block q/k/v run once for head
    ablations and fc1 once for FFN ablations (the pass that records them); a removed layer does not run."""
    model, task, data = calib("BertModel")
    probe = make_probe(task, data, batch_size=len(data))  # one chunk
    t = vltrim.get_adapter(model).towers(model)[0]
    last = len(t.layers) - 1
    b = t.block(t.layers[last])
    calls = {"block0": 0, "q": 0, "fc1": 0, "last": 0}
    hooks = [
        t.layers[0].register_forward_hook(lambda *_: calls.__setitem__("block0", calls["block0"] + 1)),
        b.attn.q.register_forward_hook(lambda *_: calls.__setitem__("q", calls["q"] + 1)),
        b.fc1.register_forward_hook(lambda *_: calls.__setitem__("fc1", calls["fc1"] + 1)),
        t.layers[last].register_forward_hook(lambda *_: calls.__setitem__("last", calls["last"] + 1)),
    ]
    heads, ffn = (
        [a for a in width_ablations(model, prunable_groups(model, "heads,neurons"), 16, 8) if a.layer == last],
        [],
    )
    ffn = [a for a in heads if a.kind == "neurons"]
    heads = [a for a in heads if a.kind == "heads"]
    fast_errors(model, probe, heads + ffn + [layer_ablations(model)[last]], ablation_batch=1)
    for h in hooks:
        h.remove()
    assert calls["block0"] == 1  # the clean pass only
    assert (
        calls["q"] == 1 + 2
    )  # clean pass + recording for heads and for FFN groups (FFN ablations reuse the attention)
    assert calls["fc1"] == 1 + 2 + len(heads)  # head ablations change fc1's input; FFN ablations reuse fc1's output
    assert calls["last"] == 1 + 2 + len(heads) + len(ffn)  # the layer's own removal skips it


def _student_teacher_batch():
    teacher = tiny_model("CLIPModel")
    groups = vltrim.inspect(teacher)
    plan = vltrim.Plan.from_keep(
        "CLIPModel", groups, {g.name: list(range(g.size // 2)) for g in groups if g.kind.value == "neurons"}
    )
    data = SyntheticCaptions("val", 8)
    return vltrim.apply_plan(teacher, plan), teacher, {k: torch.stack([data[i][k] for i in range(8)]) for k in data[0]}


def test_final_embedding_distillation_by_hand():
    """MoPE's uni-modal distillation of each tower's final embedding: KL + w x mean squared distance, by hand."""
    from vltrim.tasks.retrieval import image_embeds, similarity_kd_loss, text_embeds
    from vltrim.train.distill import similarity_kl

    student, teacher, batch = _student_teacher_batch()
    with torch.no_grad():
        kl = similarity_kl(
            student(**{k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}).logits_per_image,
            teacher(**{k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}).logits_per_image,
        )
        dist = (
            sum((f(student, batch) - f(teacher, batch)).pow(2).sum(-1).mean() for f in (image_embeds, text_embeds)) / 2
        )
        got = similarity_kd_loss(student, teacher, batch, embed_weight=0.7)
        assert dist > 0 and abs(got.item() - (kl + 0.7 * dist).item()) < 1e-5
        assert abs(similarity_kd_loss(student, teacher, batch).item() - kl.item()) < 1e-6


def test_task_weight_zero_trains_by_distillation_alone():
    from vltrim.run.runner import task_loss
    from vltrim.tasks import get_task
    from vltrim.tasks.retrieval import similarity_kd_loss

    student, teacher, batch = _student_teacher_batch()
    task = get_task("retrieval")
    with torch.no_grad():
        only_kd = task_loss(task, teacher, kd_weight=0.5, kd_embed=2.0, task_weight=0.0)(student, batch)
        assert abs(only_kd.item() - 0.5 * similarity_kd_loss(student, teacher, batch, embed_weight=2.0).item()) < 1e-6
        full = task_loss(task, teacher, kd_weight=0.5, kd_embed=2.0)(student, batch)
        assert abs(full.item() - only_kd.item() - task.loss(student, batch).item()) < 1e-5


def test_pretraining_stage_on_unlabelled_pairs(tmp_path):
    """The paper's pre-training stage: both towers scored by mean R@1 of unlabelled pairs (each caption its own
    image), retrained by distillation alone (task_weight 0); mope's defaults add hidden and embedding KD."""
    data = SyntheticCaptions("train", 32)
    pairs = [{k: v for k, v in data[i].items() if k != "label"} for i in range(len(data))]
    res = vltrim.compress(
        tiny_model("CLIPModel"),
        "mope",
        0.4,
        train_data=pairs,
        retrain_steps=2,
        batch_size=16,
        task_weight=0.0,
        latency_batch=0,
        progress=False,
        method_settings={"group_size": 16},
        work_dir=tmp_path / "w",
    )
    assert {n.split(".")[0] for n in res.plan.keep} == {"vision", "text"}
    import json

    run = json.loads((tmp_path / "w" / "run.json").read_text())
    assert (
        run["settings"]["task_weight"] == 0.0
        and run["settings"]["kd_embed"] == 1.0
        and run["settings"]["kd_hidden"] == 1.0
    )


@pytest.mark.parametrize(
    "opts,words",
    [
        ({"kd_embed": 1.0}, ["kd_embed", "sentence-embedding"]),
        ({"task_weight": 0.0}, ["task_weight", "no training loss"]),
        ({"task_weight": -1.0}, ["task_weight"]),
    ],
)
def test_loss_weights_the_task_cannot_use_are_refused(opts, words):
    model, task, data = calib("BertModel")
    with pytest.raises(ValueError) as e:
        vltrim.compress(
            model, "l1", 0.5, task=task, train_data=data, retrain_steps=1, latency_batch=0, progress=False, **opts
        )
    assert all(w in str(e.value) for w in words), str(e.value)
