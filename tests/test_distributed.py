"""The multi-process path (what `accelerate launch` runs): 2 CPU processes reach one plan and the same weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_upop_search_on_two_processes_agrees(tmp_path):
    script = Path(__file__).parent / "_ddp_search.py"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        str(script),
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [x["world"] for x in ranks] == [2, 2] and [x["rank"] for x in ranks] == [0, 1]
    # each rank saw different batches, yet saliency is averaged over ranks and DDP averages gradients:
    assert ranks[0]["keep"] == ranks[1]["keep"] and ranks[0]["keep"]
    assert ranks[0]["scores"] == ranks[1]["scores"]
    assert abs(ranks[0]["weights"] - ranks[1]["weights"]) < 1e-6
    # modal-adaptive's gates and multipliers live outside the model: their gradients are averaged over ranks too
    assert ranks[0]["modal_keep"] == ranks[1]["modal_keep"] and ranks[0]["modal_keep"]
    assert ranks[0]["modal_log"] == ranks[1]["modal_log"]
    # MoPE scoring sharded over the 2 ranks gives every rank the single-process values
    sys.path.insert(0, str(script.parent))
    from _ddp_search import mope_errors

    single = mope_errors()
    assert ranks[0]["mope"] == ranks[1]["mope"] and max(abs(a - b) for a, b in zip(ranks[0]["mope"], single)) < 1e-6
