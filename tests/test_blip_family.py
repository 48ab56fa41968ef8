"""BLIP beyond the generic tests: generation after slicing equals the masked model's, the fused qkv's bias follows its
rows (UPop's reference writes it to the wrong attribute, so its pruned bias stays random), cross-attention sites read
the other tower's tokens and width, dropped decoder layers renumber their cache slots, and the retrieval model exports
to ONNX with parity."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import random_plan

import vltrim
from vltrim.arch import get_adapter
from vltrim.structure.groups import UnitKind
from vltrim.zoo import tiny_model

HAS_ORT = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
ALL_KINDS = {"heads", "head_dims", "neurons", "layers"}


def _question(batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 96, (batch, 7), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(batch, 3, 32, 32)}


@pytest.mark.parametrize("name", ["BlipForConditionalGeneration", "BlipForQuestionAnswering"])
@pytest.mark.parametrize("kinds", [{"head_dims", "neurons"}, {"heads", "layers"}])
def test_generate_after_slicing_equals_the_masked_model(name, kinds):
    model = tiny_model(name)
    plan = random_plan(model, kinds, seed=1)
    inputs = _question()
    if name == "BlipForConditionalGeneration":
        inputs = {"pixel_values": inputs["pixel_values"]}
    small = vltrim.apply_plan(model, plan)
    with torch.no_grad():
        with vltrim.masked(model, plan):
            want = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6)
        got = small.generate(**inputs, max_new_tokens=6, min_new_tokens=6)
        beams = small.generate(**inputs, max_new_tokens=6, num_beams=3)
    assert torch.equal(got, want) and got.shape == (2, 7)
    assert beams.shape[0] == 2


def test_dropped_decoder_layers_renumber_their_cache_slots(tmp_path):
    model = tiny_model("BlipForConditionalGeneration")
    groups = get_adapter(model).groups(model)
    plan = vltrim.Plan.from_keep(type(model).__name__, groups, {"decoder.layers": [1]})
    small = vltrim.apply_plan(model, plan)
    layers = small.text_decoder.bert.encoder.layer
    assert [m.layer_idx for m in layers.modules() if hasattr(m, "layer_idx")] == [0, 0]  # self- and cross-attention
    assert small.config.text_config.num_hidden_layers == 1
    pixels = _question()["pixel_values"]
    with torch.no_grad():
        want = small.generate(pixel_values=pixels, max_new_tokens=5)
        got = vltrim.load(vltrim.save(small, tmp_path / "m")).generate(pixel_values=pixels, max_new_tokens=5)
    assert torch.equal(got, want)


def test_vqa_shared_text_config_keeps_its_layer_count_for_both_stacks():
    """The question encoder and the answer decoder are built from one text config: dropping decoder layers must not
    shrink the encoder a reload builds (the plan drops them after the build)."""
    model = tiny_model("BlipForQuestionAnswering")
    plan = vltrim.Plan.from_keep(type(model).__name__, get_adapter(model).groups(model), {"decoder.layers": [0]})
    small = vltrim.apply_plan(model, plan)
    assert len(small.text_encoder.encoder.layer) == 2 and len(small.text_decoder.bert.encoder.layer) == 1
    assert small.config.text_config.num_hidden_layers == 2


def test_fused_qkv_bias_follows_its_rows():
    model = tiny_model("BlipForImageTextRetrieval")
    adapter = get_adapter(model)
    group = next(g for g in adapter.groups(model) if g.name == "vision.layers.0.attn.head_dims")
    keep = [0, 2, 5, 7]
    before = model.vision_model.encoder.layers[0].self_attn.qkv
    plan = vltrim.Plan.from_keep(type(model).__name__, [group], {group.name: keep})
    after = vltrim.apply_plan(model, plan).vision_model.encoder.layers[0].self_attn.qkv
    hd, heads = 12, 4
    rows = [p * 48 + h * hd + c for p in range(3) for h in range(heads) for c in keep]
    assert torch.equal(after.bias, before.bias[rows]) and torch.equal(after.weight, before.weight[rows])
    assert before.bias.abs().min() > 0  # a zero bias would hide a bias left behind


@pytest.mark.parametrize(
    ("name", "cross"),
    [
        ("BlipModel", {}),
        ("BlipForImageTextRetrieval", {"text": (17, 48)}),
        ("BlipForConditionalGeneration", {"decoder": (17, 48)}),
        ("BlipForQuestionAnswering", {"text": (17, 64), "decoder": (24, 64)}),
    ],
)
def test_cross_attention_sites_read_the_other_towers_tokens_and_width(name, cross):
    """(kv tokens, kv width) of each tower's cross-attention: the image (16 patches + CLS, vision width) or, for the
    VQA answer decoder, the question (its reference length, text width). BlipModel's forward runs none."""
    model = tiny_model(name)
    adapter = get_adapter(model)
    found = {}
    for t in adapter.towers(model):
        for layer in t.layers:
            for site in t.block(layer).sites:
                if site.name == "crossattn":
                    found[t.name] = (site.kv_tokens, site.kv_hidden)
                    assert site.modality == "fusion"
    assert found == cross
    fusion = [g for g in adapter.groups(model) if g.modality == "fusion"]
    assert len(fusion) == 4 * len(cross)  # heads + head_dims per layer, 2 layers
    assert {g.kind for g in fusion} <= {UnitKind.HEADS, UnitKind.HEAD_DIMS}


def test_group_modalities_cover_vision_text_fusion_and_decoder():
    model = tiny_model("BlipForQuestionAnswering")
    assert {g.modality for g in vltrim.inspect(model)} == {"vision", "text", "fusion", "decoder"}


@pytest.mark.skipif(not HAS_ORT, reason="onnx, onnxscript and onnxruntime are needed (pip install 'vltrim[export]')")
@pytest.mark.slow
def test_pruned_retrieval_model_exports_with_one_batch_axis_and_parity(tmp_path):
    from vltrim import export as ex

    model = tiny_model("BlipForImageTextRetrieval")
    d = vltrim.save(vltrim.apply_plan(model, vltrim.plan(model, "l1", 0.5)), tmp_path / "m")
    r = ex.export(d, rounds=2)
    assert r["inputs"]["pixel_values"][0] == r["inputs"]["input_ids"][0] == "batch"
    assert r["parity"]["max_abs_diff"] < 1e-4 and "itm_score" in r["parity"]["by_output"]
