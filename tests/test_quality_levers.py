"""What the real-weights work added: the search LR schedule, seeded random, dynamic padding, taylor's scores,
allocation (uniform / per-modality / capped) and learning curves in compress reports."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vltrim
from vltrim.data import SyntheticCaptions
from vltrim.data.synthetic import tokenizer
from vltrim.methods import get_method
from vltrim.methods.common import prunable_groups
from vltrim.methods.taylor import taylor_scores
from vltrim.structure.select import Budget, achieved, select
from vltrim.tasks import SentenceDistillData, embedding_loss, evaluate_embeddings
from vltrim.tasks.sentence import linear_probe, sentence_embedding
from vltrim.train.loop import lr_factor
from vltrim.zoo import tiny_model

TEXTS = SyntheticCaptions("train", 48).captions


def sentence_data(teacher, **kw) -> SentenceDistillData:
    return SentenceDistillData(TEXTS, tokenizer(16), teacher, max_length=16, **kw)


# ---- LR schedule of the search ---------------------------------------------------------------------------
def test_lr_factor_constant_vs_cosine():
    assert [lr_factor(s, 100, 4, "constant") for s in (0, 3, 4, 50, 99)] == [0.25, 1.0, 1.0, 1.0, 1.0]
    cos = [lr_factor(s, 100, 4, "cosine") for s in (4, 52, 99)]
    assert cos[0] == 1.0 and cos[1] == pytest.approx(0.5) and cos[2] < 0.01
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, 1, "linear")


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_upop_search_lr_follows_its_schedule(tmp_path, schedule):
    """UPop searches at a constant LR by default (its masks change most at the end); 'cosine' decays it."""
    teacher = tiny_model("BertModel")
    res = get_method("upop").run(
        teacher,
        0.3,
        train_data=sentence_data(teacher),
        loss_fn=embedding_loss,
        steps=20,
        interval=5,
        lr=1e-3,
        batch_size=8,
        progress=False,
        output_dir=tmp_path,
        **({} if schedule == "constant" else {"schedule": schedule}),
    )
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert res.plan.settings["schedule"] == schedule
    if schedule == "constant":
        assert lrs == [pytest.approx(1e-3)] * len(lrs)
    else:
        assert lrs[-1] < 1e-5 < lrs[0]


# ---- random honours the seed -------------------------------------------------------------------------------
def test_compress_seed_reaches_random():
    model = tiny_model("BertModel")
    plans = [
        vltrim.compress(
            model,
            "random",
            0.4,
            task="sentence-embedding",
            train_data=None,
            retrain_steps=0,
            latency_batch=0,
            progress=False,
            seed=s,
        ).plan
        for s in (1, 2, 1)
    ]
    assert plans[0].keep == plans[2].keep and plans[0].keep != plans[1].keep
    assert plans[0].settings["seed"] == 1 and plans[1].settings["seed"] == 2


# ---- dynamic padding ---------------------------------------------------------------------------------------
def test_sentence_data_pads_each_batch_to_its_longest_text():
    teacher = tiny_model("BertModel")
    data = sentence_data(teacher)
    lengths = [len(data[i]["input_ids"]) for i in range(len(data))]
    assert all(int(data[i]["attention_mask"].sum()) == lengths[i] for i in range(len(data)))  # stored unpadded
    batch = data.collate([data[i] for i in range(4)])
    assert batch["input_ids"].shape[1] == max(lengths[:4]) < 16
    # the same embeddings as texts padded to max_length
    full = tokenizer(16)(TEXTS[:4], max_length=16)
    with torch.no_grad():
        a = sentence_embedding(teacher, batch)
        b = sentence_embedding(teacher, full)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(data.teacher_embedding[:4], b, atol=1e-5)
    # the training loop uses the dataset's collate: a few steps run on variable-length batches
    vltrim.train.train(teacher, data, embedding_loss, steps=2, batch_size=8, progress=False)


def test_linear_probe_separates_separable_classes_and_reports_it():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    x = torch.randn(200, 8, generator=g) * 0.1 + torch.nn.functional.one_hot(y, 8).float()
    assert linear_probe(x[:100], y[:100], x[100:], y[100:]) == 1.0
    teacher = tiny_model("BertModel")
    data = sentence_data(teacher, labels=[i % 3 for i in range(len(TEXTS))])
    out = evaluate_embeddings(teacher, data)
    assert out["cosine_to_teacher"] == pytest.approx(1.0, abs=1e-5) and 0.0 <= out["probe_top1"] <= 1.0


# ---- taylor ------------------------------------------------------------------------------------------------
def _by_hand(model, data, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """|w * dL/dw| of layer 0's FFN neurons and head_dim channels, written out from the BERT modules."""
    model.zero_grad()
    loss_fn(model, data.collate([data[i] for i in range(8)])).backward()
    layer = model.encoder.layer[0]
    t = lambda lin: (lin.weight * lin.weight.grad).abs()  # noqa: E731
    tb = lambda lin: (lin.bias * lin.bias.grad).abs()  # noqa: E731
    fc1, fc2 = layer.intermediate.dense, layer.output.dense
    neurons = t(fc1).sum(1) + tb(fc1) + t(fc2).sum(0)
    att = layer.attention
    heads, hd = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
    rows = sum(t(lin).sum(1) + tb(lin) for lin in (att.self.query, att.self.key, att.self.value))
    per = rows + t(att.output.dense).sum(0)
    model.zero_grad(set_to_none=True)
    return neurons.double(), per.view(heads, hd).sum(0).double()


