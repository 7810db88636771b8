"""Fused distillation: a student trained on a teacher's distribution over a large vocabulary, from the two
linear heads a chunk of rows at a time, so that neither ``(N, V)`` logit tensor ever exists whole.

Each chunk takes the student's logits ``z`` and the teacher's ``u`` (no gradient: the teacher is a
constant), their softmaxes at temperature ``T`` (``p_S = softmax(z / T)``, ``p_T = softmax(u / T)``),
the divergence per row and its gradient in ``z``, written out (no autograd graph over the chunk):

* ``"forward_kl"``: ``KL(p_T || p_S) = sum_v p_T (log p_T - log p_S)``, gradient ``p_S - p_T``;
* ``"reverse_kl"``: ``KL(p_S || p_T)``, gradient ``p_S (d - KL)`` with ``d = log p_S - log p_T``;
* ``"jsd"``: ``beta KL(p_T || M) + (1 - beta) KL(p_S || M)``, ``M = beta p_T + (1 - beta) p_S``; its
  derivative in ``p_S`` is ``g = (1 - beta) (log p_S - log M)`` (the terms through ``M`` cancel), so the
  gradient is ``p_S (g - sum_v p_S g)``. It is 0 at ``beta = 0`` and at ``beta = 1`` (``M`` is then one
  of the two).

Each gradient is in the tempered logits ``z / T``; the loss is scaled by ``T ** 2`` (Hinton et al.'s
convention, so that the gradient's size does not shrink as ``T`` grows), which makes the gradient in
``z`` ``T`` times it. A hard loss on ``target`` (any softmax-family polyfocal loss, on the logits ``z``:
computed from ``T log p_S``, which is ``z`` less a per-row constant) runs on the same chunk, a block of rows
at a time before the divergence writes its gradient over the block, its gradient by its own engine. The
chunk loop, the gradients of hidden, head and bias, and the reductions are :mod:`polyfocal.linear`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import _checks
from ._errors import InputTypeError, InputValueError
from ._reduce import reduction_scale
from ._numerics import compute_dtype, shared_like
from .linear import FusedLinearLoss, _check_head, chunk_rows, head_logits
from .registry import softmax_loss_function

__all__ = ["linear_distillation_loss", "LinearDistillationLoss"]

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum_v a b`` per row, without an ``(n, V)`` product in memory."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(-1)


#: rows per block of a chunk's elementwise work (temporaries of BLOCK_ROWS x V, not of the chunk's size)
BLOCK_ROWS = 16


def _blocks(n: int):
    return (slice(start, min(start + BLOCK_ROWS, n)) for start in range(0, n, BLOCK_ROWS))


def log_softmax_(x: Tensor, sharded: bool = False, group=None) -> Tensor:
    """``log_softmax`` along dim 1, written over ``x`` (its exp-sum a block of rows at a time: no second
    buffer of ``x``'s size), with ``-inf`` (a masked logit) raised to the dtype's lowest number, so that its
    probability 0 times a log-ratio is 0, not NaN. ``sharded``: ``x`` holds this rank's classes of rows split
    over the ranks of ``group`` (None: the default group); the max and the exp-sum are all-reduced."""
    m = x.amax(1)
    if sharded:
        dist.all_reduce(m, dist.ReduceOp.MAX, group=group)
    x.sub_(torch.where(torch.isfinite(m), m, torch.zeros_like(m)).unsqueeze(1))
    s = torch.cat([x[rows].exp().sum(1) for rows in _blocks(x.shape[0])]) if x.shape[0] else m.new_zeros(0)
    if sharded:
        dist.all_reduce(s, group=group)
    return x.sub_(s.log().unsqueeze(1)).clamp_min_(torch.finfo(x.dtype).min)


def divergence(student_log: Tensor, teacher_log: Tensor, name: str, beta: float, gradient: bool, sharded: bool = False,
               group=None, extra: Callable | None = None):
    """Per row ``D(p_T, p_S)`` from log-probabilities ``(n, K)``, and with ``gradient`` its derivative in the
    student's softmax input (written over ``student_log``; ``teacher_log`` is written over too), or None. A
    block of rows at a time, so that its temporaries are a block's size. ``sharded``: the classes are split
    over the ranks of ``group``; each sum over them is all-reduced. ``extra(block, student_log[block])``, called
    before the block is written over, returns a gradient to add to the block's (or None)."""
    def total(a: Tensor, b: Tensor) -> Tensor:
        row_sums = _row_dot(a, b)
        if sharded:
            dist.all_reduce(row_sums, group=group)
        return row_sums

    rows = []
    for block in _blocks(student_log.shape[0]):
        more = None if extra is None else extra(block, student_log[block])
        block_rows, grad = _divergence_block(student_log[block], teacher_log[block], name, beta, gradient, total)
        rows.append(block_rows)
        if grad is not None and grad.data_ptr() != student_log[block].data_ptr():
            student_log[block] = grad
        if more is not None:
            student_log[block] += more
    loss = torch.cat(rows) if rows else student_log.new_zeros(0)
    return loss, student_log if gradient else None


def _divergence_block(ls: Tensor, lt: Tensor, name: str, beta: float, gradient: bool, total: Callable):
    """:func:`divergence` on one block of rows (module docstring for each gradient)."""
    if name == "forward_kl":
        rows = total(lt.exp(), lt - ls)
        return rows, ls.exp_().sub_(lt.exp_()) if gradient else None
    if name == "reverse_kl":
        d = lt.neg_().add_(ls)  # log p_S - log p_T, over the teacher's block
        ps = ls.exp_()
        rows = total(ps, d)
        return rows, d.sub_(rows.unsqueeze(1)).mul_(ps) if gradient else None
    log_m = torch.logaddexp(lt + _log(beta), ls + _log(1 - beta))
    rows = beta * total(lt.exp(), lt - log_m)
    g = log_m.neg_().add_(ls).mul_(1 - beta)  # (1 - beta) (log p_S - log M)
    ps = ls.exp_()
    student_part = total(ps, g)
    return rows + student_part, g.sub_(student_part.unsqueeze(1)).mul_(ps) if gradient else None


def _log(value: float) -> float:
    return math.log(value) if value > 0 else -math.inf


@dataclass(frozen=True)
class _Hard:
    """The hard part: a softmax-family loss on the student's logits and ``target``, weighted by ``weight``."""

    loss: Callable
    params: dict
    weight: float

    def rows_and_gradient(self, z: Tensor, target: Tensor, ignore_index: int, gradient: bool, grad_scale: float = 1.0):
        """The weighted rows of the loss on logits ``z`` and, with ``gradient``, their gradient times ``grad_scale``."""
        x = z.detach().requires_grad_(gradient)
        with torch.enable_grad():
            rows = self.loss(x, target, reduction="none", ignore_index=ignore_index, validate=False, **self.params)
            grad = torch.autograd.grad(rows.sum(), x)[0] if gradient else None
        return rows.detach() * self.weight, None if grad is None else grad.mul_(self.weight * grad_scale)

    def in_blocks(self, target: Tensor, ignore_index: int, temperature: float, gradient: bool):
        """The hard part a block of rows at a time, as :func:`divergence`'s ``extra``: from the block's
        log-probabilities at ``temperature`` (``T log p_S`` is the logits less a per-row constant, the same
        softmax), its gradient divided by ``T`` (the divergence's is multiplied by it afterwards), so that no
        third chunk-sized buffer waits for the divergence's. Returns ``extra`` and the list it fills with rows."""
        rows = []

        def extra(block: slice, student_log: Tensor):
            block_rows, grad = self.rows_and_gradient(student_log * temperature, target[block], ignore_index,
                                                      gradient, 1 / temperature)
            rows.append(block_rows)
            return grad

        return extra, rows


@dataclass(frozen=True)
class _DistillationHead:
    """One call of :func:`linear_distillation_loss`, as :func:`polyfocal.linear._chunk_gradients` runs it."""

    teacher: tuple  # (hidden (N, H_t), head (V, H_t), bias or None), detached
    target: Tensor | None  # (N,) class indices, or None
    ignore_index: int
    divergence: str
    beta: float
    temperature: float
    hard: _Hard | None
    reduction: str
    scale: Tensor
    chunk: int
    name: str = "linear_distillation_loss"
    #: whether both heads' classes are split over the ranks of ``group`` (:mod:`polyfocal.distill_parallel`)
    sharded: bool = False
    group: object = None

    def run_chunk(self, rows: slice, h: Tensor, weight: Tensor, bias: Tensor | None, seed: Tensor | None,
                  out: Tensor | None = None):
        """The chunk's losses and gradient, with two ``(n, V)`` buffers alive at a time: each log-softmax is
        written over its logits, and a hard part runs a block of rows at a time inside :func:`divergence`."""
        gradient, t = seed is not None, self.temperature
        target = None if self.target is None else self.target[rows]
        extra, hard = (None, None) if self.hard is None else self.hard.in_blocks(target, self.ignore_index, t, gradient)
        with torch.no_grad():
            shards = (self.sharded, self.group)
            z = head_logits(h, weight, bias, out)
            student_log = log_softmax_(z.div_(t) if t != 1 else z, *shards)
            teacher_log = log_softmax_(head_logits(self.teacher[0][rows], *self.teacher[1:]).div_(t), *shards)
            loss, grad = divergence(student_log, teacher_log, self.divergence, self.beta, gradient, *shards, extra)
            del teacher_log
            loss = loss * (t * t) if hard is None else loss * (t * t) + torch.cat(hard)
            return _finish(self, loss, None if grad is None else grad.mul_(t), seed, weight.dtype)


def _finish(head, loss: Tensor, grad: Tensor | None, seed: Tensor | None, dtype: torch.dtype):
    """The chunk's ``(loss, z-loss, gradient)`` for :func:`polyfocal.linear._chunk_gradients`, which hands a head
    no ignored row: the gradient times ``seed`` where it is per row (a scalar seed is the caller's to apply),
    in the head's dtype."""
    if grad is not None:
        grad = (grad.mul_(seed.unsqueeze(1)) if seed.dim() else grad).to(dtype)
    loss = loss if head.reduction == "none" else loss.sum()
    return loss, torch.zeros_like(loss), grad


def _check_teacher(student_hidden: Tensor, student_head: Tensor, teacher_hidden, teacher_head, teacher_bias) -> None:
    teacher_hidden = _checks.float_tensor(teacher_hidden, "teacher_hidden")
    teacher_head = _checks.float_tensor(teacher_head, "teacher_head")
    if tuple(teacher_hidden.shape[:-1]) != tuple(student_hidden.shape[:-1]):
        raise InputValueError(f"`teacher_hidden` must hold the student's tokens, shape "
                              f"{tuple(student_hidden.shape[:-1])} + (H_t,); got {tuple(teacher_hidden.shape)}")
    if teacher_head.dim() != 2 or teacher_head.shape[1] != teacher_hidden.shape[-1]:
        raise InputValueError(f"`teacher_head` must have shape (V, H_t) with H_t = {teacher_hidden.shape[-1]} "
                              f"(teacher_hidden's last dimension); got {tuple(teacher_head.shape)}")
    if teacher_head.shape[0] != student_head.shape[0]:
        raise InputValueError(f"`teacher_head` must have the student's vocabulary, V = {student_head.shape[0]}; "
                              f"got V = {teacher_head.shape[0]}")
    if teacher_head.dtype != teacher_hidden.dtype or teacher_head.device != teacher_hidden.device:
        raise InputValueError(f"`teacher_head` must have teacher_hidden's dtype and device ({teacher_hidden.dtype}, "
                              f"{teacher_hidden.device}); got {teacher_head.dtype}, {teacher_head.device}")
    if teacher_bias is not None and (not isinstance(teacher_bias, Tensor)
                                     or teacher_bias.shape != teacher_head.shape[:1]):
        got = tuple(teacher_bias.shape) if isinstance(teacher_bias, Tensor) else type(teacher_bias).__name__
        raise InputValueError(f"`teacher_bias` must be None or a ({teacher_head.shape[0]},) tensor; got {got}")


def _check_options(divergence_name, beta, temperature) -> tuple[str, float, float]:
    if divergence_name not in DIVERGENCES:
        raise InputValueError(f"`divergence` must be one of {DIVERGENCES}; got {divergence_name!r}")
    return (divergence_name, _checks.number(beta, "beta", low=0.0, high=1.0),
            _checks.number(temperature, "temperature", low=0.0, low_open=True))


def _target_and_scale(target, hidden: Tensor, ignore_index: int, reduction: str):
    """The flat target (or None) and the mean's scale: one over the tokens whose target is not
    ``ignore_index`` (every token without a target), the whole batch's count."""
    like = shared_like(compute_dtype(hidden), hidden.device)
    if target is None:
        return None, reduction_scale(reduction, hidden.numel() // max(hidden.shape[-1], 1), None, like)
    flat = target.reshape(-1)
    return flat, reduction_scale(reduction, (flat != ignore_index).sum(), None, like)


def _distillation_options(student_hidden, student_head, student_bias, teacher_hidden, teacher_head, teacher_bias,
                          target, divergence_name, beta, temperature, ignore_index, reduction) -> dict:
    """Both heads and the options checked; the :class:`_DistillationHead` fields they give (the teacher
    detached and flattened, the flat target and the mean's scale)."""
    _check_head(student_hidden, student_head, student_bias, target)
    _check_teacher(student_hidden, student_head, teacher_hidden, teacher_head, teacher_bias)
    name, beta, temperature = _check_options(divergence_name, beta, temperature)
    _checks.check_reduction(reduction, None)
    ignore_index = _checks.integer(ignore_index, "ignore_index", low=-(2**63))
    flat, scale = _target_and_scale(target, student_hidden, ignore_index, reduction)
    teacher = (teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1]), teacher_head.detach(),
               None if teacher_bias is None else teacher_bias.detach())
    return dict(teacher=teacher, target=flat, ignore_index=ignore_index, divergence=name, beta=beta,
                temperature=temperature, reduction=reduction, scale=scale)


