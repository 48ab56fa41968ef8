"""Invariant 1: binary masks and the physically pruned model compute the same function (fp32, atol 1e-5)."""

from __future__ import annotations

import pytest
import torch
from conftest import max_diff, random_plan, run

import vltrim
from vltrim.arch import get_adapter, patches

ATOL = 1e-5
KIND_SETS = [
    {"heads"},
    {"head_dims"},
    {"neurons"},
    {"layers"},
    {"heads", "neurons", "layers"},
    {"head_dims", "neurons", "layers"},
]


@pytest.mark.parametrize("kinds", KIND_SETS, ids=lambda k: "+".join(sorted(k)))
def test_masked_equals_sliced(model, inputs, kinds):
    if not any(g.kind.value in kinds for g in get_adapter(model).groups(model)):
        # only a model whose head reads layers by index (DPT's neck) lacks a kind: it keeps its depth, and says so
        assert kinds == {"layers"}, f"{type(model).__name__} offers no {kinds} group"
        with pytest.raises(ValueError, match="no tower whose depth can change"):
            vltrim.plan(model, method="distill", target=0.5)
        return
    plan = random_plan(model, kinds, seed=len(kinds))
    with vltrim.masked(model, plan):
        masked_out = run(model, inputs)
    small = vltrim.apply_plan(model, plan)
    assert max_diff(masked_out, run(small, inputs)) < ATOL
    assert vltrim.count_params(small) < vltrim.count_params(model)


def test_pruning_changes_the_function(model, inputs):
    """Guards the test above against hooks that do nothing: a pruned model differs from the original."""
    plan = random_plan(model, {"head_dims", "neurons"})
    with vltrim.masked(model, plan):
        masked_out = run(model, inputs)
    assert max_diff(masked_out, run(model, inputs)) > 1e-4


def _hooks(model) -> dict[str, list]:
    return {n: [*m._forward_hooks.values(), *m._forward_pre_hooks.values()] for n, m in model.named_modules()}


def test_hooks_removed_restore_outputs_exactly(model, inputs):
    """Masks leave no hook and no class change behind (transformers' own output-capturing hooks, installed by the
    first forward, stay as they were)."""
    before, hooks, classes = run(model, inputs), _hooks(model), [type(m) for m in model.modules()]
    with vltrim.masked(model, random_plan(model, {"heads", "neurons", "layers"})):
        pass
    after = run(model, inputs)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert _hooks(model) == hooks and [type(m) for m in model.modules()] == classes


def test_all_ones_soft_masks_are_identity(model, inputs):
    groups = get_adapter(model).groups(model)
    values = {g.name: torch.ones(g.size) for g in groups if g.kind.value != "heads"}
    with vltrim.masked(model, values):
        out = run(model, inputs)
    assert max_diff(out, run(model, inputs)) < 1e-6


def test_head_dims_keep_original_scale(model, inputs):
    """Slicing head_dims must not rescale attention: the kept softmax scale is the original one."""
    plan = random_plan(model, {"head_dims"})
    small = vltrim.apply_plan(model, plan)
    adapter = get_adapter(small)
    for t_big, t_small in zip(adapter.towers(model), adapter.towers(small)):
        for lb, ls in zip(t_big.layers, t_small.layers):
            for site_big, site_small in zip(t_big.block(lb).sites, t_small.block(ls).sites):
                _assert_scale_kept(site_big.module, site_small.module)
                assert site_small.head_dim < site_big.head_dim


def _assert_scale_kept(big: torch.nn.Module, small: torch.nn.Module) -> None:
    """A cached scale is unchanged; an attention that recomputes its scale from its head size was given its family's
    forward patch (which keeps the original: masked == sliced checks the outputs)."""
    scale_attr = next((n for n in ("scale", "scaling") if hasattr(big, n)), None)
    if scale_attr is not None:
        assert getattr(small, scale_attr) == getattr(big, scale_attr)
    else:
        assert type(small) in patches._PATCHES.values(), type(small).__name__


def test_soft_masks_receive_gradients(model, inputs):
    """Methods that learn masks (UPop, L0) need d(loss)/d(mask): the hooks must be differentiable."""
    groups = [g for g in get_adapter(model).groups(model) if g.kind.value in ("head_dims", "neurons")]
    values = {g.name: torch.ones(g.size, requires_grad=True) for g in groups}
    with vltrim.masked(model, values):
        out = get_adapter(model).forward(model, inputs)
        loss = sum(t.float().pow(2).mean() for t in __import__("conftest").flat_outputs(out))
        loss.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in values.values())


def test_layer_removal_updates_config():
    from vltrim.zoo import tiny_model

    model = tiny_model("CLIPModel")
    plan = random_plan(model, {"layers"})
    small = vltrim.apply_plan(model, plan)
    assert small.config.vision_config.num_hidden_layers == len(plan.keep["vision.layers"])
    assert small.vision_model.config.num_hidden_layers == len(plan.keep["vision.layers"])
    assert model.config.vision_config.num_hidden_layers == 2  # the original is untouched
