"""Every method on BLIP's three task models (one ranking over vision, text, fusion and decoder): mope's whole-model
probes score with the task's own metric, compressed models agree masked == sliced, and every report carries the
per-modality split of what was removed."""

from __future__ import annotations

import json

import pytest
import torch

import vltrim
from vltrim.arch import get_adapter
from vltrim.arch.apply import masked
from vltrim.data.scenes import SceneCaptions, SceneQA
from vltrim.methods import _METHODS
from vltrim.methods.common import plan_from_keep
from vltrim.methods.mope import make_probe, naive_errors, width_ablations
from vltrim.structure.select import modality_split
from vltrim.tasks.itm import evaluate_itm
from vltrim.tasks.vqa import vqa_nll
from vltrim.zoo import tiny_model

CASES = {
    "itm-retrieval": ("BlipForImageTextRetrieval", lambda n: SceneCaptions("val", n, image_size=32, max_length=24)),
    "vqa": ("BlipForQuestionAnswering", lambda n: SceneQA("val", n, image_size=32, max_length=24)),
    "captioning": ("BlipForConditionalGeneration", lambda n: SceneCaptions("val", n, image_size=32, max_length=24)),
}
FAST = dict(batch_size=8, latency_batch=0, progress=False)


def _case(task: str, n: int = 12):
    name, make = CASES[task]
    return tiny_model(name), make(n)


def _outputs(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    out = get_adapter(model).forward(model, batch)
    return torch.cat([v.flatten() for k, v in out.items() if torch.is_tensor(v) and k.endswith(("logits", "_embeds"))])


def _batch(data, n: int = 4) -> dict:
    return torch.utils.data.default_collate([data[i] for i in range(n)])


# ---- mope: the task's own metric on the whole model ---------------------------------------------------------------
def test_mope_itm_probe_is_the_reranked_recall():
    model, data = _case("itm-retrieval")
    probe = make_probe("itm-retrieval", data, batch_size=5)
    assert probe.joint is not None and probe.joint(model) == evaluate_itm(model, data, batch_size=5)["mean_R@1"]


def test_mope_likelihood_probe_is_minus_the_mean_gold_loss():
    model, data = _case("vqa")
    probe = make_probe("vqa", data, batch_size=12)  # one chunk: the mean over items is the batch loss
    assert probe.joint(model) == pytest.approx(-vqa_nll(model, _batch(data, 12)).item(), rel=1e-6)


def test_mope_errors_are_the_metric_drop_of_each_module():
    model, data = _case("captioning")
    probe = make_probe("captioning", data)
    adapter = get_adapter(model)
    groups = [g for g in adapter.groups(model) if g.modality == "fusion" and g.kind.value == "heads"]
    ablations = width_ablations(model, groups, None, 8)
    errors = naive_errors(model, probe, ablations)
    base, a = probe.joint(model), ablations[0]
    v = torch.ones(groups[0].size)
    v[list(a.units)] = 0
    with masked(model, {a.group: v}):
        assert errors[0] == pytest.approx(base - probe.joint(model))
    assert len(set(errors)) > 1  # the likelihood tells the fusion heads apart even on an untrained model


@pytest.mark.parametrize("task", sorted(CASES))
def test_mope_plans_every_blip_task_and_fast_falls_back_to_the_whole_model(task):
    model, data = _case(task)
    plans = [vltrim.plan(model, method="mope", target=0.4, task=task, calib_data=data, fast=f) for f in (True, False)]
    assert plans[0].keep == plans[1].keep and plans[0].achieved["params_removed"] >= 0.4
    cut = {
        g.modality for g in get_adapter(model).groups(model) if len(plans[0].keep.get(g.name, range(g.size))) < g.size
    }
    assert len(cut) >= 2  # one global ranking over the towers


def test_mope_names_a_missing_field_and_the_tasks_it_scores():
    model, data = _case("captioning")
    with pytest.raises(ValueError, match="calib_data for vqa needs 'decoder_input_ids'"):
        vltrim.plan(tiny_model("BlipForQuestionAnswering"), method="mope", target=0.3, task="vqa", calib_data=data)
    with pytest.raises(ValueError, match="itm-retrieval"):
        make_probe("nope", data)


# ---- every method, compressed: masked == sliced, and the report's split ------------------------------------------
@pytest.mark.parametrize("task", sorted(CASES))
@pytest.mark.parametrize("method", sorted(_METHODS))
def test_every_method_compresses_every_blip_task(task, method):
    model, data = _case(task, 16)
    steps = dict(search_steps=2, retrain_steps=1) if method in ("upop", "distill") else dict(retrain_steps=1)
    settings = {"layers": 1} if method == "distill" else {}
    res = vltrim.compress(
        model, method, target=0.4, task=task, train_data=data, method_settings=settings, **steps, **FAST
    )
    nonzero = [sum(int(p.count_nonzero()) for p in m.parameters()) for m in (model, res.model)]
    assert res.plan.method == method and nonzero[1] < nonzero[0]
    split = res.report["modality_split"]
    if res.plan.factorize or res.plan.sparsify:
        assert split is None
    else:
        assert set(split["params"]) == {g.modality for g in get_adapter(model).groups(model)}
        assert any(s["removed"] > 0 for s in split["params"].values())


def test_modality_split_counts_each_modality_and_kind():
    model = tiny_model("BlipForQuestionAnswering")
    groups = get_adapter(model).groups(model)
    fusion_heads = [g for g in groups if g.modality == "fusion" and g.kind.value == "heads"]
    keep = {g.name: list(range(g.size // 2)) for g in fusion_heads}
    small = vltrim.apply_plan(model, plan_from_keep(model, groups, keep, {}, "manual", {}))
    split = modality_split(groups, get_adapter(small).groups(small))["params"]
    assert split["fusion"] == {"removed": 0.5, "attention": 0.5}
    assert all(split[m]["removed"] == 0 for m in ("vision", "text", "decoder"))
    assert modality_split(groups, groups)["macs"]["vision"] == {"removed": 0.0, "attention": 0.0, "ffn": 0.0}


# ---- from the shell ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(CASES))
def test_cli_compresses_each_blip_task_on_builtin_data(task, tmp_path):
    from typer.testing import CliRunner

    from vltrim.cli import app

    name, _ = CASES[task]
    args = ["compress", f"tiny:{name}", "--task", task, "--data", "builtin", "--method", "upop", "--target", "0.5"]
    args += ["--search-steps", "2", "--retrain-steps", "1", "--batch-size", "4", "--latency-batch", "0"]
    r = CliRunner(env={"COLUMNS": "2000"}).invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["task"] == task and report["modality_split"]["params"]["vision"]["removed"] >= 0
    small = vltrim.load(tmp_path / "out")
    assert type(small).__name__ == name and vltrim.count_params(small) == report["params"]
