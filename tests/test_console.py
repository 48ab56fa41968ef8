"""What the console and the reports tell a user: noisy latency is not printed as a result; labels say what ran."""

from __future__ import annotations

import pytest

from vltrim.measure import speedup_text, speedup_verdict
from vltrim.report import sections


@pytest.mark.parametrize(
    ("ratio", "q", "conclusive"),
    [
        (1.84, [1.80, 1.90], True),
        (0.49, [0.31, 1.20], False),  # faster in some rounds, slower in others
        (1.05, [0.95, 1.10], False),
        (2.0, [1.1, 3.0], False),  # a busy machine
        (0.8, [0.78, 0.82], True),  # conclusively slower is a result too
        (1.0, [1.0, 1.0], True),
    ],
)
def test_speedup_is_a_result_only_when_the_rounds_agree(ratio, q, conclusive):
    assert (speedup_verdict(ratio, q) is None) == conclusive
    text = speedup_text({"speedup": ratio, "speedup_quartiles": q})
    assert text.startswith("not conclusive") != conclusive
    assert f"{ratio:.2f}x" in text


def _report(search_steps: int) -> dict:
    return {
        "method": "taylor",
        "search_steps": search_steps,
        "before": {"acc": 0.9},
        "after_search": {"acc": 0.5},
        "after": {"acc": 0.8},
    }


@pytest.mark.parametrize(("steps", "label"), [(0, "after pruning"), (20, "after search")])
def test_quality_columns_say_whether_the_search_trained(steps, label):
    quality = next(s for s in sections(_report(steps)) if s.title.startswith("Quality"))
    assert label in quality.headers


def _row(group: str, kind: str, layer: int, error: float) -> dict:
    return {"group": group, "kind": kind, "layer": layer, "error": error}


def test_mope_heat_map_sections_heads_ffn_and_layers_only_when_scored():
    from vltrim.report import _mope_sections

    rows = [_row(f"text.layers.{i}.attn.heads", "heads", i, 0.1) for i in range(2) for _ in range(4)]
    rows += [_row("text.layers.0.crossattn.heads", "heads", 0, 0.2)]
    rows += [_row(f"text.layers.{i}.mlp.neurons", "neurons", i, 0.3) for i in range(2) for _ in range(3)]
    assert [(label, width) for label, width, _ in _mope_sections(rows)] == [
        ("crossattn heads", 1),
        ("heads", 4),
        ("FFN neuron groups", 3),
    ]
    rows += [_row("text.layers", "layers", i, 0.5) for i in range(2)]
    assert _mope_sections(rows)[-1][:2] == ("whole layer", 1)


def test_widths_show_low_rank_factorisation():
    import vltrim
    from vltrim.report import layer_widths, widths_cut
    from vltrim.zoo import tiny_model

    model = tiny_model("CLIPModel")
    small = vltrim.apply_plan(model, vltrim.plan(model, method="lowrank", target=0.3))
    widths = layer_widths(small, vltrim.plans_of(small))
    assert widths_cut(widths)  # so widths.png is drawn for a factorised model too
    lr = widths["vision"][0]["low_rank"]
    assert 0 < lr["params_kept"] < 1 and all(r < full for r, full in lr["ranks"].values())


def test_study_refuses_the_root_as_its_directory():
    from vltrim.run.study import StudyError, check_out

    with pytest.raises(StudyError, match="root"):
        check_out("/")