def _hard_part(hard_loss, hard_weight, target, params: dict) -> _Hard | None:
    hard_weight = _checks.number(hard_weight, "hard_weight", low=0.0)
    if hard_loss is None:
        if params:
            raise InputTypeError(f"options {sorted(params)} are the hard loss's, but `hard_loss` is None")
        return None
    if target is None:
        raise InputValueError(f"`hard_loss={hard_loss!r}` needs `target`; got None")
    return _Hard(softmax_loss_function(hard_loss), params, hard_weight)


def linear_distillation_loss(student_hidden: Tensor, student_head: Tensor, teacher_hidden: Tensor,
                             teacher_head: Tensor, target: Tensor | None = None, *, divergence: str = "forward_kl",
                             beta: float = 0.5, temperature: float = 1.0, hard_loss: str | None = None,
                             hard_weight: float = 0.0, student_bias: Tensor | None = None,
                             teacher_bias: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                             chunk_size: int | None = None, **hard_loss_params) -> Tensor:
    """Distil a teacher's distribution over the vocabulary into a student, both given as linear heads, a
    chunk of rows at a time: neither ``(N, V)`` logit tensor exists at once (module docstring).

    Per token: ``T^2 D(p_T, p_S) + hard_weight * hard_loss(student logits, target)``, with ``p = softmax(logits
    / T)`` and ``D`` the ``divergence``: ``"forward_kl"`` ``KL(p_T || p_S)`` (the usual direction),
    ``"reverse_kl"`` ``KL(p_S || p_T)``, or ``"jsd"`` ``beta KL(p_T || M) + (1 - beta) KL(p_S || M)``,
    ``M = beta p_T + (1 - beta) p_S``. The ``T^2`` is Hinton et al.'s scaling. The teacher is a constant:
    gradients reach ``student_hidden``, ``student_head`` and ``student_bias`` only, and a teacher tensor
    that requires a gradient is used detached.

    Args:
        student_hidden, student_head, student_bias: ``(N, H)`` or ``(B, T, H)``, ``(V, H)``, ``(V,)`` or None.
        teacher_hidden, teacher_head, teacher_bias: the teacher's, same tokens and vocabulary (its own H).
        target: class indices of the tokens, or None; tokens at ``ignore_index`` count in neither part.
        divergence, beta, temperature: as above; ``beta`` in [0, 1], ``temperature > 0``.
        hard_loss: a softmax-family loss by name (``"cross_entropy"``, ``"focal_loss"``...) on the student's
            logits (not tempered) and ``target``, weighted by ``hard_weight``; ``**hard_loss_params`` are its
            options (``gamma``, ``label_smoothing``...).
        reduction: ``"mean"`` (each token's loss summed over the vocabulary, divided by the number of tokens
            counted, the whole batch's), ``"sum"`` or ``"none"`` (per token).
        chunk_size: rows per chunk, as :func:`polyfocal.linear_loss` (same default).

    Example:
        >>> import torch, polyfocal as pf
        >>> hs, ws, ht, wt = torch.randn(6, 8), torch.randn(50, 8), torch.randn(6, 16), torch.randn(50, 16)
        >>> loss = pf.linear_distillation_loss(hs, ws, ht, wt, temperature=2.0)
        >>> want = 4 * torch.nn.functional.kl_div((hs @ ws.T / 2).log_softmax(1), (ht @ wt.T / 2).log_softmax(1),
        ...                                       log_target=True, reduction="batchmean")
        >>> bool(loss.isclose(want))
        True
    """
    options = _distillation_options(student_hidden, student_head, student_bias, teacher_hidden, teacher_head,
                                    teacher_bias, target, divergence, beta, temperature, ignore_index, reduction)
    validate = hard_loss_params.pop("validate", None)
    hard = _hard_part(hard_loss, hard_weight, target, hard_loss_params)
    if target is not None and _checks.should_validate(validate, student_hidden):
        _checks.check_index_range(options["target"], student_head.shape[0], ignore_index)
    head = _DistillationHead(**options, hard=hard, chunk=chunk_rows(chunk_size, student_hidden, student_head))
    value, _ = FusedLinearLoss.apply(student_hidden.reshape(-1, student_hidden.shape[-1]), student_head,
                                     student_bias, head)
    return (value.reshape(student_hidden.shape[:-1]) if reduction == "none" else value).to(student_hidden.dtype)


class LinearDistillationLoss(nn.Module):
    """Module form of :func:`linear_distillation_loss`: ``LinearDistillationLoss(divergence="jsd", beta=0.5,
    temperature=2.0, hard_loss="cross_entropy", hard_weight=0.5)(student_hidden, student_head, teacher_hidden,
    teacher_head, target=None, student_bias=None, teacher_bias=None)``."""

    def __init__(self, **options):
        super().__init__()
        _check_options(options.get("divergence", "forward_kl"), options.get("beta", 0.5),
                       options.get("temperature", 1.0))
        if options.get("hard_loss") is not None:
            softmax_loss_function(options["hard_loss"])
        self.options = options

    def forward(self, student_hidden: Tensor, student_head: Tensor, teacher_hidden: Tensor, teacher_head: Tensor,
                target: Tensor | None = None, student_bias: Tensor | None = None,
                teacher_bias: Tensor | None = None) -> Tensor:
        return linear_distillation_loss(student_hidden, student_head, teacher_hidden, teacher_head, target,
                                        student_bias=student_bias, teacher_bias=teacher_bias, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
