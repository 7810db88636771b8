"""The softmax family's fused kernels, on the engine of :mod:`polyfocal._fused`.

* class-index targets: the *row engine*, a pass for the row statistics (target logit, max and
  exp-sum of the others) that ends with the loss's scalar function ``phi(p_t)`` and its partial
  derivatives on the N rows (by autograd), and a loss-independent pass that writes the
  gradient. A new loss is a new ``phi``, nothing more; the Triton kernels of
  :mod:`polyfocal._triton` are the same two passes.
* probability targets (and label smoothing): every class's probability in the four parts of a
  :class:`~polyfocal._numerics.Probability`, and the gradient written out from the loss's
  derivative in each ``log p_c`` (:func:`soft_rows_and_gradient`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from contextvars import ContextVar
from typing import Callable

import torch
from torch import Tensor

from ._fused import (as_tensors, class_indices, log_slope, rows_3d, run, shape_3d, sigmoid_parts,
                     with_saved_gradient)
from ._math import SLOPES, VALUES_AND_SLOPES
from ._numerics import Probability, class_sum, in_dtype, is_class, optional_product, sigmoid_probability


# --- softmax losses with probability targets (and label smoothing) ------------------------------

def parts_read(phi: Callable, params: dict) -> tuple[bool, bool, bool, bool]:
    """Which of its probability's four parts ``phi`` reads, by autograd on one element (cached): the
    kernels then leave out the chain-rule terms of the others (zeros the compiler cannot drop)."""
    return _parts_read(phi, tuple(sorted(params.items())))


@functools.lru_cache(maxsize=256)
def _parts_read(phi: Callable, params: tuple) -> tuple[bool, bool, bool, bool]:
    params = dict(params)
    device = next((v.device for v in params.values() if isinstance(v, Tensor)), None)
    parts = [torch.tensor([v], dtype=torch.float64, device=device, requires_grad=True)
             for v in (math.log(0.3), math.log(0.7), 0.3, 0.7)]
    with torch.enable_grad():
        grads = torch.autograd.grad(phi(Probability(*parts), **params).sum(), parts, allow_unused=True)
    return tuple(g is not None for g in grads)


def _softmax_parts(x: Tensor, classes: Tensor) -> Probability:
    """Every class's probability in four parts. ``1 - p`` is exact for the most probable class too
    (the others' share of the row, the only class that can have ``p > 1/2``)."""
    m = x.amax(1, keepdim=True)
    e = torch.exp(x - m)
    s = class_sum(e, keepdim=True)
    top = is_class(x, x.argmax(1), classes)
    rest = class_sum(e.masked_fill(top, 0), keepdim=True)
    logp = x - m - torch.log(s)
    p = e / s
    q = torch.where(top, rest / s, 1 - p)
    log1m = torch.where(top, torch.log(rest) - torch.log(s), torch.log1p(-p))
    return Probability(logp, log1m, p, q)


def soft_rows_and_gradient(x: Tensor, scale: Tensor, target, phi: Callable,
                           classes: Tensor, read: tuple[bool, bool, bool, bool], **params):
    """``sum_c y_c phi(p_c)`` per row, ``y = target.build(x)`` (a ``DenseTarget``: built here, not loaded), and
    the gradient of the rows' sum times ``scale``.

    With ``D_c`` the derivative of ``y_c phi(p_c)`` in ``log p_c`` (autograd of ``phi`` in the four
    parts, carried through ``p = exp(log p)`` and ``log(1-p)``, for the parts it ``read``s; the term
    of ``log(1-p)`` is 0 where ``1-p`` is), the gradient is ``D_j - p_j sum_c D_c``.
    """
    prob, y = _softmax_parts(x, classes), target.build(x, classes)
    value, pullback = torch.func.vjp(lambda *parts: y * phi(Probability(*parts), **params), *prob)
    d_logp, d_log1m, d_p, d_q = pullback(scale.expand_as(x))
    d = d_logp
    if read[2] or read[3]:
        d = d + (d_p - d_q) * prob.p
    if read[1]:
        d = d - torch.where(prob.one_minus_p > 0, d_log1m * prob.p / prob.one_minus_p, torch.zeros_like(x))
    return class_sum(value), d - prob.p * class_sum(d, keepdim=True)


# --- the softmax row engine for class-index targets -----------------------------------------------

def _row_max(x: Tensor, t: Tensor, classes: Tensor | None):
    """The target mask, and per row the max ``m`` of the non-target logits and ``x_t - m``."""
    target = is_class(x, t, classes)
    m_other = x.masked_fill(target, float("-inf")).amax(1)
    return target, m_other, x.gather(1, t.unsqueeze(1)).squeeze(1) - m_other


def _row_statistics(x: Tensor, t: Tensor, dtype: torch.dtype, classes: Tensor | None = None):
    """Per row: ``x_t - m``, the max ``m`` and shifted exp-sum ``s`` of the non-target logits; and
    ``exp(x_k - m)`` off the target (0 on it) in the logits' dtype, the gradient's buffer to be."""
    x_in, x = x, x.to(dtype)
    target, m_other, shifted_t = _row_max(x, t, classes)
    exp_other = torch.exp(x - m_other.unsqueeze(1)).masked_fill(target, 0)
    return shifted_t, m_other, class_sum(exp_other), exp_other.to(x_in.dtype)


def _row_gradient_in_place(exp_other: Tensor, at: Tensor, other_coef: Tensor, target_grad: Tensor) -> Tensor:
    """``exp(x_k - m) * other_coef`` off the target and ``target_grad`` on it (the labels ``at``,
    ``(N, 1, *)``), written over ``exp_other``."""
    exp_other.mul_(other_coef.unsqueeze(1))
    return exp_other.scatter_(1, at, in_dtype(target_grad, exp_other.dtype).unsqueeze(1))


def _row_partials(phi: Callable, shifted_t: Tensor, s_other: Tensor, factor, scale: Tensor, params: dict):
    """The row losses and the two per-row coefficients of the gradient (see :func:`softmax_rows`)."""
    # p_t = sigmoid(x_t - logsumexp of the others): its four parts from that margin, each exact (a
    # difference of two log-sum-exps would lose the bits of 1 - p_t below the rounding of log s)
    prob = sigmoid_parts(shifted_t - torch.log(s_other))
    rows, target_grad = log_slope(lambda prob: phi(prob, **params) * factor, prob, scale.expand_as(shifted_t))
    return rows, -target_grad / s_other, target_grad


def _statistics_and_partials(phi: Callable, x: Tensor, t: Tensor, classes: Tensor, dtype: torch.dtype, factor,
                             scale: Tensor, params: dict):
    shifted_t, _, s_other, exp_other = _row_statistics(x, t, dtype, classes)
    rows, other_coef, target_grad = _row_partials(phi, shifted_t, s_other, factor, scale, params)
    return rows, exp_other, other_coef, target_grad


def _rows_and_gradient_over(phi: Callable, x: Tensor, t: Tensor, classes: Tensor, dtype: torch.dtype, factor,
                            scale: Tensor, params: dict) -> Tensor:
    """The row losses, with their gradient written over ``x`` (in ``dtype``; logits their caller gave up,
    :func:`logits_given_up`): ``exp(x_k - m) * other_coef`` off the target, ``target_grad`` on it. Its
    exponentials are two expressions, one summed, one stored with its row's coefficient, so that the compiled
    kernel computes them in both loops and holds no logits-sized temporary (one expression with two uses is
    materialised: a second buffer, the one this saves), and no eager pass over the logits is left to do."""
    target, m_other, shifted_t = _row_max(x, t, classes)
    s_other = class_sum(torch.exp(x - m_other.unsqueeze(1)).masked_fill(target, 0))
    rows, other_coef, target_grad = _row_partials(phi, shifted_t, s_other, factor, scale, params)
    other = torch.exp(x - m_other.unsqueeze(1)) * other_coef.unsqueeze(1)
    x.copy_(torch.where(target, target_grad.unsqueeze(1), other))
    return rows


def _eager_statistics(x: Tensor, at: Tensor, dtype: torch.dtype, over: bool = False):
    """:func:`_row_statistics` in a few eager ops, for small inputs (``at`` the labels ``(N, 1, *)``): the
    target masked in a copy (``over``: in ``x`` itself, in ``dtype``) that becomes ``exp(x_k - m)`` in place
    (``exp(-inf) = 0`` on the target). No conversion where the logits are in ``dtype`` already
    (:func:`~polyfocal._numerics.in_dtype`)."""
    x_t = x.gather(1, at)
    exp_other = x.scatter_(1, at, float("-inf")) if over else in_dtype(x, dtype).scatter(1, at, float("-inf"))
    m_other = exp_other.amax(1, keepdim=True)
    shifted_t = in_dtype(x_t, dtype).sub_(m_other).squeeze(1)
    return shifted_t, class_sum(exp_other.sub_(m_other).exp_()), exp_other


def _target_probability(shifted_t: Tensor, s_other: Tensor) -> Probability:
    """``p_t = sigmoid(x_t - logsumexp of the others)`` in its four parts, by eager ops."""
    return sigmoid_probability(shifted_t - torch.log(s_other))


def _eager_partials(phi: Callable, shifted_t: Tensor, s_other: Tensor, factor, scale: Tensor, params: dict):
    """:func:`_row_partials` with the loss's written-out slope (``_math.SLOPES``) where it has one, and its
    value from the same call where they share terms (``_math.VALUES_AND_SLOPES``): on a few hundred rows
    autograd's bookkeeping costs more than the whole pass over the logits. ``factor`` None stands for 1
    (no row ignored or weighted)."""
    slope = SLOPES.get(phi)
    if slope is None:
        return _row_partials(phi, shifted_t, s_other, 1.0 if factor is None else factor, scale, params)
    prob = _target_probability(shifted_t, s_other)
    joint = VALUES_AND_SLOPES.get(phi)
    rows, d_rows = joint(prob, **params) if joint else (phi(prob, **params), slope(prob, **params))
    target_grad = d_rows * optional_product(scale, factor)
    return optional_product(rows, factor), -target_grad / s_other, target_grad


# --- the three ways the row engine runs: each ``(phi, params, logits, t, factor, dtype, scale, gradient,
# over)`` -> ``(rows, grad)``, the rows ``(N, *)`` and the gradient of their sum times ``scale`` (None without
# ``gradient``), for logits ``(N, C, *)``; with ``over`` the gradient may be written over the logits

def eager_rows(phi: Callable, params: dict, x: Tensor, t: Tensor, factor, dtype: torch.dtype, scale: Tensor,
               gradient: bool = True, over: bool = False):
    """The passes as a handful of eager ops, with the loss's written-out slope on the rows (no
    compilation, no per-call compiled-code overhead: small inputs); they take (N, C, *) as it comes."""
    at = t.unsqueeze(1)
    shifted_t, s_other, exp_other = _eager_statistics(x, at, dtype, over)
    if not gradient:
        return optional_product(phi(_target_probability(shifted_t, s_other), **params), factor), None
    rows, other_coef, target_grad = _eager_partials(phi, shifted_t, s_other, factor, scale, params)
    grad = _row_gradient_in_place(exp_other, at, other_coef, target_grad)
    return rows, in_dtype(grad, x.dtype)


def fused_rows(phi: Callable, params: dict, logits: Tensor, t: Tensor, factor, dtype: torch.dtype, scale: Tensor,
               gradient: bool = True, over: bool = False):
    """One compiled pass computes the statistics and writes ``exp(x_k - m)`` into the buffer that
    becomes the gradient, then one in-place multiply by the row coefficient (a vectorised eager op)
    finishes it: one exponential per element in all (the gradient too for the values alone: it costs
    less than a second, values-only kernel would save). With ``over`` the kernel writes the whole
    gradient over the logits themselves (two exponentials per element, one pass fewer over memory)."""
    shape = logits.shape
    x, t, factor = logits.reshape(shape_3d(shape)), rows_3d(t, shape), rows_3d(factor, shape)
    classes, params = class_indices(x.shape[1], x.device), as_tensors(params, scale)
    if over:
        rows, grad = _run_over(phi, x, t, classes, dtype, factor, scale, params), x
    else:
        rows, exp_other, other_coef, target_grad = run(_statistics_and_partials, phi, x, t, classes, dtype, factor,
                                                       scale, params)
        grad = _row_gradient_in_place(exp_other, t.unsqueeze(1), other_coef, target_grad)
    return rows.reshape(shape[:1] + shape[2:]), grad.reshape(shape)


class LogitsWrittenOver(RuntimeError):
    """The fused kernel failed after it had written over logits given up to it (:func:`logits_given_up`): no
    other engine can run on them; their owner makes them again."""


def _run_over(phi: Callable, x: Tensor, t: Tensor, classes: Tensor, dtype: torch.dtype, factor, scale, params):
    """:func:`_rows_and_gradient_over`, compiled. A failure before it wrote ``x`` (its compilation) lets the
    caller fall back as for any kernel; one after (dynamo ran the frame as Python, then refused it: under a
    dispatch mode, with ``fullgraph``) raises :class:`LogitsWrittenOver`, never a fallback on the gradient."""
    version = x._version
    try:
        return run(_rows_and_gradient_over, phi, x, t, classes, dtype, factor, scale, params)
    except Exception as error:
        if x._version != version:
            raise LogitsWrittenOver("the fused kernel failed after writing over the logits given up to it") from error
        raise


def triton_rows(phi: Callable, params: dict, logits: Tensor, t: Tensor, factor, dtype: torch.dtype, scale: Tensor,
                gradient: bool = True, over: bool = False):
    """The Triton kernels make two passes (statistics, then gradient), with the written-out slope's few
    eager ops on the N rows between them; they compute in fp32, so an fp64 loss takes :func:`fused_rows`.
    They write the gradient into a buffer of their own (``over`` is not taken here)."""
    from . import _triton  # noqa: PLC0415 (Triton is optional and loads lazily)

    if not _triton.handles(dtype):
        return fused_rows(phi, params, logits, t, factor, dtype, scale, gradient, over)
    shape = logits.shape
    x, t, factor = logits.reshape(shape_3d(shape)), rows_3d(t, shape), rows_3d(factor, shape)
    shifted_t, m_other, s_other = _triton.row_statistics(x, t, dtype)
    rows, other_coef, target_grad = _eager_partials(phi, shifted_t, s_other, factor, scale, as_tensors(params, scale))
    grad = _triton.row_gradient(x, t, m_other, other_coef, target_grad)
    return rows.reshape(shape[:1] + shape[2:]), grad.reshape(shape)


#: the row engine's kernels, by the engine :func:`polyfocal._backend.engine_for` chose
ROW_KERNELS: dict[str, Callable] = {"eager": eager_rows, "fused": fused_rows, "triton": triton_rows}


#: logits that their caller gives up to the row kernel (:func:`logits_given_up`)
_GIVEN_UP: ContextVar[Tensor | None] = ContextVar("polyfocal_logits_given_up", default=None)


@contextlib.contextmanager
def logits_given_up(logits: Tensor):
    """Within this context the row kernels may write the gradient over ``logits`` (that tensor object, in the
    compute dtype, where the call needs a gradient): one logits-sized buffer instead of two. The linear head
    gives up each chunk's logits, which live in a buffer of its own; a loss called on any other tensor never
    writes it."""
    token = _GIVEN_UP.set(logits)
    try:
        yield
    finally:
        _GIVEN_UP.reset(token)


def is_given_up(logits: Tensor) -> bool:
    """Whether ``logits`` are those given up to the row kernels (:func:`logits_given_up`)."""
    return _GIVEN_UP.get() is logits


def softmax_rows(kernel: Callable, phi: Callable, params: dict, logits: Tensor, t: Tensor, factor, *,
                 dtype: torch.dtype, scale: Tensor, summed: bool, reference: Callable[[Tensor], Tensor]) -> Tensor:
    """A softmax loss ``factor * phi(p_t)`` per row, computed by ``kernel`` (one of :data:`ROW_KERNELS`),
    with its saved gradient.

    With ``m``/``s`` the max and shifted exp-sum of the non-target logits, ``log(1-p_t)`` and
    ``log p_t`` follow exactly. The row loss ``L`` depends on the logits through ``p_t`` alone; with
    ``g = dL/dx_t`` (the written-out slope, or :func:`log_slope`, autograd of ``phi`` on the N rows)
    the other classes get ``-g p_k / (1-p_t) = -g exp(x_k - m) / s``: one exponential per element, no
    overflow, and no cancellation for losses that fall as p_t rises.

    ``reference(logits)`` is the same loss by autograd, for second derivatives.
    """
    gradient = logits.requires_grad and torch.is_grad_enabled()
    over = gradient and is_given_up(logits) and logits.dtype == dtype
    with torch.no_grad():
        rows, grad = kernel(phi, params, logits, t, factor, dtype, scale, gradient, over)
        rows = rows.sum() * scale if summed else rows
    return with_saved_gradient(logits, rows, grad, reference) if gradient else rows
