"""Knowledge-distillation losses in one place: logits KL, hidden-state MSE, attention MSE.

Width pruning keeps the hidden size, so hidden states compare directly; layer-reduced students are
matched to teacher layers by ``layer_map``; attention maps of different head counts compare as
head averages. `layer_outputs` and `attention_maps` collect what a forward computes, per tower and block, with
hooks (``attention_maps`` switches the attention to eager for its duration: SDPA returns no probabilities)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vltrim.arch import get_adapter
from vltrim.arch.apply import plans_of
from vltrim.arch.attention import eager_attention


def logits_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) over the last dimension, scaled by T^2 (class logits or similarity rows)."""
    t = F.log_softmax(teacher.detach().float() / temperature, -1)
    s = F.log_softmax(student.float() / temperature, -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def similarity_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Image->text and text->image KL of a similarity matrix (rows images, columns texts), averaged."""
    return 0.5 * (logits_kl(student, teacher, temperature) + logits_kl(student.t(), teacher.t(), temperature))


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer matched to each student layer, spread uniformly, the last to the last."""
    if student_layers > teacher_layers:
        raise ValueError(f"student has more layers ({student_layers}) than the teacher ({teacher_layers})")
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def _matched(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mapping: Sequence[int] | None):
    mapping = layer_map(len(student), len(teacher)) if mapping is None else mapping
    return [(s, teacher[j].detach()) for s, j in zip(student, mapping)]


def hidden_mse(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mapping: Sequence[int] | None = None
) -> torch.Tensor:
    """Mean MSE between matched hidden states (pass the per-layer outputs, without the embeddings)."""
    pairs = _matched(student, teacher, mapping)
    return sum(F.mse_loss(s.float(), t.float()) for s, t in pairs) / len(pairs)


def attention_mse(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mapping: Sequence[int] | None = None
) -> torch.Tensor:
    """Mean MSE between matched attention maps [batch, heads, q, k]; head-averaged when head counts differ."""
    pairs = _matched(student, teacher, mapping)
    total = 0.0
    for s, t in pairs:
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        total = total + F.mse_loss(s.float(), t.float())
    return total / len(pairs)


def kept_teacher_layers(student: nn.Module, teacher: nn.Module, tower: str, teacher_layers: int) -> list[int]:
    """Teacher layer index of each of the student's layers in ``tower``, through every plan applied since the
    teacher (MoPE's depth stage, any layer-reduced student): the mapping across removed layers is exact."""
    index = list(range(teacher_layers))
    for p in plans_of(student)[len(plans_of(teacher)) :]:
        keep = p.keep.get(f"{tower}.layers")
        if keep is not None:
            index = [index[i] for i in keep]
    return index


@contextmanager
def layer_outputs(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Collect the output hidden states of every block of every tower during the forwards inside the block
    (the latest forward's, per tower)."""
    towers = get_adapter(model).towers(model)
    with _collect(
        [(t.name, list(t.layers)) for t in towers], lambda out: out[0] if isinstance(out, tuple) else out
    ) as states:
        yield states


@contextmanager
def attention_maps(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Collect the attention probabilities [batch, heads, queries, keys] of every block of every tower during the
    forwards inside the block (the latest forward's, per tower). The attention runs eager meanwhile (SDPA and flash
    kernels return no probabilities); the model's own implementation is restored on exit. An attention that returns
    none is refused at the first forward (`_probabilities`)."""
    towers = get_adapter(model).towers(model)
    mods = [(t.name, [t.block(layer).attn.module for layer in t.layers]) for t in towers]
    attention = [m for _, ms in mods for m in ms]
    with eager_attention(attention), _asking_probabilities(attention), _collect(mods, _probabilities) as states:
        yield states  # an attention with no config of its own (WavLM's) returns its probabilities anyway


@contextmanager
def _asking_probabilities(attention: list[nn.Module]) -> Iterator[None]:
    """Pass ``output_attentions=True`` to every attention whose forward takes that argument (MPNet's returns its
    probabilities only when asked), for the forwards inside the block."""

    def ask(mod, args, kwargs):
        names = list(inspect.signature(mod.forward).parameters)
        if names.index("output_attentions") < len(args):  # passed by position: replace it there
            i = names.index("output_attentions")
            return (*args[:i], True, *args[i + 1 :]), kwargs
        return args, {**kwargs, "output_attentions": True}

    asking = [m for m in attention if "output_attentions" in inspect.signature(m.forward).parameters]
    handles = [m.register_forward_pre_hook(ask, with_kwargs=True) for m in asking]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _probabilities(out: Any) -> torch.Tensor:
    """The attention probabilities an HF attention module returns next to its output (eager attention)."""
    probs = out[1] if isinstance(out, tuple) and len(out) > 1 else None
    if probs is None:
        raise RuntimeError(
            "attention distillation: an attention module returned no probabilities although it runs eager; "
            "this model's attention cannot be distilled (use kd_attention=0)"
        )
    return probs


@contextmanager
def _collect(
    towers: list[tuple[str, list[nn.Module]]], pick: Callable[[Any], torch.Tensor]
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Forward hooks storing ``pick(output)`` of each tower's modules in order: {tower: [one per module]}."""
    states: dict[str, list[torch.Tensor]] = {}

    def make(name: str, i: int, n: int):
        def hook(_mod, _args, out):
            if i == 0:
                states[name] = [None] * n
            if name in states:
                states[name][i] = pick(out)

        return hook

    handles = [m.register_forward_hook(make(name, i, len(ms))) for name, ms in towers for i, m in enumerate(ms)]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()


def hidden_kd(
    student: nn.Module,
    teacher: nn.Module,
    student_states: dict[str, list[torch.Tensor]],
    teacher_states: dict[str, list[torch.Tensor]],
) -> torch.Tensor:
    """Uni-modal distillation: MSE of every student block's output to its teacher block's, averaged over the
    towers both forwards ran (layer mapping by `kept_teacher_layers`)."""
    return _towers_kd(hidden_mse, "hidden-state", student, teacher, student_states, teacher_states)


def attention_kd(
    student: nn.Module,
    teacher: nn.Module,
    student_maps: dict[str, list[torch.Tensor]],
    teacher_maps: dict[str, list[torch.Tensor]],
) -> torch.Tensor:
    """Attention-map distillation: `attention_mse` of every student block's attention probabilities to its teacher
    block's (head-averaged where pruning changed the head count), averaged over the towers both forwards ran, with the
    layer mapping of `hidden_kd` (`kept_teacher_layers`)."""
    return _towers_kd(attention_mse, "attention-map", student, teacher, student_maps, teacher_maps)


def _towers_kd(
    loss: Callable[..., torch.Tensor],
    what: str,
    student: nn.Module,
    teacher: nn.Module,
    s_states: dict[str, list[torch.Tensor]],
    t_states: dict[str, list[torch.Tensor]],
) -> torch.Tensor:
    """``loss`` of each tower's student blocks to their teacher blocks (mapped across removed layers), averaged."""
    losses = [
        loss(s, t_states[t], kept_teacher_layers(student, teacher, t, len(t_states[t])))
        for t, s in s_states.items()
        if t in t_states and s and None not in s
    ]
    if not losses:
        raise ValueError(f"{what} distillation found no tower that both student and teacher ran")
    return sum(losses) / len(losses)
