"""The peer: Torch-Pruning's own pruner, configured as a competent user would, turned into a vltrim Plan.

    pip install -e ".[peer]"          # torch-pruning, pinned (PEER_VERSION)

Torch-Pruning (`tp.pruner.BasePruner`) decides which FFN neurons and attention head dims (or whole heads) to
prune: its `GroupTaylorImportance` (|w * dL/dw| on the gradient accumulated over calibration batches of the
same task loss vltrim's methods calibrate on, train mode, dropout from the seed) or `GroupMagnitudeImportance(p=2)`;
its group reduction ("mean") and normaliser ("mean": each group's scores divided by their mean); its global or
per-layer ranking; `round_to=8`. Only the blocks' q, k, v, o, fc1, fc2 may be pruned (embeddings, poolers,
projections, norms and the hidden width are left alone, as vltrim does). Its decision, read from the groups its
pruner yields, becomes a Plan, so both sides are retrained by the same code; `tests/test_peer.py` checks that the
plan's model equals Torch-Pruning's own pruned model. The pruning ratio (count-based in Torch-Pruning) is
bisected until the plan removes the same share of prunable params as vltrim's plans (within 1% of it; when one chunk
of a wide layer jumps past that window, the closest ratio that removes up to 2% more is taken: the peer is never given
an easier target than vltrim).

Registered as the vltrim method ``peer`` in the process that imports this file (benchmarks only; the library
does not depend on Torch-Pruning). ``vltrim.compress(model, "peer", target, method_settings=PEER["taylor-global"])``.
"""

from __future__ import annotations

import copy
import importlib.metadata
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from vltrim.arch import get_adapter
from vltrim.methods import _METHODS, Descriptor, Method, MethodConfig, register
from vltrim.methods.common import plan_from_keep, prunable_groups, seeded
from vltrim.structure.plan import Plan
from vltrim.train.loop import batches

PEER_VERSION = "1.6.1"
MATCH = 0.01  # the peer's removed share of prunable params is within 1% (relative) of the target (or up to 2% above it)


@dataclass(frozen=True)
class PeerConfig(MethodConfig):
    """One Torch-Pruning configuration: importance ('taylor' | 'magnitude'), what attention loses ('head_dims' |
    'heads'), global or per-layer ranking, channel rounding, and Taylor's calibration batches."""

    importance: str = "taylor"
    attention: str = "head_dims"
    global_pruning: bool = True
    round_to: int = 8
    num_batches: int = 8

    def validate(self) -> None:
        if self.importance not in ("taylor", "magnitude"):
            raise ValueError(f"peer importance must be 'taylor' or 'magnitude', got {self.importance!r}")
        if self.attention not in ("head_dims", "heads"):
            raise ValueError(f"peer attention must be 'head_dims' or 'heads', got {self.attention!r}")


# the configurations the harness runs (names used as variants)
PEER = {
    "taylor-global": {"importance": "taylor", "attention": "head_dims", "global_pruning": True},
    "magnitude-global": {"importance": "magnitude", "attention": "head_dims", "global_pruning": True},
    "taylor-heads-local": {"importance": "taylor", "attention": "heads", "global_pruning": False},
    "taylor-local": {"importance": "taylor", "attention": "head_dims", "global_pruning": False},
    "taylor-heads-global": {"importance": "taylor", "attention": "heads", "global_pruning": True},
}


def _tp():
    try:
        import torch_pruning as tp
    except ImportError:
        raise SystemExit(
            f"the peer needs Torch-Pruning: pip install torch-pruning=={PEER_VERSION} (or the 'peer' extra)"
        ) from None
    found = importlib.metadata.version("torch-pruning")  # tp.__version__ of 1.6.1 still says 1.6.0
    if found != PEER_VERSION:
        raise SystemExit(f"the peer is pinned to Torch-Pruning {PEER_VERSION}, found {found}")
    return tp


