"""The fused engine: the forward pass computes the gradient, and only the gradient is saved.

The same math as the reference engine, compiled with ``torch.compile`` (inductor: vectorised
C++ on CPU, Triton on GPU) with dynamic shapes and hyperparameters passed as tensors, so new
shapes or new gammas do not recompile (0, 1 and 2 stay numbers: ``(1-p)^2`` compiles to one
multiplication). Backward is one multiply by ``grad_output`` (none at
all when it is 1). Three mechanisms:

* softmax losses with class-index targets use one *row engine*: a pass for the row statistics
  (target logit, max and exp-sum of the others) that ends with the loss's scalar function
  ``phi(p_t)`` and its partial derivatives on the N rows (by autograd), and
  a loss-independent pass that writes the gradient. A new loss is a new ``phi``, nothing more;
  the Triton kernels of :mod:`polyfocal._triton` are the same two passes.
* sigmoid losses are functions of a :class:`~polyfocal._numerics.Probability` (``log p``,
  ``log(1-p)``, ``p``, ``1-p``): the kernel takes all four from one exponential, one ``log1p``
  and one division per element, and carries autograd of the loss's
  function alone to the logit (:func:`log_sigmoid_slope`, the same step as the row engine's target);
* softmax losses with probability targets (and label smoothing) take every class's probability
  in the four parts and write the gradient out from the loss's derivative in each ``log p_c``
  (:func:`soft_rows_and_gradient`); GHM's written-out gradient lives in :mod:`polyfocal.ghm`;
  every other case compiles ``value_and_grad`` of the reference engine's element function.

Class indices enter the kernels as a cached ``arange(C)`` tensor (:func:`class_indices`): the
compiled loop then loads it, where an index generated inside the loop costs as much as the loss.

If compilation fails (no C++ compiler, an unsupported platform), the engine warns once and
the reference engine takes over. Set ``POLYFOCAL_STRICT=1`` to raise instead.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from typing import Callable

import torch
from torch import Tensor

from ._numerics import Probability, is_class, is_special_exponent

_compiled: dict[Callable, Callable] = {}
_broken: str | None = None
RECOMPILE_LIMIT = 256  # compiled variants (loss, target form, dtype, ...) per kernel; more run uncompiled
# raised at that limit under fullgraph=True (FailOnCacheLimitHit before torch 2.6)
_LIMIT_HIT = tuple(getattr(torch._dynamo.exc, name) for name in ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")
                   if hasattr(torch._dynamo.exc, name))
_limit_warned: set[str] = set()


class FusedUnavailable(RuntimeError):
    """The fused engine cannot run here; the caller falls back to the reference engine."""


def available() -> bool:
    return _broken is None


@contextlib.contextmanager
def _saved_tensor_hooks_suspended():
    """Lift the caller's saved-tensor hooks (``save_on_cpu``, activation offloading) for a kernel call.

    ``torch.func`` refuses to trace under them, and a first call inside such a context would
    otherwise disable the engine. The kernels save nothing for autograd (they run in no-grad mode
    in :class:`_SavedGradient`'s forward), so the hooks have nothing to act on there; the gradient
    that forward saves does go through them.
    """
    autograd = torch._C._autograd
    lifted = []
    while (hooks := autograd._top_saved_tensors_default_hooks(False)) is not None:
        autograd._pop_saved_tensors_default_hooks()
        lifted.append(hooks)
    try:
        yield
    finally:
        for pack, unpack in reversed(lifted):
            autograd._push_saved_tensors_default_hooks(pack, unpack)


def run(kernel: Callable, *args):
    """Call the compiled ``kernel``; a failure disables the fused engine (or raises when strict)."""
    global _broken
    if kernel not in _compiled:
        _compiled[kernel] = torch.compile(kernel, dynamic=True, fullgraph=True)
    try:
        # One kernel serves every loss and dtype: each is a specialisation, not a recompile storm.
        with (torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT,
                                         accumulated_recompile_limit=16 * RECOMPILE_LIMIT),
              _saved_tensor_hooks_suspended()):
            try:
                return _compiled[kernel](*args)
            except _LIMIT_HIT:
                return _uncompiled(kernel, *args)
    except (MemoryError, torch.OutOfMemoryError):
        raise  # the input's size, not the engine: the reference engine would need more memory still
    except Exception as error:  # compilation errors come in many types
        if os.environ.get("POLYFOCAL_STRICT"):
            raise
        _broken = f"{type(error).__name__}: {error}"
        warnings.warn(f"polyfocal: the fused engine is unavailable ({_broken}); using the reference engine",
                      RuntimeWarning, stacklevel=3)
        raise FusedUnavailable(_broken) from error


def _uncompiled(kernel: Callable, *args):
    """A variant past :data:`RECOMPILE_LIMIT`: the same math, run eagerly (slower, the same memory
    saved for backward); the engine stays on for the variants already compiled."""
    if kernel.__name__ not in _limit_warned:
        _limit_warned.add(kernel.__name__)
        warnings.warn(f"polyfocal: {RECOMPILE_LIMIT} variants of the fused kernel {kernel.__name__} are compiled "
                      "in this process; further ones run uncompiled", RuntimeWarning, stacklevel=4)
    return kernel(*args)


class _SavedGradient(torch.autograd.Function):
    """Returns a loss computed with its gradient; backward multiplies the saved gradient."""

    @staticmethod
    def forward(ctx, logits: Tensor, compute: Callable):
        loss, grad = compute()
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        if grad_output.dim() == 0:
            if grad_output.device.type == "cpu" and float(grad_output) == 1.0:
                return grad, None
            return grad * grad_output.to(grad.dtype), None
        if grad_output.dim() < grad.dim():  # per-row losses of the softmax family
            grad_output = grad_output.unsqueeze(1)
        return grad * grad_output.to(grad.dtype), None


def with_saved_gradient(logits: Tensor, compute: Callable[[], tuple[Tensor, Tensor]]) -> Tensor:
    return _SavedGradient.apply(logits, compute)


def as_tensors(params: dict, like: Tensor) -> dict:
    """Numbers (and tuples of numbers) as 0-d tensors, so the compiled code treats them as inputs;
    but 0, 1 and 2 stay numbers, compiled as constants (:func:`polyfocal._numerics.power`)."""
    def convert(value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not is_special_exponent(value):
            return torch.tensor(float(value), dtype=like.dtype, device=like.device)
        if isinstance(value, tuple):
            return tuple(convert(v) for v in value)
        return value
    return {name: convert(value) for name, value in params.items()}


@functools.lru_cache(maxsize=32)
def class_indices(num_classes: int, device: torch.device) -> Tensor:
    """``arange(C)``, made once per size and device, for :func:`polyfocal._numerics.is_class`."""
    return torch.arange(num_classes, device=device)


# --- canonical shapes: every call compiles for 3-d inputs, whatever the caller's rank -------------

def shape_3d(shape) -> tuple[int, int, int]:
    """``(N, C, L)`` for ``(N, C, *)``; lower ranks padded with ones."""
    shape = tuple(shape) + (1,) * max(0, 2 - len(shape))
    return (shape[0], shape[1], math.prod(shape[2:]))


def full_3d(tensor, shape):
    """A tensor broadcastable to ``shape``, as ``shape_3d(shape)`` (a view when it already has ``shape``)."""
    if not isinstance(tensor, Tensor):
        return tensor
    return tensor.expand(shape).reshape(shape_3d(shape))


def rows_3d(tensor, shape):
    """A per-row tensor ``(N, *)`` of logits ``shape`` ``(N, C, *)``, as ``(N, L)``."""
    if not isinstance(tensor, Tensor):
        return tensor
    n, _, length = shape_3d(shape)
    return tensor.expand((shape[0],) + tuple(shape[2:])).reshape(n, length)


# --- the derivative through a probability ---------------------------------------------------------

def log_slope(phi: Callable, prob: Probability, cotangent: Tensor):
    """``phi(P)`` and its derivative in the logit margin ``z`` (``p = sigmoid(z)``, or the softmax
    probability with ``z`` the target logit). With ``d`` the partials of ``phi`` in ``P``'s four
    parts (autograd of ``phi`` alone, times ``cotangent``) and ``dp/dz = p (1-p)``, the chain rule is
    ``d_logp (1-p) - d_log1m p + (d_p - d_q) p (1-p)``, with ``1-p`` exact."""
    value, pullback = torch.func.vjp(lambda *parts: phi(Probability(*parts)), *prob)
    d_logp, d_log1m, d_p, d_q = pullback(cotangent)
    p, q = prob.p, prob.q
    return value, d_logp * q - d_log1m * p + (d_p - d_q) * (p * q)


def sigmoid_parts(z: Tensor) -> Probability:
    """``p = sigmoid(z)`` in its four parts from one exponential, one ``log1p`` and one division per
    element (each exact where the other rounds to 1)."""
    e = torch.exp(-z.abs())
    log_e = torch.log1p(e)
    big = 1 / (1 + e)
    small = e * big  # sigmoid(|z|), sigmoid(-|z|): one division
    positive = z >= 0
    logp, log1m = torch.clamp_max(z, 0) - log_e, torch.clamp_max(-z, 0) - log_e
    return Probability(logp, log1m, torch.where(positive, big, small), torch.where(positive, small, big))


def log_sigmoid_slope(phi: Callable, z: Tensor, cotangent: Tensor):
    """``phi(sigmoid(z))`` and its derivative in ``z`` (:func:`log_slope` on :func:`sigmoid_parts`;
    autograd through ``logsigmoid`` and ``sigmoid`` would take two of each)."""
    return log_slope(phi, sigmoid_parts(z), cotangent)


# --- generic: value and gradient of an element function -------------------------------------------

def _autograd_gradient(x: Tensor, scale: Tensor, f: Callable, *args, **params):
    """``f``'s elements and the gradient of their sum times ``scale``, by autograd."""
    loss, pullback = torch.func.vjp(lambda z: f(z, *args, **params), x)
    (grad,) = pullback(torch.ones_like(loss) * scale)
    return loss, grad


def _value_and_grad_kernel(f: Callable, summed: bool, x: Tensor, scale: Tensor, dtype: torch.dtype,
                           args: tuple, params: dict):
    loss, grad = f(x.to(dtype), scale, *args, **params)
    return (loss.sum() * scale if summed else loss), grad.to(x.dtype)


def value_and_grad(f: Callable, logits: Tensor, args: tuple, params: dict, *, dtype: torch.dtype,
                   scale: Tensor, summed: bool, loss_shape=None, with_gradient: bool = False) -> Tensor:
    """``f(logits, *args, **params)`` (summed and scaled, or per element) with a saved gradient.

    ``logits`` is viewed as 3-d; ``args`` and ``params`` must already fit that view, and a
    per-element loss is returned with ``loss_shape``. The gradient is autograd's, or with
    ``with_gradient`` ``f``'s own: ``f(logits, scale, *args, **params)`` returns the elements'
    losses and the gradient of their sum times ``scale``.
    """
    params = as_tensors(params, scale)
    if not with_gradient:
        f, args = _autograd_gradient, (f, *args)

    def compute():
        loss, grad = run(_value_and_grad_kernel, f, summed, logits.reshape(shape_3d(logits.shape)), scale, dtype,
                         args, params)
        return (loss if summed else loss.reshape(loss_shape)), grad.reshape(logits.shape)

    return with_saved_gradient(logits, compute)


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
    s = e.sum(1, keepdim=True)
    top = is_class(x, x.argmax(1), classes)
    rest = e.masked_fill(top, 0).sum(1, keepdim=True)
    logp = x - m - torch.log(s)
    p = e / s
    q = torch.where(top, rest / s, 1 - p)
    log1m = torch.where(top, torch.log(rest) - torch.log(s), torch.log1p(-p))
    return Probability(logp, log1m, p, q)


def soft_rows_and_gradient(x: Tensor, scale: Tensor, target: Callable, target_args: tuple, phi: Callable,
                           classes: Tensor, read: tuple[bool, bool, bool, bool], **params):
    """``sum_c y_c phi(p_c)`` per row, ``y = target(x, *target_args)`` (built here, not loaded), and
    the gradient of the rows' sum times ``scale``.

    With ``D_c`` the derivative of ``y_c phi(p_c)`` in ``log p_c`` (autograd of ``phi`` in the four
    parts, carried through ``p = exp(log p)`` and ``log(1-p)``, for the parts it ``read``s; the term
    of ``log(1-p)`` is 0 where ``1-p`` is), the gradient is ``D_j - p_j sum_c D_c``.
    """
    prob, y = _softmax_parts(x, classes), target(x, *target_args, classes=classes)
    value, pullback = torch.func.vjp(lambda *parts: y * phi(Probability(*parts), **params), *prob)
    d_logp, d_log1m, d_p, d_q = pullback(scale.expand_as(x))
    d = d_logp
    if read[2] or read[3]:
        d = d + (d_p - d_q) * prob.p
    if read[1]:
        d = d - torch.where(prob.q > 0, d_log1m * prob.p / prob.q, torch.zeros_like(x))
    return value.sum(1), d - prob.p * d.sum(1, keepdim=True)


# --- the softmax row engine for class-index targets -----------------------------------------------

def _row_statistics(x: Tensor, t: Tensor, dtype: torch.dtype, classes: Tensor | None = None):
    """Per row: ``x_t - m``, the max ``m`` and shifted exp-sum ``s`` of the non-target logits; and
    ``exp(x_k - m)`` off the target (0 on it) in the logits' dtype, the gradient's buffer to be."""
    x_in, x = x, x.to(dtype)
    target = is_class(x, t, classes)
    m_other = x.masked_fill(target, float("-inf")).amax(1)
    exp_other = torch.exp(x - m_other.unsqueeze(1)).masked_fill(target, 0)
    return (x.gather(1, t.unsqueeze(1)).squeeze(1) - m_other, m_other, exp_other.sum(1),
            exp_other.to(x_in.dtype))


def _row_gradient_in_place(exp_other: Tensor, t: Tensor, other_coef: Tensor, target_grad: Tensor) -> Tensor:
    """``exp(x_k - m) * other_coef`` off the target and ``target_grad`` on it, written over ``exp_other``."""
    exp_other.mul_(other_coef.unsqueeze(1))
    return exp_other.scatter_(1, t.unsqueeze(1), target_grad.unsqueeze(1).to(exp_other.dtype))


def _row_partials(phi: Callable, shifted_t: Tensor, s_other: Tensor, factor, scale: Tensor, params: dict):
    """The row losses and the two per-row coefficients of the gradient (see :func:`softmax_rows`)."""
    log_s = torch.log(s_other)
    lse = torch.logaddexp(shifted_t, log_s)  # relative to m: no large magnitudes to cancel
    logp, log1m = shifted_t - lse, log_s - lse
    p_t, q_t = torch.exp(logp), torch.exp(log1m)  # q_t = 1 - p_t, exact
    rows, target_grad = log_slope(lambda prob: phi(prob, **params) * factor, Probability(logp, log1m, p_t, q_t),
                                  scale.expand_as(logp))
    return rows, -target_grad / s_other, target_grad


def _statistics_and_partials(phi: Callable, x: Tensor, t: Tensor, classes: Tensor, dtype: torch.dtype, factor,
                             scale: Tensor, params: dict):
    shifted_t, _, s_other, exp_other = _row_statistics(x, t, dtype, classes)
    rows, other_coef, target_grad = _row_partials(phi, shifted_t, s_other, factor, scale, params)
    return rows, exp_other, other_coef, target_grad


def softmax_rows(phi: Callable, params: dict, logits: Tensor, t: Tensor, factor, *, dtype: torch.dtype,
                 scale: Tensor, summed: bool, use_triton: bool = False) -> Tensor:
    """A softmax loss ``factor * phi(p_t)`` per row, with its saved gradient.

    With ``m``/``s`` the max and shifted exp-sum of the non-target logits, ``log(1-p_t)`` and
    ``log p_t`` follow exactly. The row loss ``L`` depends on the logits through ``p_t`` alone; with
    ``g = dL/dx_t`` (:func:`log_slope`, autograd of ``phi`` on the N rows) the other classes get
    ``-g p_k / (1-p_t) = -g exp(x_k - m) / s``: one exponential per element, no overflow, and no
    cancellation for losses that fall as p_t rises. On CPU one compiled pass computes the statistics and writes
    ``exp(x_k - m)`` into the buffer that becomes the gradient, then one in-place multiply
    by the row coefficient (a vectorised eager op) finishes it: one exponential per element
    in all. The Triton kernels make two passes (statistics, then gradient); they compute in
    fp32, so with ``use_triton`` an fp64 loss still takes the compiled passes.
    """
    shape = logits.shape
    x, t, factor = logits.reshape(shape_3d(shape)), rows_3d(t, shape), rows_3d(factor, shape)
    params = as_tensors(params, scale)

    def compute():
        from . import _triton  # noqa: PLC0415 (Triton is optional and loads lazily)

        if use_triton and _triton.handles(dtype):
            shifted_t, m_other, s_other = _triton.row_statistics(x, t, dtype)
            rows, other_coef, target_grad = _row_partials(phi, shifted_t, s_other, factor, scale, params)
            grad = _triton.row_gradient(x, t, m_other, other_coef, target_grad)
        else:
            classes = class_indices(x.shape[1], x.device)
            rows, exp_other, other_coef, target_grad = run(_statistics_and_partials, phi, x, t, classes, dtype,
                                                           factor, scale, params)
            grad = _row_gradient_in_place(exp_other, t, other_coef, target_grad)
        rows = rows.sum() * scale if summed else rows.reshape(shape[:1] + shape[2:])
        return rows, grad.reshape(shape)

    return with_saved_gradient(logits, compute)
