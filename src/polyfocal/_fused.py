"""The fused engine: the forward pass computes the gradient, and only the gradient is saved.

The same math as the reference engine, compiled with ``torch.compile`` (inductor: vectorised
C++ on CPU, Triton on GPU) with dynamic shapes and hyperparameters passed as tensors, so new
shapes or new gammas do not recompile (0, 1 and 2 stay numbers: ``(1-p)^2`` compiles to one
multiplication). Backward is one multiply by ``grad_output`` (none at
all when it is 1). Here are the engine itself (compile, fall back, save the gradient), the
canonical 3-d view, and the kernels of the sigmoid family:

* sigmoid losses are functions of a :class:`~polyfocal._numerics.Probability` (``log p``,
  ``log(1-p)``, ``p``, ``1-p``): the kernel takes all four from one exponential, one ``log1p``
  and one division per element, and carries autograd of the loss's function alone to the logit
  (:func:`log_sigmoid_slope`; :func:`log_slope` is the same step for the softmax row engine's
  target, in :mod:`polyfocal._rows` with the other softmax kernels);
* GHM's written-out gradient lives in :mod:`polyfocal.ghm`; every other case compiles
  ``value_and_grad`` of the reference engine's element function.

Class indices enter the kernels as a cached ``arange(C)`` tensor (:func:`class_indices`): the
compiled loop then loads it, where an index generated inside the loop costs as much as the loss.

If compilation fails (no C++ compiler, an unsupported platform), the engine warns once and
the reference engine takes over. Set ``POLYFOCAL_STRICT=1`` to raise instead.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from typing import Callable

import torch
from torch import Tensor

from . import _background, _compat
from ._numerics import Probability, cached_outside_compile, is_special_exponent, sigmoid_probability

_compiled: dict[Callable, Callable] = {}
_cache_checked: list[str] = []  # the compile cache folder, once found writable
_broken: str | None = None
RECOMPILE_LIMIT = 256  # compiled variants (loss, target form, dtype, ...) per kernel; more run uncompiled
_limit_warned: set[str] = set()


class FusedUnavailable(RuntimeError):
    """The fused engine cannot run here (or not yet: :class:`NotCompiledYet`); the caller falls back to
    its eager engine, or the reference for a loss without one."""


class NotCompiledYet(FusedUnavailable):
    """This call's kernel is compiling in the background; the caller runs its eager engine (or the
    reference, for a loss without one) meanwhile."""


def available() -> bool:
    return _broken is None


def run(kernel: Callable, *args):
    """Call the compiled ``kernel``; a failure disables the fused engine (or raises when strict).

    A variant not compiled yet compiles in the background (:mod:`polyfocal._background`) and this call
    raises :class:`NotCompiledYet`, for the caller to run its eager engine."""
    global _broken
    if _broken is not None:  # failed once in this process (warned then): not again per kernel
        raise FusedUnavailable(_broken)
    if kernel not in _compiled:
        _check_cache()
        _compiled[kernel] = compile_kernel(kernel)
    compiled, state = _compiled[kernel], _background.READY
    if _background.in_background():
        state = _background.outcome(compiled, _background.variant(kernel, args), RECOMPILE_LIMIT, args)
        if state is _background.PENDING:
            raise NotCompiledYet("the fused kernel of this call is compiling in the background")
    try:
        if isinstance(state, BaseException):  # its compilation failed in the background
            raise state
        if state is _background.OVER_LIMIT:
            return _uncompiled(kernel, *args)
        # One kernel serves every loss and dtype: each is a specialisation, not a recompile storm.
        # the kernels save nothing for autograd (they run in no-grad mode in _SavedGradient's
        # forward): a caller's saved-tensor hooks, which torch.func refuses to trace under, are
        # lifted for the call; the gradient that forward saves does go through them
        with _compat.recompile_limits(RECOMPILE_LIMIT), _compat.saved_tensor_hooks_suspended():
            try:
                return compiled(*args)
            except _compat.recompile_limit_hit():
                return _uncompiled(kernel, *args)
    except (MemoryError, torch.OutOfMemoryError):
        raise  # the input's size, not the engine: the reference engine would need more memory still
    except Exception as error:  # compilation errors come in many types
        if os.environ.get("POLYFOCAL_STRICT"):
            raise
        _broken = f"{type(error).__name__}: {error}"
        warnings.warn(f"polyfocal: the fused engine is unavailable ({_broken}); using the eager engine (the "
                      "reference for a loss without one)",
                      RuntimeWarning, stacklevel=3)
        raise FusedUnavailable(_broken) from error


def compile_kernel(kernel: Callable) -> Callable:
    """``kernel`` compiled: one function for every shape (dynamic) and no graph breaks. (The tests'
    ``fused_uncompiled`` fixture makes this the identity, to run the engine's logic without compiling.)"""
    return torch.compile(kernel, dynamic=True, fullgraph=True)


def _check_cache() -> None:
    """Before the first compilation: inductor's cache folder must be writable (a read-only home, a full
    disk); else one warning that names it, and the eager engine runs (an error when strict)."""
    global _broken
    if _cache_checked:
        return
    folder = _compat.compile_cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        _broken = f"the compile cache {folder} cannot be written ({error})"
        if os.environ.get("POLYFOCAL_STRICT"):
            raise
        warnings.warn(f"polyfocal: {_broken}; the fused engine is off and the eager engine runs instead (set "
                      "TORCHINDUCTOR_CACHE_DIR to a writable folder)", RuntimeWarning, stacklevel=4)
        raise FusedUnavailable(_broken) from error
    _cache_checked.append(folder)


def _uncompiled(kernel: Callable, *args):
    """A variant past :data:`RECOMPILE_LIMIT`: the same math, run eagerly (slower, the same memory
    saved for backward); the engine stays on for the variants already compiled."""
    if kernel.__name__ not in _limit_warned:
        _limit_warned.add(kernel.__name__)
        warnings.warn(f"polyfocal: {RECOMPILE_LIMIT} variants of the fused kernel {kernel.__name__} are compiled "
                      "in this process; further ones run uncompiled", RuntimeWarning, stacklevel=4)
    return kernel(*args)


class _SavedGradient(torch.autograd.Function):
    """Returns a loss computed with its gradient; backward multiplies the saved gradient.

    The saved gradient is a constant. Where a second derivative is asked for (``create_graph=True``:
    gradient penalties, Hessian-vector products, meta-learning), backward differentiates
    ``reference(logits)``, the same loss by autograd through the reference math, instead; so every
    derivative is exact. For that it keeps the logits themselves (a reference, not a copy; outside
    ``saved_tensors``, so a plain backward neither unpacks them nor checks their version).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, loss_and_grad: tuple[Tensor, Tensor], reference: Callable):
        loss, grad = loss_and_grad
        ctx.save_for_backward(grad)
        ctx.logits, ctx.version, ctx.reference = logits, logits._version, reference
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            return _differentiable_gradient(ctx, grad_output), None, None
        if grad_output.dim() == 0:
            if grad_output.device.type == "cpu" and float(grad_output) == 1.0:
                return grad, None, None
            return grad * grad_output.to(grad.dtype), None, None
        if grad_output.dim() < grad.dim():  # per-row losses of the softmax family
            grad_output = grad_output.unsqueeze(1)
        return grad * grad_output.to(grad.dtype), None, None


def _differentiable_gradient(ctx, grad_output: Tensor) -> Tensor:
    """The loss's gradient as a differentiable function of the logits and ``grad_output``."""
    logits = ctx.logits
    if logits._version != ctx.version:
        raise RuntimeError("polyfocal: the logits of a fused loss were modified in place before a backward with "
                           "create_graph=True; its second derivative needs them as they were")
    with torch.enable_grad():
        loss = ctx.reference(logits)
        (grad,) = torch.autograd.grad(loss, logits, grad_output.to(loss.dtype), create_graph=True)
    return grad


def with_saved_gradient(logits: Tensor, loss: Tensor, grad: Tensor, reference: Callable[[Tensor], Tensor]) -> Tensor:
    """``loss`` (computed without autograd, e.g. under ``torch.no_grad()``), differentiated in ``logits`` by
    its gradient ``grad``; ``reference(logits)`` is the same loss by autograd, for derivatives of
    second order."""
    return _SavedGradient.apply(logits, (loss, grad), reference)


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


@cached_outside_compile
def class_indices(num_classes: int, device: torch.device) -> Tensor:
    """``arange(C)``, made once per size and device, for :func:`polyfocal._numerics.is_class`."""
    return torch.arange(num_classes, device=device)


# --- canonical shapes: every call compiles for 3-d inputs, whatever the caller's rank -------------

def shape_3d(shape) -> tuple[int, int, int]:
    """``(N, C, L)`` for ``(N, C, *)``; lower ranks padded with ones."""
    shape = tuple(shape) + (1,) * max(0, 2 - len(shape))
    return (shape[0], shape[1], math.prod(shape[2:]))


def full_3d(tensor, logits: Tensor):
    """An operand broadcastable to ``logits``, on their ``shape_3d`` view (a view itself where it can be).

    A full-size operand laid out unlike the logits (a one-hot target made by ``F.one_hot(...).permute``
    beside contiguous logits) is first copied into their layout: the compiled loop reads both along the
    last dimension, and a strided operand there made sigmoid focal at 8 x 80 x 32 x 32 take 8.0 ms
    against 1.8 ms with the copy (1 thread)."""
    if not isinstance(tensor, Tensor):
        return tensor
    if tensor.shape == logits.shape and tensor.stride() != logits.stride():
        tensor = torch.empty_like(logits, dtype=tensor.dtype).copy_(tensor)
    return tensor.expand(logits.shape).reshape(shape_3d(logits.shape))


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
    p, q = prob.p, prob.one_minus_p
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


def margin_probability(z: Tensor) -> Probability:
    """``sigmoid(z)`` in its four parts for a kernel that runs compiled or eagerly: compiled,
    :func:`sigmoid_parts` (one exponential per element); eagerly, two ``logsigmoid`` and two
    exponentials (five ops where :func:`sigmoid_parts` dispatches sixteen)."""
    return sigmoid_parts(z) if torch.compiler.is_compiling() else sigmoid_probability(z)


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
                   scale: Tensor, summed: bool, reference: Callable[[Tensor], Tensor], loss_shape=None,
                   with_gradient: bool = False) -> Tensor:
    """``f(logits, *args, **params)`` (summed and scaled, or per element) with a saved gradient;
    ``reference(logits)`` is the same loss by autograd (for second derivatives).

    ``logits`` is viewed as 3-d; ``args`` and ``params`` must already fit that view, and a
    per-element loss is returned with ``loss_shape``. The gradient is autograd's, or with
    ``with_gradient`` ``f``'s own: ``f(logits, scale, *args, **params)`` returns the elements'
    losses and the gradient of their sum times ``scale``.
    """
    params = as_tensors(params, scale)
    if not with_gradient:
        f, args = _autograd_gradient, (f, *args)

    with torch.no_grad():
        loss, grad = run(_value_and_grad_kernel, f, summed, logits.reshape(shape_3d(logits.shape)), scale, dtype,
                         args, params)
    return with_saved_gradient(logits, loss if summed else loss.reshape(loss_shape), grad.reshape(logits.shape),
                               reference)