def block_modules(model: nn.Module) -> dict[str, dict[str, nn.Module]]:
    """vltrim's attention / FFN group prefix -> the block's Linears ('q', 'k', 'v', 'o', 'fc1', 'fc2')."""
    out = {}
    for t in get_adapter(model).towers(model):
        for i, layer in enumerate(t.layers):
            b = t.block(layer)
            out[f"{t.name}.layers.{i}"] = {
                "q": b.attn.q,
                "k": b.attn.k,
                "v": b.attn.v,
                "o": b.attn.o,
                "fc1": b.fc1,
                "fc2": b.fc2,
                "heads": b.attn.num_heads,
                "head_dim": b.attn.head_dim,
            }
    return out


def output_scalar(out: Any) -> torch.Tensor:
    """A scalar that depends on every tower's output, for Torch-Pruning's graph tracing."""
    keys = [
        k for k in ("image_embeds", "text_embeds", "last_hidden_state", "logits") if getattr(out, k, None) is not None
    ]
    return sum(getattr(out, k).float().sum() for k in keys[:2])


def accumulate_gradients(
    model: nn.Module, data: Any, loss_fn: Callable, num_batches: int, batch_size: int, seed: int
) -> None:
    """What a Torch-Pruning user does before a Taylor step: loss.backward() on calibration batches (gradients add up),
    in train mode, dropout from ``seed``; the same batches vltrim's `taylor` draws."""
    dev = next(model.parameters()).device
    model.train()
    model.zero_grad(set_to_none=True)
    it = batches(data, batch_size, seed)
    with seeded(seed, dev):
        for _ in range(num_batches):
            loss_fn(model, {k: v.to(dev) for k, v in next(it).items()}).backward()
    model.eval()


def tp_pruner(model: nn.Module, cfg: PeerConfig, ratio: float):
    """Torch-Pruning's BasePruner over the blocks of ``model`` at channel ``ratio`` (heads: the same ratio of heads)."""
    tp = _tp()
    blocks = block_modules(model)
    prunable = {id(m) for b in blocks.values() for k, m in b.items() if k in ("q", "k", "v", "o", "fc1", "fc2")}
    ignored = [
        m
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding, nn.LayerNorm)) and id(m) not in prunable
    ]
    num_heads = {b[k]: b["heads"] for b in blocks.values() for k in ("q", "k", "v")}
    imp = (
        tp.importance.GroupTaylorImportance()
        if cfg.importance == "taylor"
        else tp.importance.GroupMagnitudeImportance(p=2)
    )
    heads = cfg.attention == "heads"
    inputs = get_adapter(model).reference_inputs(model, 1)
    with (
        warnings.catch_warnings()
    ):  # class tokens and position embeddings: in the hidden-width group, which is never pruned
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        return tp.pruner.BasePruner(
            model,
            inputs,
            importance=imp,
            global_pruning=cfg.global_pruning,
            pruning_ratio=ratio,
            ignored_layers=ignored,
            output_transform=output_scalar,
            num_heads=num_heads,
            prune_head_dims=not heads,
            prune_num_heads=heads,
            head_pruning_ratio=ratio if heads else 0.0,
            round_to=cfg.round_to,
        )


