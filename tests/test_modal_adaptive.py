"""modal-adaptive (EfficientVLM): hard-concrete gates under one Lagrangian budget shared by every modality — the
expected cost, the multipliers' ascent, the budget reached, the deterministic plan, folding and chains."""

from __future__ import annotations

import pytest
import torch

import vltrim
from vltrim.arch import get_adapter, masks
from vltrim.data import SyntheticCaptions
from vltrim.methods import get_method
from vltrim.methods.common import prunable_groups
from vltrim.methods.modal_adaptive import INIT, LOG_ALPHA_RANGE, Gates, fold_gates
from vltrim.structure.groups import UnitKind
from vltrim.structure.select import Budget, achieved, select
from vltrim.tasks.retrieval import contrastive_loss
from vltrim.zoo import tiny_model


def _gates(model, metric: str = "params") -> Gates:
    return Gates(prunable_groups(model, "heads,neurons"), metric, dict(INIT), 2 / 3)


def _optimizer(g: Gates, lr: float = 0.05) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [
            {"params": g.log_alphas(), "lr": lr, "weight_decay": 0.0},
            {"params": [g.lambdas], "lr": lr, "weight_decay": 0.0, "maximize": True},
        ]
    )


@pytest.mark.parametrize("name", ["CLIPModel", "BlipForImageTextRetrieval"])
@pytest.mark.parametrize("metric", ["params", "macs"])
def test_saturated_gates_expect_the_exact_cost_of_their_plan(name, metric):
    model = tiny_model(name)
    g = _gates(model, metric)
    scores = {
        n: torch.rand(x.size, generator=torch.Generator().manual_seed(i))
        for i, (n, x) in enumerate((gr.name, gr) for gr in g.groups)
    }
    keep = select(g.groups, scores, Budget(0.45, metric, 8))
    with torch.no_grad():
        for gr in g.groups:
            la = torch.full((gr.size,), -60.0)
            la[keep.get(gr.name, list(range(gr.size)))] = 60.0
            g.gates[gr.name].log_alpha.copy_(la)
    assert g.expected_removed().item() == pytest.approx(achieved(g.groups, keep)[f"{metric}_removed"], abs=1e-6)
    again = select(g.groups, g.scores(), Budget(0.45, metric, 8))  # the deterministic plan cuts shut gates only
    for x in g.groups:
        assert set(range(x.size)) - set(again.get(x.name, range(x.size))) <= set(range(x.size)) - set(
            keep.get(x.name, range(x.size))
        )
    assert achieved(g.groups, again)[f"{metric}_removed"] >= 0.45


def test_cross_attention_heads_cost_their_key_value_width_and_image_tokens():
    model = tiny_model("BlipForImageTextRetrieval")
    g = _gates(model)
    fusion = next(x for x in g.groups if x.modality == "fusion" and x.kind == UnitKind.HEADS)
    text = next(x for x in g.groups if x.modality == "text" and x.kind == UnitKind.HEADS)
    assert g.unit_cost[fusion.name] != g.unit_cost[text.name]  # kv read the vision width, not the text width


def test_multipliers_rise_when_over_budget_by_hand():
    g = _gates(tiny_model("CLIPModel"))
    with torch.no_grad():
        for p in g.log_alphas():
            p.fill_(LOG_ALPHA_RANGE[1])  # every gate open: nothing removed, over any budget
    opt = _optimizer(g, lr=0.01)
    gap = 0.5 - g.expected_removed().item()
    assert gap > 0.49
    g.lagrangian(0.5).backward()
    assert g.lambdas.grad.tolist() == pytest.approx([gap, gap**2])  # d/dl1 = gap, d/dl2 = gap^2
    opt.step()
    assert g.lambdas.tolist() == pytest.approx([0.01, 0.01], rel=1e-3)  # Adam's first step: +lr along the gradient


def test_the_lagrangian_drives_the_expected_cost_to_the_target():
    torch.manual_seed(0)
    g = _gates(tiny_model("CLIPModel"))
    opt = _optimizer(g)
    for _ in range(600):
        opt.zero_grad()
        g.lagrangian(0.6).backward()
        opt.step()
        g.clamp_()
    assert g.expected_removed().item() == pytest.approx(0.6, abs=0.02)
    assert all(
        float(p.min()) >= LOG_ALPHA_RANGE[0] - 1e-6 and float(p.max()) <= LOG_ALPHA_RANGE[1] + 1e-6
        for p in g.log_alphas()
    )


