"""vltrim.compress: search -> subnet -> retrain with KD -> report, for training-based and data-free methods."""

from __future__ import annotations

import pytest
import torch

import vltrim
from vltrim.data import SyntheticCaptions
from vltrim.zoo import tiny_model

FAST = dict(batch_size=32, latency_batch=2, progress=False)


@pytest.mark.slow
def test_upop_compress_end_to_end():
    model = tiny_model("CLIPModel")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = vltrim.compress(
        model,
        "upop",
        target=0.4,
        train_data=SyntheticCaptions("train", 96),
        eval_data=SyntheticCaptions("val", 48),
        search_steps=8,
        retrain_steps=4,
        **FAST,
    )
    assert vltrim.count_params(res.model) == res.plan.achieved["model_params_after"]
    assert {"before", "after_search", "after", "plan", "speed"} <= set(res.report)
    assert res.report["speed"]["params_ratio"] > 1.3 and res.plan.method == "upop"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched


def test_data_free_compress_without_retraining():
    res = vltrim.compress(tiny_model("CLIPModel"), "l1", target=0.3, retrain_steps=0, **FAST)
    assert res.plan.achieved["params_removed"] >= 0.3 and "before" not in res.report


def test_compress_errors():
    with pytest.raises(ValueError, match="train_data"):
        vltrim.compress(tiny_model("CLIPModel"), "upop", target=0.3, **FAST)
    with pytest.raises(ValueError, match="unknown task"):
        vltrim.compress(tiny_model("CLIPModel"), "l1", target=0.3, task="nope", retrain_steps=0, **FAST)
