"""Invariant 5: latency is measured (median, IQR, threads, device), and compare() times both models in one run."""

from __future__ import annotations

import vltrim
from vltrim.zoo import tiny_model


def test_measure_reports_everything():
    model = tiny_model("CLIPModel")
    m = vltrim.measure(model, rounds=3, min_round_s=0.005)
    assert m["params"] == vltrim.count_params(model) and m["macs"] > 0
    assert m["latency_ms"] > 0 and m["latency_iqr_ms"] >= 0
    assert m["threads"] >= 1 and m["device"] == "cpu" and m["batch_size"] == 1


def test_compare_gives_ratios_of_one_run():
    model = tiny_model("BertModel")
    small = vltrim.apply_plan(model, vltrim.plan(model, "l1", target=0.5))
    c = vltrim.compare(model, small, batch_size=2, rounds=3, min_round_s=0.005)
    assert c["params_ratio"] > 1.3 and c["macs_ratio"] > 1.3
    assert c["speedup"] > 0 and c["speedup_of_medians"] == c["a"]["latency_ms"] / c["b"]["latency_ms"]
    assert c["batch_size"] == 2
    lo, hi = c["speedup_quartiles"]  # the spread of the paired ratios, shown beside the median
    assert lo <= c["speedup"] <= hi
    from vltrim.measure import speedup_verdict
    from vltrim.report import speedup_text

    why = speedup_verdict(c["speedup"], [lo, hi])  # a shared machine's noise can make 3 rounds disagree
    want = f"{c['speedup']:.2f}x (rounds {lo:.2f}-{hi:.2f})" if not why else f"not conclusive ({c['speedup']:.2f}x"
    assert speedup_text(c).startswith(want)