def test_fold_makes_the_weights_compute_the_masked_model():
    model = tiny_model("BlipForImageTextRetrieval")
    adapter = get_adapter(model)
    groups = prunable_groups(model, "heads,neurons")
    values = {x.name: torch.rand(x.size, generator=torch.Generator().manual_seed(i)) for i, x in enumerate(groups)}
    batch = adapter.reference_inputs(model, 2)
    with torch.no_grad():
        handles = masks.attach(adapter, model, values)
        want = adapter.forward(model, batch)
        handles.remove()
        for x in groups:
            adapter.fold(model, x, values[x.name])
        got = adapter.forward(model, batch)
    torch.testing.assert_close(_tensors(got), _tensors(want), atol=1e-5, rtol=1e-5)


def _tensors(out) -> torch.Tensor:
    """Every tensor a model output holds, flattened (its logits, embeddings and last states)."""
    return torch.cat([v.flatten() for v in out.values() if torch.is_tensor(v)])


def _search(model, target: float = 0.5, steps: int = 12, **kw):
    return get_method("modal-adaptive").run(
        model,
        target,
        train_data=SyntheticCaptions("train", 96),
        loss_fn=contrastive_loss,
        steps=steps,
        lr=1e-3,
        batch_size=8,
        gate_lr=0.1,
        lagrangian_lr=0.1,
        progress=False,
        **kw,
    )


def test_the_plan_meets_its_target_within_one_step_and_masked_equals_sliced():
    model = tiny_model("CLIPModel")
    res = _search(model)
    got = res.plan.achieved["params_removed"]
    groups = prunable_groups(model, "heads,neurons")
    step = max(8 * achieved([x], {x.name: list(range(x.size - 1))})["prunable_params"] for x in groups)
    assert 0.5 <= got and (got - 0.5) * res.plan.achieved["prunable_params"] <= step
    assert {"expected_removed", "target_now", "lambda_1", "lambda_2"} <= set(res.artifacts["search_log"][-1])
    small = vltrim.apply_plan(res.model, res.plan)
    adapter = get_adapter(model)
    batch = adapter.reference_inputs(model, 2)
    with torch.no_grad(), vltrim.masked(res.model, res.plan):
        want = adapter.forward(res.model, batch)
    got_out = adapter.forward(small, batch)
    torch.testing.assert_close(_tensors(got_out), _tensors(want), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), tiny_model("CLIPModel").parameters()))


def test_searched_weights_hold_the_kept_gate_values():
    model = tiny_model("CLIPModel")
    groups = prunable_groups(model, "heads,neurons")
    g = Gates(groups, "params", dict(INIT), 2 / 3)
    fc2 = get_adapter(model).locate(model, next(x.name for x in groups if x.kind == UnitKind.NEURONS))[2].fc2
    before = fc2.weight.detach().clone()
    fold_gates(model, groups, g)
    # FFN log-alpha 0: deterministic gate 0.5 * 1.2 - 0.1 = 0.5 on every neuron
    torch.testing.assert_close(fc2.weight, before * 0.5)


def test_refusals_name_the_option():
    model = tiny_model("CLIPModel")
    with pytest.raises(ValueError, match="allocation must be 'global'"):
        _search(model, allocation="uniform")
    with pytest.raises(ValueError, match="units must be 'heads,neurons'"):
        _search(model, units="head_dims,neurons")
    with pytest.raises(ValueError, match="loss_fn"):
        get_method("modal-adaptive").run(model, 0.5, train_data=SyntheticCaptions("train", 16), progress=False)


