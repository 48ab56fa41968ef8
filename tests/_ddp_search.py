"""Run by tests/test_distributed.py under torchrun: UPop and modal-adaptive searches on 2 CPU processes (gloo)."""

import json
import sys

import torch
from accelerate import PartialState

from vltrim.data import SyntheticCaptions
from vltrim.methods import get_method
from vltrim.tasks.retrieval import contrastive_loss
from vltrim.zoo import tiny_model


def mope_errors() -> list[float]:
    """MoPE of every module of a tiny CLIP, each rank scoring a slice (summed over ranks)."""
    from vltrim.methods.common import prunable_groups
    from vltrim.methods.mope import fast_errors, layer_ablations, make_probe, width_ablations

    model = tiny_model("CLIPModel")
    ab = width_ablations(model, prunable_groups(model, "heads,neurons"), 16, 8) + layer_ablations(model)
    return fast_errors(model, make_probe("retrieval", SyntheticCaptions("val", 24), 10), ab, ablation_batch=3)


if __name__ == "__main__":
    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    res = get_method("upop").run(
        tiny_model("CLIPModel"),
        0.4,
        train_data=SyntheticCaptions("train", 128),
        steps=6,
        interval=2,
        lr=1e-3,
        batch_size=8,
        progress=False,
    )
    weights = sum(float(p.detach().double().sum()) for p in res.model.parameters())
    gated = get_method("modal-adaptive").run(
        tiny_model("CLIPModel"),
        0.4,
        train_data=SyntheticCaptions("train", 128),
        loss_fn=contrastive_loss,
        steps=6,
        lr=1e-3,
        batch_size=8,
        gate_lr=0.1,
        lagrangian_lr=0.1,
        progress=False,
    )
    out = {
        "rank": state.process_index,
        "world": state.num_processes,
        "keep": res.plan.keep,
        "weights": weights,
        "scores": {n: s.tolist() for n, s in res.scores.items()},
        "mope": mope_errors(),
        "modal_keep": gated.plan.keep,
        "modal_log": gated.artifacts["search_log"][-1],
    }
    with open(f"{sys.argv[1]}/rank{state.process_index}.json", "w") as f:
        json.dump(out, f)
    if torch.distributed.is_initialized():  # leave together: a rank exiting mid-collective aborts the other
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
