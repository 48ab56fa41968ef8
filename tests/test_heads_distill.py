"""The `heads` method (Michel et al.'s expected |dL/d head-mask|) and the `distill` layer-dropping student."""

from __future__ import annotations

import importlib

import pytest
import torch
import transformers as tf
from conftest import max_diff, run
from test_quality_levers import sentence_data

import vltrim
from vltrim.arch import get_adapter
from vltrim.arch.apply import masked
from vltrim.data import SyntheticCaptions
from vltrim.methods import get_method
from vltrim.methods.common import prunable_groups
from vltrim.methods.distill import layers_for_target, student_plan
from vltrim.methods.heads import head_scores, ranking, round_targets
from vltrim.tasks import embedding_loss, get_task
from vltrim.train.distill import kept_teacher_layers, layer_map
from vltrim.zoo import TINY, TINY_TEXT, TINY_VISION, tiny_model

retrieval_loss = get_task("retrieval").loss
FAST = dict(latency_batch=0, progress=False, batch_size=8)


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def deep_clip(vision: int = 6, text: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = tf.CLIPConfig(
        vision_config=dict(TINY_VISION, num_hidden_layers=vision),
        text_config=dict(TINY_TEXT, num_hidden_layers=text),
        projection_dim=32,
    )
    return tf.CLIPModel(cfg).eval()


def deep(name: str, layers: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "BertModel":
        return tf.BertModel(
            tf.BertConfig(**dict(TINY, num_hidden_layers=layers, vocab_size=64, max_position_embeddings=32))
        ).eval()
    return tf.ViTForImageClassification(
        tf.ViTConfig(**dict(TINY_VISION, num_hidden_layers=layers, num_labels=5))
    ).eval()


# ---- heads: importance ---------------------------------------------------------------------------------------
def by_hand_head_grads(model, data, batch_size: int, seed: int, num_batches: int) -> list[torch.Tensor]:
    """|dL/dm| per head of every BERT layer, averaged over batches: m multiplies each head's slice of the input
    of attention.output.dense (written here with plain hooks, not vltrim.arch.masks)."""
    heads = model.config.num_attention_heads
    ms = [torch.ones(heads, requires_grad=True) for _ in model.encoder.layer]

    def hook(m):
        return lambda _mod, args: ((args[0].unflatten(-1, (heads, -1)) * m[:, None]).flatten(-2),)

    handles = [
        layer.attention.output.dense.register_forward_pre_hook(hook(m)) for layer, m in zip(model.encoder.layer, ms)
    ]
    total = [torch.zeros(heads, dtype=torch.float64) for _ in ms]
    try:
        for i in range(num_batches):
            idx = vltrim.train.batch_indices(len(data), batch_size, seed, i)
            embedding_loss(model, data.collate([data[j] for j in idx])).backward()
            for t, m in zip(total, ms):
                t += m.grad.abs().double()
                m.grad = None
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return [t / num_batches for t in total]


def test_head_scores_match_a_by_hand_computation():
    teacher = tiny_model("BertModel")
    data = sentence_data(teacher)
    student = no_dropout(tiny_model("BertModel", seed=1))  # differs from the teacher: the loss has gradients
    groups = prunable_groups(student, "heads")
    got = head_scores(student, groups, data, embedding_loss, num_batches=2, batch_size=8, seed=3)
    want = by_hand_head_grads(student, data, 8, 3, 2)
    for i, w in enumerate(want):
        assert torch.allclose(got[f"text.layers.{i}.attn.heads"], w, atol=1e-6, rtol=0)
    assert all(w.abs().sum() > 0 for w in want)
    assert all(p.grad is None for p in student.parameters()) and not student.training  # model left as it was


def test_ranking_normalises_per_layer_and_protects_the_top_head():
    r = ranking({"a": torch.tensor([3.0, 4.0, 0.0]), "b": torch.tensor([1.0, 2.0, 2.0])}, {"b": [2]})
    assert r["a"].tolist() == [0.6, torch.inf, 0.0]  # L2-normalised, the top head +inf
    assert (
        r["b"][0] == pytest.approx(1 / 5**0.5) and r["b"][1] == torch.inf and r["b"][2] == -torch.inf
    )  # norm over remaining


def test_heads_plan_protects_top_heads_meets_target_and_leaves_model_alone():
    model = tiny_model("CLIPModel")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = SyntheticCaptions("train", 32)
    groups = prunable_groups(model, "heads")
    raw = head_scores(model, groups, data, retrieval_loss, num_batches=2, batch_size=8, seed=0)
    plan = vltrim.plan(model, "heads", 0.7, data=data, loss_fn=retrieval_loss, num_batches=2, batch_size=8)
    assert set(plan.kinds.values()) == {"heads"} and plan.method == "heads"
    for g in groups:  # the top head of every layer is kept, even at 70% of all heads removed
        assert int(raw[g.name].argmax()) in plan.keep.get(g.name, range(g.size))
    got, total = plan.achieved["params_removed"], sum(g.size * g.params_per_unit for g in groups)
    assert 0.7 <= got < 0.7 + max(g.params_per_unit for g in groups) / total  # within one alignment step
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training
    found = get_method("heads").search_result(
        model, 0.7, data=data, loss_fn=retrieval_loss, num_batches=2, batch_size=8
    )
    assert found.plan.keep == plan.keep  # the same search; its per-head scores come with it, not kept on the method
    assert len(found.artifacts["head_scores"]) == sum(g.size for g in groups)


def test_heads_plan_masked_equals_sliced():
    model = tiny_model("CLIPModel")
    plan = vltrim.plan(
        model, "heads", 0.4, data=SyntheticCaptions("train", 32), loss_fn=retrieval_loss, num_batches=1, batch_size=8
    )
    inputs = get_adapter(model).reference_inputs(model, batch_size=2)
    with masked(model, plan):
        want = run(model, inputs)
    assert max_diff(run(vltrim.apply_plan(model, plan), inputs), want) < 1e-5


def test_heads_iterative_rounds_only_prune_more():
    assert round_targets(0.75, 2, "geometric") == pytest.approx([0.5, 0.75])
    assert round_targets(0.6, 3, "linear") == pytest.approx([0.2, 0.4, 0.6])
    model = deep("BertModel", 3)
    data = sentence_data(tiny_model("BertModel"))
    one = vltrim.plan(model, "heads", 0.5, data=data, loss_fn=embedding_loss, num_batches=1, batch_size=8, rounds=3)
    steps = one.settings["round_removed"]
    assert steps == sorted(steps) and len(steps) >= 2 and one.achieved["params_removed"] == pytest.approx(steps[-1])
    assert one.achieved["params_removed"] >= 0.5 and one.settings["schedule"] == "geometric"


def test_heads_scores_with_pruned_heads_masked():
    """Re-scoring runs on the masked model: masking a head changes the other heads' gradients."""
    student = no_dropout(tiny_model("BertModel", seed=1))
    data, groups = sentence_data(tiny_model("BertModel")), prunable_groups(student, "heads")
    a = head_scores(student, groups, data, embedding_loss, num_batches=1, batch_size=8)
    b = head_scores(student, groups, data, embedding_loss, num_batches=1, batch_size=8, pruned={groups[0].name: [0]})
    assert not torch.allclose(a[groups[1].name], b[groups[1].name])


def test_heads_bad_options_name_them():
    model, data = tiny_model("BertModel"), sentence_data(tiny_model("BertModel"))
    with pytest.raises(ValueError, match="calibration data"):
        vltrim.plan(model, "heads", 0.3)
    for opts, word in [
        ({"units": "head_dims"}, "units"),
        ({"rounds": 0}, "rounds"),
        ({"schedule": "cubic"}, "schedule"),
        ({"num_batches": 0}, "num_batches"),
    ]:
        with pytest.raises(ValueError, match=word):
            vltrim.plan(model, "heads", 0.3, data=data, loss_fn=embedding_loss, **opts)


def test_heads_through_compress():
    res = vltrim.compress(
        tiny_model("CLIPModel"),
        "heads",
        0.3,
        train_data=SyntheticCaptions("train", 32),
        retrain_steps=1,
        method_settings={"num_batches": 2},
        **FAST,
    )
    assert res.plan.method == "heads" and res.plan.achieved["params_removed"] >= 0.3
    assert (
        set(res.plan.kinds.values()) == {"heads"} and "scores_table" not in res.report
    )  # the CLI saves that as MoPE's


# ---- distill: the layer-dropping student -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "layers, want",
    [
        (3, {"vision": 3, "text": 3}),
        ({"vision": 2, "text": 1}, {"vision": 2, "text": 1}),
        ({"text": 2}, {"vision": 6, "text": 2}),
    ],
)
def test_student_keeps_evenly_spread_teacher_layers(layers, want):
    teacher = deep_clip(6, 4)
    small = vltrim.student(teacher, layers=layers)
    towers = {t.name: t for t in get_adapter(small).towers(small)}
    big = {t.name: t for t in get_adapter(teacher).towers(teacher)}
    for name, n in want.items():
        assert len(towers[name].layers) == n and small.config.to_dict()[f"{name}_config"]["num_hidden_layers"] == n
        kept = kept_teacher_layers(small, teacher, name, len(big[name].layers))
        assert kept == layer_map(n, len(big[name].layers))  # hidden-state KD maps each layer to its source
        for i, j in enumerate(kept):  # initialised from the layers they came from
            s, t = towers[name].layers[i].state_dict(), big[name].layers[j].state_dict()
            assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)


