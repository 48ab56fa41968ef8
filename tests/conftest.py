"""Shared helpers: tiny models of every supported class, output flattening, random plans."""

from __future__ import annotations

import random

import pytest
import tiny_fusion_family  # fused qkv, GQA and cross-attention sites: it joins every generic test below
import tiny_tower_family  # a family defined in one test file: it joins every generic test below
import torch

import vltrim
from vltrim.arch import get_adapter
from vltrim.zoo import TINY_CLASSES, tiny_model

torch.set_num_threads(min(2, torch.get_num_threads()))


def flat_outputs(out) -> list[torch.Tensor]:
    """Every floating tensor in a (nested) model output, in a fixed order."""
    if torch.is_tensor(out):
        return [out] if out.is_floating_point() else []
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat_outputs(o)]
    return []


def run(model, inputs) -> list[torch.Tensor]:
    """Every output of the family's forward (a VQA model's includes its answer decoder's logits)."""
    with torch.no_grad():
        return flat_outputs(get_adapter(model).forward(model, inputs))


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b) and len(a) > 0
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def random_plan(model, kinds: set[str], seed: int = 0) -> vltrim.Plan:
    """Keep a random non-empty, unaligned subset of every group of the given kinds."""
    rng = random.Random(seed)
    groups = [g for g in get_adapter(model).groups(model) if g.kind.value in kinds]
    keep = {g.name: rng.sample(range(g.size), rng.randint(1, g.size - 1)) for g in groups if g.size > 1}
    return vltrim.Plan.from_keep(type(model).__name__, groups, keep, method="test")


@pytest.fixture(params=[*TINY_CLASSES, tiny_tower_family.NAME, tiny_fusion_family.NAME])
def model_name(request) -> str:
    return request.param


@pytest.fixture
def model(model_name):
    return tiny_model(model_name)


@pytest.fixture
def inputs(model):
    return get_adapter(model).reference_inputs(model, batch_size=2)


def tamper_weights(file, how: str) -> str:
    """Edit a saved model.safetensors: drop an fc1 weight, add an extra tensor, or change its shape;
    returns the name of the tensor concerned."""
    from safetensors.torch import load_file, save_file

    w = load_file(file)
    key = next(k for k in w if k.endswith("mlp.fc1.weight"))
    if how == "drop":
        del w[key]
    elif how == "extra":
        key, w["surprise.weight"] = "surprise.weight", torch.zeros(2)
    else:
        w[key] = torch.zeros(w[key].shape[0] + 1, w[key].shape[1])
    save_file(w, file)
    return key
