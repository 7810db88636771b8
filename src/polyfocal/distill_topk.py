"""Distillation from a teacher stored offline as its k largest logits per token and their classes: on the
student's logits, or on its linear head a chunk of rows at a time (:mod:`polyfocal.linear`'s loop, as
:mod:`polyfocal.distill`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import _checks
from ._errors import InputTypeError, InputValueError
from .distill import _finish, _row_dot, _target_and_scale, log_softmax_
from .linear import FusedLinearLoss, _check_head, chunk_rows, head_logits

__all__ = ["topk_distillation_loss"]


@dataclass(frozen=True)
class _TopKHead:
    """One call of :func:`topk_distillation_loss` on a linear head, as :func:`polyfocal.linear._chunk_gradients`
    runs it."""

    values: Tensor  # (N, k) the teacher's stored logits
    indices: Tensor  # (N, k) their classes
    temperature: float
    renormalize: bool
    target: Tensor | None
    ignore_index: int
    reduction: str
    scale: Tensor
    chunk: int
    name: str = "topk_distillation_loss"

    def run_chunk(self, rows: slice, h: Tensor, weight: Tensor, bias: Tensor | None, seed: Tensor | None,
                  out: Tensor | None = None):
        t, index = self.temperature, self.indices[rows]
        z = head_logits(h, weight, bias, out)
        with torch.no_grad():
            pt, log_ratio = _teacher_topk(self.values[rows], t)
            if self.renormalize:  # the student's softmax over the k classes alone; 0 gradient elsewhere
                student = torch.log_softmax(z.gather(1, index).div_(t), 1)
                grad = z.zero_().scatter_add_(1, index, student.exp().sub_(pt))
            else:  # the student's log-softmax over the whole vocabulary, at the k classes
                log_softmax = torch.log_softmax(z.div_(t), 1)
                del z
                student = log_softmax.gather(1, index)
                grad = log_softmax.exp_().scatter_add_(1, index, -pt)
            loss = _row_dot(pt, log_ratio.sub_(student)) * (t * t)
            return _finish(self, loss, grad.mul_(t) if seed is not None else None, seed, weight.dtype)


def _teacher_topk(values: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """The teacher's probabilities over its k stored logits, and their logarithms (a copy, to be written over)."""
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    log_teacher = log_softmax_(values.to(dtype, copy=True).div_(temperature))
    return log_teacher.exp(), log_teacher


def _student_form(student) -> tuple:
    """``(fused, (hidden, head, bias), tokens, V)`` of logits or a ``(hidden, head[, bias])`` head, checked."""
    if not isinstance(student, (tuple, list)):
        _checks.float_tensor(student, "student")
        return False, (None, None, None), tuple(student.shape[:-1]), student.shape[-1]
    if len(student) not in (2, 3):
        raise InputValueError(f"`student` must be logits or (hidden, head[, bias]); got {len(student)} items")
    hidden, head, bias = (*student, None)[:3]
    _check_head(hidden, head, bias)
    return True, (hidden, head, bias), tuple(hidden.shape[:-1]), head.shape[0]


def _check_topk(tokens: tuple, vocabulary: int, values, indices, validate: bool) -> None:
    _checks.float_tensor(values, "teacher_values")
    if not isinstance(indices, Tensor) or not _checks.is_index(indices):
        got = indices.dtype if isinstance(indices, Tensor) else type(indices).__name__
        raise InputTypeError(f"`teacher_indices` must be a tensor of class indices; got {got}")
    if indices.shape != values.shape or tuple(values.shape[:-1]) != tokens or values.dim() != len(tokens) + 1:
        raise InputValueError(f"`teacher_values` and `teacher_indices` must both have shape {tokens} + (k,); got "
                              f"{tuple(values.shape)} and {tuple(indices.shape)}")
    if validate and indices.numel():
        low, high = (int(v) for v in torch.aminmax(indices))
        if low < 0 or high >= vocabulary:
            raise InputValueError(f"`teacher_indices` must lie in [0, {vocabulary - 1}] (the vocabulary); got "
                                  f"{low if low < 0 else high}")


