"""The training loop: deterministic batches, JSONL logs, checkpoints, and kill + resume -> the same plan."""

from __future__ import annotations

import json

import pytest
import torch

from vltrim.data import SyntheticCaptions
from vltrim.methods import get_method
from vltrim.tasks import contrastive_loss
from vltrim.train import batch_indices, train
from vltrim.train.loop import latest_checkpoint
from vltrim.zoo import tiny_model

SEARCH = dict(steps=12, interval=4, lr=1e-3, batch_size=16, progress=False, checkpoint_every=4)


def test_batch_order_is_a_function_of_the_step():
    assert batch_indices(100, 32, 0, 5) == batch_indices(100, 32, 0, 5)
    epoch = sorted(i for b in range(3) for i in batch_indices(100, 32, 0, b))
    assert len(set(epoch)) == 96  # three full batches of one epoch never repeat an item
    assert batch_indices(100, 32, 0, 0) != batch_indices(100, 32, 0, 3)  # next epoch, new order


class Kill(Exception):
    pass


def killing(after_calls: int):
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise Kill()
        return contrastive_loss(model, batch)

    return loss


def test_kill_and_resume_reach_the_same_plan_and_weights(tmp_path):
    model, data = tiny_model("CLIPModel"), SyntheticCaptions("train", 96)
    upop = get_method("upop")
    full = upop.run(model, 0.4, train_data=data, output_dir=tmp_path / "a", **SEARCH)
    with pytest.raises(Kill):
        upop.run(model, 0.4, train_data=data, loss_fn=killing(10), output_dir=tmp_path / "b", **SEARCH)
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-8"
    resumed = upop.run(model, 0.4, train_data=data, output_dir=tmp_path / "b", resume=True, **SEARCH)
    assert resumed.plan.keep == full.plan.keep
    assert all(torch.equal(full.masks[n], resumed.masks[n]) for n in full.masks)
    assert all(torch.equal(full.scores[n], resumed.scores[n]) for n in full.scores)
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_jsonl_log_and_grad_accum(tmp_path):
    model, data = tiny_model("CLIPModel"), SyntheticCaptions("train", 64)
    losses = train(
        model,
        data,
        contrastive_loss,
        steps=4,
        batch_size=8,
        grad_accum=2,
        output_dir=tmp_path,
        log_every=2,
        progress=False,
    )
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and len(losses) == 4
    assert all({"loss", "lr", "elapsed_s"} <= set(r) for r in rows)


def test_bf16_autocast_on_cpu():
    model, data = tiny_model("CLIPModel"), SyntheticCaptions("train", 32)
    losses = train(model, data, contrastive_loss, steps=2, batch_size=16, mixed_precision="bf16", progress=False)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32
    train(model, data, contrastive_loss, steps=1, batch_size=16, progress=False)  # back to fp32 in the same process


def test_bad_loop_settings():
    model, data = tiny_model("CLIPModel"), SyntheticCaptions("train", 8)
    with pytest.raises(ValueError, match="output_dir"):
        train(model, data, contrastive_loss, steps=1, checkpoint_every=1)
    with pytest.raises(ValueError, match="mixed_precision"):
        train(model, data, contrastive_loss, steps=1, mixed_precision="fp8")
