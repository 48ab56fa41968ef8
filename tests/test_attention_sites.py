"""Attention sites (fused qkv, grouped-query, cross-attention), forward patches and mask parametrisations, on the
test fusion family (tests/tiny_fusion_family.py)."""

from __future__ import annotations

import pytest
import tiny_fusion_family as tf
import torch
from conftest import max_diff, run

import vltrim
from vltrim.arch import get_adapter, patches
from vltrim.arch.masks import BatchedMask, HardConcreteGate, ScalarMask, attach
from vltrim.report import layer_widths
from vltrim.zoo import tiny_model


@pytest.fixture
def fusion():
    return tiny_model(tf.NAME)


def _inputs(model, n: int = 2) -> dict:
    return get_adapter(model).reference_inputs(model, batch_size=n)


def _groups(model) -> dict:
    return {g.name: g for g in get_adapter(model).groups(model)}


def _plan(model, keep: dict[str, list[int]]) -> vltrim.Plan:
    return vltrim.Plan.from_keep(tf.NAME, list(_groups(model).values()), keep, method="test")


def test_sites_give_their_groups(fusion):
    g = _groups(fusion)
    cfg = fusion.config
    assert g["text.layers.0.attn.heads"].size == cfg.text_kv_heads  # a unit: one kv head with its query heads
    assert g["text.layers.0.attn.heads"].unit_width == 2 * (cfg.text_hidden // cfg.text_heads)
    assert g["text.layers.0.crossattn.heads"].size == cfg.text_heads
    assert g["text.layers.0.crossattn.heads"].modality == "fusion"
    assert g["vision.layers.1.attn.head_dims"].size == cfg.vision_hidden // cfg.vision_heads
    lins = get_adapter(fusion).linears(fusion)
    assert "vision.layers.0.attn.qkv" in lins and "vision.layers.0.attn.q" not in lins
    assert get_adapter(fusion).group_linears(fusion, "vision.layers.0.attn.heads") == [
        "vision.layers.0.attn.qkv",
        "vision.layers.0.attn.o",
    ]


def test_cross_attention_costs_use_the_image_tokens_and_width(fusion):
    """Keys and values of a cross-attention read the image tokens at the vision width: a head's exact MACs say so."""
    c = fusion.config
    g = _groups(fusion)["text.layers.0.crossattn.heads"]
    hd, t, i = c.text_hidden // c.text_heads, c.max_position_embeddings, (c.image_size // c.patch_size) ** 2
    want = hd * (2 * t * c.text_hidden + 2 * i * c.vision_hidden + 2 * t * i)
    assert g.macs_per_unit == want
    assert g.params_per_unit == hd * (2 * c.text_hidden + 1 + 2 * (c.vision_hidden + 1))


def test_gqa_slicing_keeps_query_heads_per_kv_head(fusion):
    small = vltrim.apply_plan(fusion, _plan(fusion, {"text.layers.0.attn.heads": [1]}))
    a = small.text_blocks[0].self_attention
    assert (a.num_heads, a.num_kv_heads) == (2, 1)
    assert a.q.out_features == 2 * a.head_dim and a.k.out_features == a.head_dim
    with vltrim.masked(fusion, _plan(fusion, {"text.layers.0.attn.heads": [1]})):
        want = run(fusion, _inputs(fusion))
    assert max_diff(run(small, _inputs(small)), want) < 1e-5


def test_fused_attention_gets_its_forward_patch_and_load_replays_it(fusion, tmp_path):
    plan = _plan(fusion, {"vision.layers.0.attn.heads": [0, 2], "vision.layers.1.attn.head_dims": [1, 3, 4]})
    small = vltrim.apply_plan(fusion, plan)
    assert patches.patched_modules(small) == {
        "vision_blocks.0.attention": "SlicedFusedAttention",
        "vision_blocks.1.attention": "SlicedFusedAttention",
    }
    assert patches.patched_modules(fusion) == {}  # the source model is untouched
    vltrim.save(small, tmp_path / "m")
    back = vltrim.load(tmp_path / "m")
    assert patches.patched_modules(back) == patches.patched_modules(small)
    inputs = _inputs(fusion)
    assert max_diff(run(back, inputs), run(small, inputs)) == 0


def test_without_the_patch_the_sliced_fused_attention_breaks(fusion, monkeypatch):
    """The patch is what makes the BLIP-style forward run at its new width (so the test above tests something)."""
    monkeypatch.setattr(patches, "_PATCHES", {})
    small = vltrim.apply_plan(fusion, _plan(fusion, {"vision.layers.0.attn.heads": [0, 2]}))
    with pytest.raises(RuntimeError):
        run(small, _inputs(small))


def test_a_patch_may_only_define_forward():
    with pytest.raises(TypeError, match="only forward"):

        @patches.forward_patch(tf.FusedAttention)
        class Bad(tf.FusedAttention):
            extra = 1

            def forward(self, x):
                return x

    with pytest.raises(TypeError, match="must subclass"):
        patches.forward_patch(tf.FusedAttention)(type("Other", (torch.nn.Module,), {}))


def test_layer_widths_name_each_site(fusion):
    small = vltrim.apply_plan(fusion, _plan(fusion, {"text.layers.1.crossattn.heads": [0, 3]}))
    row = layer_widths(small, vltrim.plans_of(small))["text"][1]
    assert row["crossattn.heads"] == [2, 4] and row["heads"] == [2, 2]


# ---- mask parametrisations ------------------------------------------------------------------------------------
def test_hard_concrete_gates_sample_in_training_and_are_deterministic_in_eval(fusion):
    name = "text.layers.0.mlp.neurons"
    gate = HardConcreteGate(_groups(fusion)[name].size, init=0.0)
    inputs = _inputs(fusion)
    handles = attach(get_adapter(fusion), fusion, {name: gate})
    try:
        fusion.train()
        torch.manual_seed(0)
        a = fusion(**inputs).last_hidden_state
        draw_a = gate.values().clone()
        b = fusion(**inputs).last_hidden_state
        assert not torch.equal(draw_a, gate.values()) and not torch.equal(a, b)  # a fresh gate per forward
        a.sum().backward()
        assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0
        fusion.eval()
        with torch.no_grad():
            e1, e2 = fusion(**inputs).last_hidden_state, fusion(**inputs).last_hidden_state
        assert torch.equal(e1, e2)
    finally:
        handles.remove()
    assert 0 < float(gate.prob_open().mean().detach()) < 1


def test_closed_gates_compute_the_sliced_model(fusion):
    """Gates with very low log-alpha on units are exactly 0 in eval: the masked model is the sliced one."""
    fusion.eval()
    drop = {"text.layers.1.crossattn.heads": [1, 2], "vision.layers.0.mlp.neurons": list(range(0, 40, 2))}
    gates = {}
    for name, units in drop.items():
        gates[name] = HardConcreteGate(_groups(fusion)[name].size, init=5.0)
        with torch.no_grad():
            gates[name].log_alpha[units] = -20.0
    keep = {n: [u for u in range(_groups(fusion)[n].size) if u not in units] for n, units in drop.items()}
    small = vltrim.apply_plan(fusion, _plan(fusion, keep))
    with vltrim.masked(fusion, gates):
        got = run(fusion, _inputs(fusion))
    assert max_diff(got, run(small, _inputs(small))) < 1e-5


def test_batched_masks_are_k_ablations_in_one_forward(fusion):
    name = "vision.layers.1.attn.heads"
    rows = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    one = _inputs(fusion, 1)
    separate = []
    for r in rows:
        with vltrim.masked(fusion, {name: ScalarMask(r)}):
            separate.append(run(fusion, one)[0])
    both = {k: torch.cat([v, v]) for k, v in one.items()}
    with vltrim.masked(fusion, {name: BatchedMask(rows)}):
        batched = run(fusion, both)[0]
    assert max_diff([batched], [torch.cat(separate)]) < 1e-5


def test_every_family_declares_inputs_known_by_modality(model):
    from vltrim.arch.inputs import MODEL_INPUTS

    names = get_adapter(model).input_names(model)
    assert names and set(names) <= set(MODEL_INPUTS)
