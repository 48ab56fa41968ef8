"""Run by tests/test_distributed.py under torchrun: a UPop search on 2 CPU processes (gloo)."""
import json
import sys

import torch
from accelerate import PartialState

from vltrim.data import SyntheticCaptions
from vltrim.methods import get_method
from vltrim.zoo import tiny_model

if __name__ == "__main__":
    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    res = get_method("upop").run(tiny_model("CLIPModel"), 0.4, train_data=SyntheticCaptions("train", 128), steps=6, interval=2,
                                 lr=1e-3, batch_size=8, progress=False)
    weights = sum(float(p.double().sum()) for p in res.model.parameters())
    out = {"rank": state.process_index, "world": state.num_processes, "keep": res.plan.keep, "weights": weights,
           "scores": {n: s.tolist() for n, s in res.scores.items()}}
    with open(f"{sys.argv[1]}/rank{state.process_index}.json", "w") as f:
        json.dump(out, f)
