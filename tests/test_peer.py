"""The Torch-Pruning peer of the benchmarks (benchmarks/peer.py): its configurations build on a tiny BERT, remove the
asked share of prunable params, and the plan made from its decision gives exactly Torch-Pruning's own pruned model."""

import copy
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, VisionTextDualEncoderModel, ViTConfig, ViTModel

pytest.importorskip("torch_pruning", reason="the peer extra is not installed: pip install -e '.[peer]'")
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import peer  # noqa: E402

import vltrim  # noqa: E402


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=32,
    )
    return BertModel(cfg).eval()


def tiny_dual_encoder() -> VisionTextDualEncoderModel:
    torch.manual_seed(0)
    vit = ViTModel(
        ViTConfig(
            image_size=28,
            patch_size=4,
            num_channels=1,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=1024,
        )
    )
    return VisionTextDualEncoderModel(vision_model=vit, text_model=tiny_bert()).eval()


def loss_fn(model, batch):
    if "pixel_values" in batch:
        out = model(**batch)
        return out.image_embeds.pow(2).mean() + out.text_embeds.pow(2).mean()
    return model(input_ids=batch["input_ids"]).last_hidden_state.pow(2).mean()


def ids(i: int) -> torch.Tensor:
    return torch.randint(0, 100, (16,), generator=torch.Generator().manual_seed(i))


TEXT = [{"input_ids": ids(i)} for i in range(32)]
PAIRS = [
    {"input_ids": ids(i), "pixel_values": torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(i))}
    for i in range(32)
]


def tp_pruned(model, cfg: "peer.PeerConfig", ratio: float, data: list):
    """Torch-Pruning's own pruning at ``ratio`` with the same calibration gradients, HF attributes fixed as its BERT example does."""
    work = copy.deepcopy(model)
    if cfg.importance == "taylor":
        peer.accumulate_gradients(work, data, loss_fn, cfg.num_batches, 8, 0)
    pruner = peer.tp_pruner(work, cfg, ratio)
    for group in pruner.step(interactive=True):
        group.prune()
    for m in work.modules():
        if hasattr(m, "attention_head_size") and hasattr(m, "query"):  # BERT
            m.num_attention_heads = pruner.num_heads[m.query]
            m.attention_head_size = m.query.out_features // m.num_attention_heads
            m.all_head_size = m.query.out_features
        if hasattr(m, "head_dim") and hasattr(m, "q_proj"):  # ViT
            m.num_attention_heads = pruner.num_heads[m.q_proj]
            m.head_dim = m.q_proj.out_features // m.num_attention_heads
    return work.eval()


@pytest.mark.parametrize("name", sorted(peer.PEER))
def test_peer_matches_params_and_torch_pruning_itself(name):
    model = tiny_bert()
    cfg = peer.PeerConfig(**peer.PEER[name])
    plan = peer.peer_plan(model, 0.3, cfg, TEXT, loss_fn, batch_size=8)
    assert abs(plan.achieved["params_removed"] - 0.3) <= peer.MATCH * 0.3
    assert plan.method == "peer" and plan.settings["torch_pruning"] == peer.PEER_VERSION
    small = vltrim.apply_plan(model, plan)
    theirs = tp_pruned(model, cfg, plan.settings["tp_pruning_ratio"], TEXT)
    assert vltrim.count_params(small) == vltrim.count_params(theirs)
    x = torch.randint(0, 100, (3, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = small(input_ids=x).last_hidden_state, theirs(input_ids=x).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for p in model.parameters():  # the original is untouched
        assert p.grad is None


@pytest.mark.parametrize("name", ["taylor-global", "taylor-heads-global"])
def test_peer_on_a_dual_encoder_prunes_both_towers_as_torch_pruning_does(name):
    model = tiny_dual_encoder()
    cfg = peer.PeerConfig(**peer.PEER[name])
    plan = peer.peer_plan(model, 0.3, cfg, PAIRS, loss_fn, batch_size=8)
    assert abs(plan.achieved["params_removed"] - 0.3) <= peer.MATCH * 0.3
    assert {n.split(".")[0] for n in plan.keep} == {"vision", "text"}
    small = vltrim.apply_plan(model, plan)
    theirs = tp_pruned(model, cfg, plan.settings["tp_pruning_ratio"], PAIRS)
    batch = {"input_ids": torch.stack([ids(90 + i) for i in range(3)]), "pixel_values": torch.randn(3, 1, 28, 28)}
    with torch.no_grad():
        a, b = small(**batch), theirs(**batch)
    torch.testing.assert_close(a.image_embeds, b.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.text_embeds, b.text_embeds, atol=1e-5, rtol=1e-5)


def test_peer_is_a_method_of_compress():
    model = tiny_bert()
    plan = vltrim.plan(
        model, method="peer", target=0.3, data=TEXT, loss_fn=loss_fn, batch_size=8, **peer.PEER["taylor-global"]
    )
    assert plan.method == "peer" and plan.settings["global_pruning"] is True


def test_peer_refuses_unknown_settings_and_unreachable_targets():
    with pytest.raises(ValueError, match="importance"):
        peer.PeerConfig(importance="hessian")
    with pytest.raises(
        RuntimeError, match="cannot remove"
    ):  # global head-dim pruning keeps every head dim here: 0.6 is out of reach
        peer.peer_plan(tiny_bert(), 0.95, peer.PeerConfig(), TEXT, loss_fn, batch_size=8)