def _topk_rows(z: Tensor, values: Tensor, indices: Tensor, temperature: float, renormalize: bool) -> Tensor:
    """Per row, by autograd: ``T^2 sum_k p_T,k (log p_T,k - log q_S,k)`` (materialised logits ``z``)."""
    pt, log_teacher = _teacher_topk(values.detach(), temperature)
    z = z.float() if z.dtype not in (torch.float32, torch.float64) else z
    tempered = z / temperature
    if renormalize:
        student = torch.log_softmax(tempered.gather(1, indices), 1)
    else:
        student = torch.log_softmax(tempered, 1).gather(1, indices)
    return (pt * (log_teacher - student)).sum(1) * temperature ** 2


def topk_distillation_loss(student, teacher_values: Tensor, teacher_indices: Tensor, *, temperature: float = 1.0,
                           renormalize: bool = False, target: Tensor | None = None, ignore_index: int = -100,
                           reduction: str = "mean", chunk_size: int | None = None,
                           validate: bool | None = None) -> Tensor:
    """Distillation from a teacher stored offline as its k largest logits per token and their classes.

    The teacher's distribution is the softmax of its k logits over the k classes (divided by ``T``); the
    loss per token is ``T^2 sum_k p_T,k (log p_T,k - log q_S,k)`` with ``q_S`` the student's probability
    of those classes:

    * ``renormalize=False`` (default): the student's softmax over the whole vocabulary, taken at the k
      classes: the cross-entropy to the teacher's top-k distribution less its entropy, which also pushes
      the student's mass outside the k classes down (the sparse, top-k form of forward KL);
    * ``renormalize=True``: the student's softmax over the same k classes alone: ``KL(p_T || q_S)`` between
      two distributions on the k classes, blind to the rest of the vocabulary.

    Args:
        student: the student's logits ``(N, V)`` / ``(B, T, V)``, or its head as ``(hidden, head)`` or
            ``(hidden, head, bias)`` (then computed a chunk of rows at a time, as :func:`linear_distillation_loss`).
        teacher_values, teacher_indices: ``(*tokens, k)`` logits and class indices in [0, V).
        target, ignore_index: tokens whose target is ``ignore_index`` count for nothing (None: all count).
        reduction: ``"mean"`` over the tokens counted, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch, polyfocal as pf
        >>> z, teacher = torch.randn(4, 100), torch.randn(4, 100)
        >>> values, indices = teacher.topk(8, dim=1)
        >>> loss = pf.topk_distillation_loss(z, values, indices, temperature=2.0)
        >>> float(loss) > 0
        True
    """
    fused, (hidden, head, bias), tokens, vocabulary = _student_form(student)
    _check_topk(tokens, vocabulary, teacher_values, teacher_indices,
                _checks.should_validate(validate, teacher_indices))
    temperature = _checks.number(temperature, "temperature", low=0.0, low_open=True)
    _checks.check_reduction(reduction, None)
    ignore_index = _checks.integer(ignore_index, "ignore_index", low=-(2**63))
    if target is not None and (not isinstance(target, Tensor) or tuple(target.shape) != tokens):
        raise InputValueError(f"`target` must be None or class indices of shape {tokens}; got "
                              f"{tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__}")
    k = teacher_values.shape[-1]
    values, indices = teacher_values.detach().reshape(-1, k), teacher_indices.reshape(-1, k)
    flat, scale = _target_and_scale(target, teacher_values, ignore_index, reduction)
    if fused:
        topk = _TopKHead(values, indices, temperature, bool(renormalize), flat, ignore_index, reduction, scale,
                         chunk_rows(chunk_size, hidden, head))
        value, _ = FusedLinearLoss.apply(hidden.reshape(-1, hidden.shape[-1]), head, bias, topk)
    else:
        rows = _topk_rows(student.reshape(-1, vocabulary), values, indices, temperature, bool(renormalize))
        rows = rows if flat is None else rows * (flat != ignore_index)
        value = rows if reduction == "none" else rows.sum() * scale
    return value.reshape(tokens) if reduction == "none" else value