def pruned_indices(model: nn.Module, cfg: PeerConfig, ratio: float) -> dict[str, list[int]]:
    """Indices Torch-Pruning removes at ``ratio``, per vltrim group: '<layer>.attn.head_dims' / '.attn.heads' (the
    same head dims in every head, as its head-dim pruning does) and '<layer>.mlp.neurons'."""
    blocks = block_modules(model)
    where = {id(b["q"]): (name, "attn", b) for name, b in blocks.items()} | {
        id(b["fc1"]): (name, "mlp", b) for name, b in blocks.items()
    }
    out: dict[str, list[int]] = {}
    for group in tp_pruner(model, cfg, ratio).step(interactive=True):
        for dep, idxs in group:
            found = where.get(id(dep.target.module))
            if found is None or getattr(dep.handler, "__name__", "") != "prune_out_channels":
                continue
            name, part, b = found
            if part == "mlp":
                out[f"{name}.mlp.neurons"] = sorted(idxs)
                continue
            hd = b["head_dim"]
            per_head = [sorted(i % hd for i in idxs if i // hd == h) for h in range(b["heads"])]
            if cfg.attention == "heads":
                out[f"{name}.attn.heads"] = sorted({i // hd for i in idxs})
            else:
                if any(p != per_head[0] for p in per_head):
                    raise RuntimeError(
                        f"Torch-Pruning cut different head dims per head in {name}; vltrim's head_dims cannot express it"
                    )
                out[f"{name}.attn.head_dims"] = per_head[0]
    return out


def peer_plan(
    model: nn.Module,
    target: float,
    cfg: PeerConfig,
    data: Any = None,
    loss_fn: Callable | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> Plan:
    """Torch-Pruning's plan for ``model`` that removes ``target`` of vltrim's prunable params (within ``MATCH``): its
    ratio bisected, its decision converted. ``model`` is not changed."""
    units = ("heads" if cfg.attention == "heads" else "head_dims", "neurons")
    groups = prunable_groups(model, units)
    work = copy.deepcopy(model).float()
    if cfg.importance == "taylor":
        if data is None or loss_fn is None:
            raise ValueError("the peer's Taylor importance needs calibration data and a loss")
        accumulate_gradients(work, data, loss_fn, cfg.num_batches, batch_size, seed)
    total = sum(g.size * g.params_per_unit for g in groups)
    by_name = {g.name: g for g in groups}

    def removed(r: float) -> tuple[float, dict[str, list[int]]]:
        cut = pruned_indices(work, cfg, r)
        return sum(len(i) * by_name[n].params_per_unit for n, i in cut.items()) / total, cut

    lo, hi, best = 0.0, 0.99, None
    for _ in range(40):
        mid = (lo + hi) / 2
        got, cut = removed(mid)
        if best is None or abs(got - target) < abs(best[0] - target):
            best = (got, cut, mid)
        if abs(got - target) <= MATCH * target:
            break
        lo, hi = (mid, hi) if got < target else (lo, mid)
    got, cut, ratio = best
    if abs(got - target) > MATCH * target and target <= got <= (1 + 2 * MATCH) * target:
        pass  # a head-dim chunk of a wide layer can jump past the 1% window: the peer then removes a little more, never less
    elif abs(got - target) > MATCH * target:
        raise RuntimeError(
            f"Torch-Pruning {asdict(cfg)} cannot remove {target:.3f} of prunable params within {MATCH:.0%}: "
            f"closest {got:.4f} at ratio {ratio:.4f}"
        )
    keep = {n: sorted(set(range(by_name[n].size)) - set(i)) for n, i in cut.items() if i}
    settings = {
        **asdict(cfg),
        "torch_pruning": PEER_VERSION,
        "tp_pruning_ratio": round(ratio, 6),
        "seed": seed,
        "batch_size": batch_size,
    }
    return plan_from_keep(
        model, groups, keep, {"target": target, "metric": "params", "peer": "torch-pruning"}, "peer", settings
    )


class PeerMethod(Method):
    """vltrim's method interface around `peer_plan` (settings: the fields of PeerConfig)."""

    name = "peer"
    Config = PeerConfig
    descriptor = Descriptor(data="optional", runtime=("data", "loss_fn", "batch_size", "seed"))

    def search(
        self,
        model: nn.Module,
        target: float,
        data: Any = None,
        loss_fn: Callable | None = None,
        batch_size: int = 16,
        seed: int = 0,
        importance: str = "taylor",
        attention: str = "head_dims",
        global_pruning: bool = True,
        round_to: int = 8,
        num_batches: int = 8,
    ) -> Plan:
        cfg = PeerConfig(importance, attention, global_pruning, round_to, num_batches)
        return peer_plan(model, target, cfg, data, loss_fn, batch_size, seed)


if "peer" not in _METHODS:
    register(PeerMethod)
