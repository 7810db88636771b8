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

from .distill import _DistillationHead, _distillation_options
from .linear import FusedLinearLoss, chunk_rows
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
    options = _distillation_options(student_hidden, student_head, student_bias, teacher_hidden, teacher_head,
                                    teacher_bias, target, divergence, beta, temperature, ignore_index, reduction)
    check_shard(vocab_start, num_classes, student_head.shape[0])
    head = _DistillationHead(**options, hard=None, chunk=chunk_rows(chunk_size, student_hidden, student_head),
                             name="vocab_parallel_linear_distillation_loss", sharded=True, group=group)
    hidden = _SumGradientOverRanks.apply(student_hidden.reshape(-1, student_hidden.shape[-1]), group)
    value, _ = FusedLinearLoss.apply(hidden, student_head, student_bias, head)
    return (value.reshape(student_hidden.shape[:-1]) if reduction == "none" else value).to(student_hidden.dtype)