@pytest.mark.slow
def test_chain_distill_then_modal_adaptive_reloads_bit_exactly(tmp_path):
    res = vltrim.compress(
        tiny_model("CLIPModel"),
        method=[("distill", {"layers": 1}), ("modal-adaptive", {"target": 0.4, "gate_lr": 0.1, "lagrangian_lr": 0.1})],
        target=0.4,
        task="retrieval",
        train_data=SyntheticCaptions("train", 64),
        search_steps=4,
        retrain_steps=2,
        batch_size=8,
        latency_batch=0,
        progress=False,
    )
    assert [p.method for p in res.plans] == ["distill", "modal-adaptive"]
    vltrim.save(res, tmp_path / "m")
    back = vltrim.load(tmp_path / "m")
    a, b = res.model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.report["modality_split"]["params"]["vision"]["removed"] > 0
    log = res.report["stages"][1]["search_log"]  # the search's trace reaches the report: one row per step
    assert [r["step"] for r in log] == [1, 2, 3, 4] and log[-1]["target_now"] == pytest.approx(0.4)


def test_layers_as_the_cli_writes_them():
    from vltrim.methods.distill import parse_layers

    assert parse_layers("vision:6,text:3") == {"vision": 6, "text": 3} and parse_layers("2") == 2
    with pytest.raises(ValueError, match="not TOWER:COUNT"):
        parse_layers("vision:six")


@pytest.mark.slow
def test_cli_chain_distill_then_modal_adaptive(tmp_path):
    import json

    from typer.testing import CliRunner

    from vltrim.cli import app

    args = ["compress", "tiny:CLIPModel", "--out", str(tmp_path / "m"), "--data", "builtin", "--search-steps", "4"]
    args += ["--retrain-steps", "1", "--batch-size", "8", "--latency-batch", "0", "--method", "distill"]
    args += ["--set", "layers=vision:1,text:1", "--then", "modal-adaptive", "--target", "0.5"]
    r = CliRunner(env={"COLUMNS": "2000"}).invoke(app, args)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["method"] == ["distill", "modal-adaptive"] and set(report["modality_split"]["params"]) == {
        "vision",
        "text",
    }


def test_kill_and_resume_restore_gates_and_multipliers(tmp_path):
    class Kill(Exception):
        pass

    calls = {"n": 0}

    def killing(model, batch):
        calls["n"] += 1
        if calls["n"] > 10:
            raise Kill
        return contrastive_loss(model, batch)

    model, opts = tiny_model("CLIPModel"), dict(checkpoint_every=4)
    full = _search(model, output_dir=tmp_path / "a", **opts)
    with pytest.raises(Kill):
        get_method("modal-adaptive").run(
            model,
            0.5,
            train_data=SyntheticCaptions("train", 96),
            loss_fn=killing,
            steps=12,
            lr=1e-3,
            batch_size=8,
            gate_lr=0.1,
            lagrangian_lr=0.1,
            progress=False,
            output_dir=tmp_path / "b",
            **opts,
        )
    resumed = _search(model, output_dir=tmp_path / "b", resume=True, **opts)
    assert resumed.plan.keep == full.plan.keep
    a, b = full.artifacts["search_log"], resumed.artifacts["search_log"]
    assert a == b
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_gates_draw_once_per_step_when_a_task_calls_the_towers_itself():
    """BLIP's ITM loss runs the text encoder twice (ITC, then ITM) and never calls model.forward: both read the step's
    one draw (as the reference), the next step draws afresh; generic gates (per_forward) draw in every tower forward."""
    from vltrim.data.scenes import SceneCaptions
    from vltrim.methods.modal_adaptive import _Search
    from vltrim.tasks.itm import itm_loss

    model = tiny_model("BlipForImageTextRetrieval").train()
    g = _gates(model)
    name = next(x.name for x in g.groups if x.modality == "text" and x.kind == UnitKind.NEURONS)
    seen = []
    handles = masks.attach(get_adapter(model), model, g.gates)
    hook = model.text_encoder.encoder.layer[0].register_forward_pre_hook(
        lambda *_: seen.append(g.gates[name].values().clone())
    )
    data = SceneCaptions("val", 4, image_size=32, max_length=24)
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    loss = _Search(g, 0.5, 2).loss(itm_loss)
    try:
        loss(model, batch)
        assert len(seen) >= 2 and all(torch.equal(seen[0], v) for v in seen)
        first, seen[:] = seen[0], []
        loss(model, batch)
        assert not torch.equal(first, seen[0])
        g.gates[name].per_forward = True  # a generic gate: every tower forward draws
        seen[:] = []
        itm_loss(model, batch)
        assert not torch.equal(seen[0], seen[1])
    finally:
        handles.remove()
        hook.remove()