def test_taylor_scores_match_a_by_hand_computation():
    teacher = tiny_model("BertModel")
    data = sentence_data(teacher)
    student = tiny_model("BertModel", seed=1)  # a student that differs, so the loss has gradients in eval mode too
    student.train(False)
    for m in student.modules():  # no dropout: the by-hand pass sees the same function
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    groups = prunable_groups(student, "head_dims,neurons")
    got = taylor_scores(student, groups, data, embedding_loss, num_batches=1, batch_size=8, seed=0)
    order = vltrim.train.batch_indices(len(data), 8, 0, 0)
    reordered = torch.utils.data.Subset(data, order)
    reordered.collate = data.collate
    neurons, dims = _by_hand(student, reordered, embedding_loss)
    name = {g.kind.value: g.name for g in groups if ".layers.0." in g.name}
    assert torch.allclose(got[name["neurons"]], neurons, rtol=1e-4, atol=1e-10)
    assert torch.allclose(got[name["head_dims"]], dims, rtol=1e-4, atol=1e-10)
    assert all(p.grad is None for p in student.parameters()) and not student.training  # model left as it was


def test_taylor_through_compress_needs_and_uses_data():
    teacher = tiny_model("BertModel")
    with pytest.raises(ValueError, match="calibration data"):
        vltrim.plan(teacher, "taylor", target=0.3)
    res = vltrim.compress(
        teacher,
        "taylor",
        0.3,
        task="sentence-embedding",
        train_data=sentence_data(teacher),
        retrain_steps=0,
        latency_batch=0,
        progress=False,
        batch_size=8,
    )
    assert res.plan.method == "taylor" and res.plan.achieved["params_removed"] >= 0.3


@pytest.mark.parametrize("method", ["taylor", "heads"])
def test_calibration_dropout_follows_the_seed_not_the_global_rng(method):
    """taylor and heads score in train mode (dropout on): their plans depend on ``seed`` only, not on what drew random
    numbers before them, and they leave the global RNG where it was."""
    teacher = tiny_model("BertModel")
    data, m = sentence_data(teacher), get_method(method)
    plans = []
    for global_seed, seed in ((1, 0), (2, 0), (1, 5)):
        torch.manual_seed(global_seed)
        plans.append(m.search(teacher, 0.3, data=data, loss_fn=embedding_loss, seed=seed, batch_size=8).keep)
        after = torch.rand(1)
        torch.manual_seed(global_seed)
        assert torch.equal(after, torch.rand(1))  # the global stream was not consumed
    assert plans[0] == plans[1] and plans[0] != plans[2]


# ---- allocation --------------------------------------------------------------------------------------------
def _shares(groups, keep):
    return {g.name: 1 - len(keep.get(g.name, range(g.size))) / g.size for g in groups}


def test_uniform_allocation_cuts_every_group_alike():
    model = tiny_model("CLIPModel")
    groups = prunable_groups(model, "neurons")
    scores = {
        g.name: torch.rand(g.size) + (100.0 if i else 0.0) for i, g in enumerate(groups)
    }  # one group looks useless
    glob = _shares(groups, select(groups, scores, Budget(0.5, "params", 1, "global")))
    uni = _shares(groups, select(groups, scores, Budget(0.5, "params", 1, "uniform")))
    assert max(glob.values()) - min(glob.values()) > 0.5  # global takes it from the low-scored group
    assert max(uni.values()) - min(uni.values()) <= 1 / min(g.size for g in groups) + 1e-9


