"""Distillation losses: zero at the teacher, positive away from it, layer mapping, head-averaged attention."""

from __future__ import annotations

import pytest
import torch

from vltrim.train.distill import attention_mse, hidden_mse, layer_map, logits_kl, similarity_kl


def test_kl_is_zero_at_the_teacher_and_positive_elsewhere():
    t = torch.randn(4, 6)
    assert logits_kl(t, t).abs() < 1e-6 and similarity_kl(t[:, :4], t[:, :4]).abs() < 1e-6
    assert logits_kl(torch.randn(4, 6), t) > 0


def test_layer_map():
    assert layer_map(12, 12) == list(range(12))
    assert layer_map(2, 4) == [1, 3] and layer_map(3, 12) == [3, 7, 11]
    with pytest.raises(ValueError):
        layer_map(5, 4)


def test_hidden_and_attention_mse_follow_the_map():
    teacher = [torch.full((2, 3, 4), float(i)) for i in range(4)]
    student = [torch.full((2, 3, 4), 1.0), torch.full((2, 3, 4), 3.0)]
    assert hidden_mse(student, teacher) == 0  # matched to teacher layers 1 and 3
    assert hidden_mse(student, teacher, mapping=[0, 0]) > 0
    t_attn = [torch.softmax(torch.randn(2, 4, 5, 5), -1) for _ in range(2)]
    s_attn = [a[:, :2] for a in t_attn]  # two heads pruned: compared as head averages
    assert attention_mse(s_attn, t_attn) > 0 and attention_mse(t_attn, t_attn) == 0
