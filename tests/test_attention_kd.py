"""Attention-map distillation in compress (kd_attention): the loss term equals a by-hand MSE of HF's own eager attention
probabilities (mapped across dropped layers, head-averaged across pruned heads), the models' attention implementation
is restored, and compress / the CLI run with it."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
import torch.nn.functional as F
from test_quality_levers import sentence_data
from typer.testing import CliRunner

import vltrim
from vltrim.cli import app
from vltrim.data import SyntheticCaptions
from vltrim.run.runner import task_loss
from vltrim.tasks import get_task
from vltrim.train.distill import attention_maps
from vltrim.zoo import tiny_model

compress_mod = importlib.import_module("vltrim.tasks.loss")  # where compress's loss (task_loss) lives
FAST = dict(batch_size=16, latency_batch=0, progress=False)


def hf_attentions(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, ...]:
    """Attention probabilities per layer as transformers itself returns them (eager attention, output_attentions)."""
    m = copy.deepcopy(model)
    m.set_attn_implementation("eager")
    with torch.no_grad():
        return m(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True
        ).attentions


@pytest.mark.parametrize("prune_heads", [False, True])
def test_attention_kd_equals_a_by_hand_mse_on_tiny_bert(prune_heads):
    teacher = tiny_model("BertModel").eval()  # 2 layers, 4 heads
    student = vltrim.student(teacher, layers=1)  # keeps teacher layer 1
    if prune_heads:
        group = next(g for g in vltrim.inspect(student) if g.kind.value == "heads")
        student = vltrim.apply_plan(
            student, vltrim.Plan.from_keep("BertModel", [group], {group.name: [0, 2]}, method="test")
        )
    student = student.eval()
    with torch.no_grad():  # move the student off the teacher's weights so the term is not 0
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    data = sentence_data(teacher)
    batch = data.collate([data[i] for i in range(4)])
    impl = (teacher.config._attn_implementation, student.config._attn_implementation)
    loss = task_loss(get_task("sentence-embedding"), teacher, kd_weight=0.0, task_weight=0.0, kd_attention=1.0)(
        student, batch
    )
    s, t = hf_attentions(student, batch), hf_attentions(teacher, batch)
    assert s[0].shape[1] == (2 if prune_heads else 4)
    a, b = (s[0].mean(1, keepdim=True), t[1].mean(1, keepdim=True)) if prune_heads else (s[0], t[1])
    want = F.mse_loss(a, b)
    assert want > 0 and loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert (teacher.config._attn_implementation, student.config._attn_implementation) == impl  # restored
    loss.backward()
    assert student.encoder.layer[0].attention.self.query.weight.grad is not None  # the term trains the student


def test_attention_maps_restore_the_implementation_even_on_error():
    model = tiny_model("CLIPModel")
    impl = model.config.vision_config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"):
        with attention_maps(model) as maps:
            assert model.config.vision_config._attn_implementation == "eager"
            model(**vltrim.get_adapter(model).reference_inputs(model, 2))
            assert [len(v) for v in maps.values()] == [2, 2]
            raise RuntimeError("boom")
    assert model.config.vision_config._attn_implementation == impl


@pytest.mark.parametrize("name", ["DistilBertModel", "MPNetModel", "ModernBertModel", "Dinov2Model"])
def test_attention_maps_of_every_encoder_family(name):
    """Every layer yields its probabilities, MPNet's too (its attention returns them only when asked)."""
    model = tiny_model(name).eval()
    tower = vltrim.get_adapter(model).towers(model)[0]
    with torch.no_grad(), attention_maps(model) as maps:
        model(**vltrim.get_adapter(model).reference_inputs(model, 2))
    probs = maps[tower.name]
    assert len(probs) == len(tower.layers)
    for p in probs:
        assert p.dim() == 4 and p.shape[0] == 2
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))


def test_compress_distill_with_kd_attention(monkeypatch):
    calls = []
    real = compress_mod.attention_kd
    monkeypatch.setattr(compress_mod, "attention_kd", lambda *a: calls.append(sorted(a[2])) or real(*a))
    model = tiny_model("CLIPModel")
    impl = model.config.text_config._attn_implementation
    res = vltrim.compress(
        model,
        "distill",
        train_data=SyntheticCaptions("train", 32),
        retrain_steps=2,
        kd_attention=1.0,
        method_settings={"layers": 1},
        **FAST,
    )
    assert calls == [["text", "vision"]] * 2  # every retraining step, both towers
    assert model.config.text_config._attn_implementation == impl == res.model.config.text_config._attn_implementation
    with pytest.raises(ValueError, match="kd_attention"):
        vltrim.compress(model, "distill", kd_attention=-1.0, retrain_steps=0, **FAST)


def test_cli_kd_attention(tmp_path, monkeypatch):
    calls = []
    real = compress_mod.attention_kd
    monkeypatch.setattr(compress_mod, "attention_kd", lambda *a: calls.append(1) or real(*a))
    r = CliRunner().invoke(
        app,
        [
            "compress",
            "tiny:CLIPModel",
            "--out",
            str(tmp_path / "m"),
            "--method",
            "distill",
            "--set",
            "layers=1",
            "--data",
            "builtin",
            "--retrain-steps",
            "1",
            "--batch-size",
            "16",
            "--latency-batch",
            "0",
            "--kd-attention",
            "0.5",
        ],
    )
    assert r.exit_code == 0, r.output
    assert calls == [1]
    r = CliRunner().invoke(app, ["compress", "tiny:CLIPModel", "--out", str(tmp_path / "x"), "--kd-attention", "-1"])
    assert r.exit_code == 2 and "--kd-attention" in r.output