def test_modality_allocation_and_cap():
    model = tiny_model("CLIPModel")
    groups = prunable_groups(model, "head_dims,neurons")
    scores = {g.name: torch.rand(g.size) * (1000.0 if g.modality == "text" else 1.0) for g in groups}
    keep = select(groups, scores, Budget(0.4, "params", 1, "modality"))
    for mod in ("vision", "text"):
        sub = [g for g in groups if g.modality == mod]
        assert 0.4 <= achieved(sub, keep)["params_removed"] < 0.45
    capped = select(groups, scores, Budget(0.4, "params", 1, "global", max_ratio=0.5))
    assert max(_shares(groups, capped).values()) <= 0.5 and achieved(groups, capped)["params_removed"] >= 0.4
    with pytest.raises(ValueError, match="not reachable"):
        select(groups, scores, Budget(0.6, "params", 1, "global", max_ratio=0.5))
    for bad in (dict(allocation="layer"), dict(max_ratio=0.0), dict(max_ratio=1.5)):
        with pytest.raises(ValueError):
            Budget(0.4, **bad)


def test_normalisation_ignores_a_towers_scale():
    """Scores 1000x larger in one tower (another init scale) do not move the cut into the other tower."""
    model = tiny_model("CLIPModel")
    groups = prunable_groups(model, "neurons")
    base = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)}
    scaled = {n: s * (1000.0 if n.startswith("text") else 1.0) for n, s in base.items()}
    from vltrim.structure.select import normalize_scores

    b = Budget(0.5, "params", 8)
    assert select(groups, normalize_scores(groups, base), b) == select(groups, normalize_scores(groups, scaled), b)


def test_per_cost_ranking_is_a_knapsack_by_score_per_param():
    """'per_cost' removes the chunk with the least score per param it frees: a head-dim chunk that costs 24x a neuron
    chunk goes first only when its score is below 24x the neuron chunk's; 'score' compares scores alone."""
    from vltrim.structure.select import ranked

    model = tiny_model("BertModel")
    groups = prunable_groups(model, "head_dims,neurons")
    att = [g for g in groups if g.kind.value == "head_dims"]
    ratio = att[0].params_per_unit / next(g for g in groups if g.kind.value == "neurons").params_per_unit
    scores = {g.name: torch.full((g.size,), 2.0 if g in att else 1.0) for g in groups}  # head dims: 2x a neuron's score
    b_cost = Budget(0.2, "params", 1, "global", normalize="none", ranking="per_cost")
    keep = select(groups, ranked(groups, scores, b_cost), b_cost)
    assert ratio > 2 and all(g.name not in keep for g in groups if g not in att)  # per param, the head dims are cheaper
    b_score = Budget(0.2, "params", 1, "global", normalize="none", ranking="score")
    keep = select(groups, ranked(groups, scores, b_score), b_score)
    assert all(g.name not in keep for g in att)  # by score alone, neurons go first
    for metric in ("params", "macs"):  # the plan meets the target in either ranking
        b = Budget(0.3, metric, 8, "global", normalize="none", ranking="per_cost")
        rnd = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(3)) for g in groups}
        assert achieved(groups, select(groups, ranked(groups, rnd, b), b))[f"{metric}_removed"] >= 0.3


def test_group_normalisation_divides_by_the_group_mean():
    from vltrim.structure.select import normalize_scores

    groups = prunable_groups(tiny_model("BertModel"), "neurons")
    scores = {g.name: torch.arange(1.0, g.size + 1) * (i + 1) for i, g in enumerate(groups)}
    out = normalize_scores(groups, scores, "group")
    assert all(abs(float(v.mean()) - 1.0) < 1e-9 for v in out.values())
    assert torch.equal(out[groups[0].name], out[groups[1].name])  # a group's scale no longer matters
    assert torch.equal(normalize_scores(groups, scores, "none")[groups[1].name], scores[groups[1].name].double())