@pytest.mark.parametrize("name", ["BertModel", "ViTForImageClassification"])
def test_student_of_unimodal_models_saves_and_loads_bit_exactly(name, tmp_path):
    teacher = deep(name, 5)
    small = vltrim.student(teacher, layers=2)
    tower = get_adapter(small).towers(small)[0]
    assert len(tower.layers) == 2 and kept_teacher_layers(small, teacher, tower.name, 5) == [1, 4]
    vltrim.save(small, tmp_path)
    again = vltrim.load(tmp_path)
    a, b = small.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    inputs = get_adapter(small).reference_inputs(small, batch_size=2)
    assert max_diff(run(again, inputs), run(small, inputs)) == 0.0


def test_student_bad_layers_name_the_option():
    teacher = deep_clip(6, 4)
    for layers, words in [
        (0, "layers .*>= 1"),
        (5, "text tower has 4 layers"),
        ({"audio": 2}, "unknown tower 'audio'.*text, vision"),
        ({"vision": 7}, "vision tower has 6"),
        ("6", "layers"),
        ({"vision": 2, "text": -1}, "layers .*text"),
    ]:
        with pytest.raises(ValueError, match=words):
            vltrim.student(teacher, layers=layers)


def test_distill_method_chooses_layers_from_target_and_records_achieved():
    teacher = deep_clip(6, 4)
    assert layers_for_target(teacher, 0.5) == {"vision": 3, "text": 2}
    assert layers_for_target(teacher, 0.95) == {"vision": 1, "text": 1}  # at least one layer per tower
    plan = vltrim.plan(teacher, "distill", 0.5)
    assert plan.keep == {"vision.layers": [1, 3, 5], "text.layers": [1, 3]} and plan.achieved[
        "params_removed"
    ] == pytest.approx(0.5)
    assert plan.achieved["model_params_after"] == vltrim.count_params(vltrim.apply_plan(teacher, plan))
    assert student_plan(teacher, {"vision": 3}).target == {"layers": {"vision": 3}}


def test_distill_through_compress_uses_hidden_state_kd(monkeypatch):
    mod = importlib.import_module("vltrim.tasks.loss")  # compress's loss (vltrim.tasks.loss.task_loss)
    seen = []

    def spy(student, teacher, s, t):
        seen.append({k: kept_teacher_layers(student, teacher, k, len(t[k])) for k in s})
        return real(student, teacher, s, t)

    real = mod.hidden_kd
    monkeypatch.setattr(mod, "hidden_kd", spy)
    teacher = tiny_model("CLIPModel")
    res = vltrim.compress(
        teacher,
        "distill",
        0.5,
        train_data=SyntheticCaptions("train", 32),
        retrain_steps=2,
        method_settings={"layers": 1},
        **FAST,
    )
    assert res.plan.keep == {"vision.layers": [1], "text.layers": [1]}
    assert len(seen) == 2 and seen[0] == {"vision": [1], "text": [1]}
    assert [len(t.layers) for t in get_adapter(res.model).towers(res.model)] == [1, 1]
