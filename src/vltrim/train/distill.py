"""Knowledge-distillation losses in one place: logits KL, hidden-state MSE, attention MSE.

Width pruning keeps the hidden size, so hidden states compare directly; layer-reduced students are
matched to teacher layers by ``layer_map``; attention maps of different head counts compare as
head averages."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


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


def hidden_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mapping: Sequence[int] | None = None) -> torch.Tensor:
    """Mean MSE between matched hidden states (pass the per-layer outputs, without the embeddings)."""
    pairs = _matched(student, teacher, mapping)
    return sum(F.mse_loss(s.float(), t.float()) for s, t in pairs) / len(pairs)


def attention_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mapping: Sequence[int] | None = None) -> torch.Tensor:
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
    from ..api import plans_of

    index = list(range(teacher_layers))
    for p in plans_of(student)[len(plans_of(teacher)):]:
        keep = p.keep.get(f"{tower}.layers")
        if keep is not None:
            index = [index[i] for i in keep]
    return index


@contextmanager
def layer_outputs(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Collect the output hidden states of every block of every tower during the forwards inside the block
    (the latest forward's, per tower)."""
    from ..adapters import get_adapter

    towers = get_adapter(model).towers(model)
    states: dict[str, list[torch.Tensor]] = {}

    def make(name: str, i: int, n: int):
        def hook(_mod, _args, out):
            if i == 0:
                states[name] = [None] * n
            states[name][i] = out[0] if isinstance(out, tuple) else out

        return hook

    handles = [layer.register_forward_hook(make(t.name, i, len(t.layers))) for t in towers for i, layer in enumerate(t.layers)]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()


def hidden_kd(student: nn.Module, teacher: nn.Module, student_states: dict[str, list[torch.Tensor]],
              teacher_states: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    """Uni-modal distillation: MSE of every student block's output to its teacher block's, averaged over the
    towers both forwards ran (layer mapping by `kept_teacher_layers`)."""
    losses = [hidden_mse(s, teacher_states[t], kept_teacher_layers(student, teacher, t, len(teacher_states[t])))
              for t, s in student_states.items() if t in teacher_states and s and None not in s]
    if not losses:
        raise ValueError("hidden-state distillation found no tower that both student and teacher ran")
    return sum(losses) / len(losses)