def test_modality_normalisation_keeps_one_towers_ranking_and_ignores_a_towers_scale():
    """'modality' (taylor's and upop's default, with 'per_cost'): one tower ranks as its raw scores per param; a tower
    whose scores are 1000x larger does not move the cut into the other tower."""
    from vltrim.structure.select import ranked

    b = Budget(0.5, "params", 8, "global", normalize="modality", ranking="per_cost")
    raw = Budget(0.5, "params", 8, "global", normalize="none", ranking="per_cost")
    bert = tiny_model("BertModel")
    groups = prunable_groups(bert, "head_dims,neurons")
    sc = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)}
    assert select(groups, ranked(groups, sc, b), b) == select(groups, ranked(groups, sc, raw), raw)
    clip = tiny_model("CLIPModel")
    groups = prunable_groups(clip, "head_dims,neurons")
    base = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)}
    scaled = {n: s * (1000.0 if n.startswith("text") else 1.0) for n, s in base.items()}
    assert select(groups, ranked(groups, base, b), b) == select(groups, ranked(groups, scaled, b), b)
    assert select(groups, ranked(groups, base, raw), raw) != select(groups, ranked(groups, scaled, raw), raw)


def test_ranking_settings_are_checked_before_any_work():
    teacher = tiny_model("BertModel")
    data = sentence_data(teacher)
    for bad, match in (
        (dict(ranking="per_cost", normalize="kind"), "per_cost"),
        (dict(normalize="layer"), "normalize"),
        (dict(ranking="cost"), "ranking"),
    ):
        with pytest.raises(ValueError, match=match):
            Budget(0.4, **bad)
        for method in ("taylor", "upop"):
            with pytest.raises(ValueError, match=match):
                vltrim.compress(
                    teacher,
                    method,
                    0.4,
                    task="sentence-embedding",
                    train_data=data,
                    retrain_steps=0,
                    latency_batch=0,
                    progress=False,
                    method_settings=bad,
                )


@pytest.mark.parametrize("method", ["l1", "random", "upop"])
def test_every_ranking_method_takes_allocation(method):
    teacher = tiny_model("BertModel")
    res = vltrim.compress(
        teacher,
        method,
        0.4,
        task="sentence-embedding",
        train_data=sentence_data(teacher),
        search_steps=6,
        retrain_steps=0,
        allocation="uniform",
        latency_batch=0,
        progress=False,
        batch_size=8,
        method_settings={"interval": 3} if method == "upop" else None,
    )
    shares = [1 - len(k) / res.plan.sizes[n] for n, k in res.plan.keep.items()]
    assert res.plan.target["allocation"] == "uniform" and len(res.plan.keep) == len(
        prunable_groups(teacher, "head_dims,neurons")
    )
    assert max(shares) - min(shares) <= 0.25  # tiny groups: one aligned chunk of 8 is a large share


# ---- learning curve in the report ----------------------------------------------------------------------------
def test_compress_curve_points():
    teacher = tiny_model("BertModel")
    data = sentence_data(teacher)
    res = vltrim.compress(
        teacher,
        "upop",
        0.3,
        task="sentence-embedding",
        train_data=data,
        eval_data=data,
        search_steps=4,
        retrain_steps=5,
        eval_every=2,
        latency_batch=0,
        progress=False,
        batch_size=8,
        method_settings={"interval": 2},
        evaluate_before=False,
    )
    curve = res.report["curve"]
    assert [(p["retrain_step"], p["total_steps"]) for p in curve] == [(0, 4), (2, 6), (4, 8), (5, 9)]
    assert curve[-1]["cosine_to_teacher"] == pytest.approx(res.report["after"]["cosine_to_teacher"])
    assert res.report["speed"] is None and all(math.isfinite(p["cosine_to_teacher"]) for p in curve)
    assert "before" not in res.report  # evaluate_before=False: the original is not evaluated again


@pytest.mark.parametrize("saliency", ["abs", "signed"])
def test_upop_saliency_sign(saliency):
    """'abs' prunes the smallest accumulated |dL/dm|; 'signed' the largest dL/dm (removing it lowers the loss most)."""
    from vltrim.methods.upop import _Search

    groups = prunable_groups(tiny_model("BertModel"), "neurons")
    state = _Search(groups, Budget(0.25, "params", 1, "uniform"), steps=1, interval=1, saliency=saliency)
    for g in groups:
        state.values[g.name].grad = torch.linspace(-1.0, 1.0, g.size)  # one step of mask gradients
    state(0)
    g = groups[0]
    pruned = sorted(set(range(g.size)) - set(state.keep[g.name]))
    n = len(pruned)
    if saliency == "signed":
        assert pruned == list(range(g.size - n, g.size))  # the most positive gradients
    else:
        assert pruned == sorted(sorted(range(g.size), key=lambda i: abs(-1.0 + 2.0 * i / (g.size - 1)))[:n])
    with pytest.raises(ValueError, match="saliency"):
        _Search(groups, Budget(0.25), steps=1, interval=1, saliency="both")
