"""Fused distillation with both heads sharded over the vocabulary (tensor parallelism, as
:func:`polyfocal.vocab_parallel_linear_loss` shards one head).

Each rank holds the same classes of the student's and the teacher's heads. A chunk's log-softmax needs
the row's max and exp-sum over every class: each rank reduces its classes to those two numbers per row and
they are all-reduced (:func:`polyfocal.distill.log_softmax_`); every divergence is then a sum over the
classes of a function of the two log-probabilities (and the gradient, given the row's sums, is per class),
so each rank sums its own classes and the partial sums are all-reduced (:func:`polyfocal.distill.divergence`). The
hidden states' gradient is the sum of every rank's share, all-reduced in backward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from . import _checks
from .distill import _DistillationHead, _check_options, _check_teacher, _target_and_scale
from .linear import FusedLinearLoss, _check_head, chunk_rows
from .vocab_parallel import check_shard

__all__ = ["vocab_parallel_linear_distillation_loss"]


class _SumGradientOverRanks(torch.autograd.Function):
    """The identity; backward all-reduces the gradient (each rank's share of the hidden states' gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def vocab_parallel_linear_distillation_loss(student_hidden: Tensor, student_head: Tensor, teacher_hidden: Tensor,
                                            teacher_head: Tensor, target: Tensor | None = None, *, vocab_start: int,
                                            num_classes: int, divergence: str = "forward_kl", beta: float = 0.5,
                                            temperature: float = 1.0, student_bias: Tensor | None = None,
                                            teacher_bias: Tensor | None = None, ignore_index: int = -100,
                                            reduction: str = "mean", chunk_size: int | None = None,
                                            group=None) -> Tensor:
    """:func:`polyfocal.linear_distillation_loss` with both heads sharded over the vocabulary: this rank holds
    classes ``vocab_start .. vocab_start + V_r - 1`` of ``num_classes`` in ``student_head (V_r, H)`` and
    ``teacher_head (V_r, H_t)`` (and their biases); the hidden states and ``target`` are the same on every
    rank of ``group``. Every rank returns the same loss; the heads' gradients are the rank's own shard's,
    the student hidden states' the full one. No hard part (add :func:`polyfocal.vocab_parallel_linear_loss`'s)."""
    _check_head(student_hidden, student_head, student_bias,
                target if target is not None else student_hidden.new_zeros(student_hidden.shape[:-1], dtype=torch.long))
    _check_teacher(student_hidden, student_head, teacher_hidden, teacher_head, teacher_bias)
    name, beta, temperature = _check_options(divergence, beta, temperature)
    check_shard(vocab_start, num_classes, student_head.shape[0])
    _checks.check_reduction(reduction, None)
    ignore_index = _checks.integer(ignore_index, "ignore_index", low=-(2**63))
    like = torch.empty((), dtype=torch.float64 if student_hidden.dtype == torch.float64 else torch.float32,
                       device=student_hidden.device)
    flat, scale = _target_and_scale(target, student_hidden, ignore_index, reduction, like)
    teacher = (teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1]), teacher_head.detach(),
               None if teacher_bias is None else teacher_bias.detach())
    head = _DistillationHead(teacher, flat, ignore_index, name, beta, temperature, None, reduction, scale,
                             chunk_rows(chunk_size, student_hidden, student_head),
                             "vocab_parallel_linear_distillation_loss", True, group)
    hidden = _SumGradientOverRanks.apply(student_hidden.reshape(-1, student_hidden.shape[-1]), group)
    value, _ = FusedLinearLoss.apply(hidden, student_head, student_bias, head)
    return (value.reshape(student_hidden.shape[:-1]) if reduction == "none" else value).to(student_hidden.dtype)
