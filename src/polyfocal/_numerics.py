"""Log-space building blocks: every loss is written with these, never with raw probabilities."""

from __future__ import annotations

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(x: Tensor) -> torch.dtype:
    """fp16 and bf16 inputs are computed in fp32; other floats in their own dtype."""
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def output_dtype(x: Tensor) -> torch.dtype:
    """The input dtype, or fp32 for low-precision inputs under autocast."""
    if x.dtype in _LOW_PRECISION and torch.is_autocast_enabled(x.device.type):
        return torch.float32
    return x.dtype


def log_softmax_and_log1m(logits: Tensor, dim: int = 1) -> tuple[Tensor, Tensor]:
    """``log p`` and ``log(1 - p)`` of a softmax, both exact in floating point.

    ``log1p(-p)`` loses everything once ``p`` rounds to 1 (a target margin above
    ~17 in fp32). Only the most probable class can have ``p > 1/2``; for it,
    ``1 - p`` is the mass of the other classes, a log-sum-exp. Every other class
    has ``p <= 1/2``, where ``log1p(-p)`` is accurate.
    """
    logp = logits.log_softmax(dim)
    top = torch.zeros_like(logp, dtype=torch.bool).scatter_(dim, logp.argmax(dim, keepdim=True), True)
    rest = logp.masked_fill(top, float("-inf")).logsumexp(dim, keepdim=True)
    # The top class gets a harmless stand-in so its unused branch has a finite gradient.
    others = torch.log1p(-logp.masked_fill(top, -1.0).exp())
    return logp, torch.where(top, rest, others)


def is_constant(value, constant: float) -> bool:
    """True for a Python number equal to ``constant``; hyperparameters passed as tensors (to the
    compiled engines, so new values do not recompile) never take such shortcuts."""
    return not isinstance(value, Tensor) and value == constant


def pow_of_log(log_base: Tensor, exponent) -> Tensor:
    """``base ** exponent`` from ``log(base)``: the focal modulator as ``exp(gamma * log(1 - p))``."""
    if is_constant(exponent, 0):
        return torch.ones_like(log_base)
    return torch.exp(exponent * log_base)


def safe_pow(base: Tensor, exponent) -> Tensor:
    """``base ** exponent`` for ``base >= 0``, with ``0 ** 0 = 1`` and a zero (not NaN) gradient at 0."""
    if is_constant(exponent, 0):
        return torch.ones_like(base)
    tiny = torch.finfo(base.dtype).tiny
    at_zero = torch.zeros_like(base) if not isinstance(exponent, Tensor) else (exponent == 0).to(base.dtype)
    # exp and log, not pow: the fused kernels then differentiate it with one division, not a second pow
    return torch.where(base > 0, pow_of_log(torch.log(base.clamp_min(tiny)), exponent), at_zero)


def log_sigmoids(x: Tensor) -> tuple[Tensor, Tensor]:
    """``log sigmoid(x)`` and ``log sigmoid(-x)``: ``log p`` and ``log(1 - p)`` of ``p = sigmoid(x)``."""
    return torch.nn.functional.logsigmoid(x), torch.nn.functional.logsigmoid(-x)


def sigmoid_log1m_pt(logp: Tensor, log1mp: Tensor, y: Tensor) -> Tensor:
    """``log(1 - p_t)`` with ``p_t = y p + (1 - y)(1 - p)``, for y in [0, 1], from ``log p`` and ``log(1 - p)``.

    ``1 - p_t = y (1 - p) + (1 - y) p``; each part is taken in log space,
    so a hard target (y exactly 0 or 1) gives ``log(1 - p)`` or ``log p`` with no rounding.
    """
    return torch.logaddexp(torch.log(y) + log1mp, torch.log1p(-y) + logp)


def binary_cross_entropy(logp: Tensor, log1mp: Tensor, y: Tensor) -> Tensor:
    """``-(y log p + (1 - y) log(1 - p))``, finite for any finite logit."""
    return -(y * logp + (1 - y) * log1mp)


def sigmoid_target_gap(logp: Tensor, log1mp: Tensor, y: Tensor) -> Tensor:
    """``|y - p|`` as ``|y (1 - p) - (1 - y) p|``, without the cancellation of ``1 - p`` near 1."""
    return (y * torch.exp(log1mp) - (1 - y) * torch.exp(logp)).abs()


def is_class(x: Tensor, labels: Tensor, classes: Tensor | None = None) -> Tensor:
    """``(N, C, *)`` mask of ``k == labels`` for ``x`` of shape ``(N, C, *)`` and labels ``(N, *)``,
    built by broadcasting (nothing one-hot is materialised inside a fused kernel).

    ``classes``, the class indices ``0..C-1`` as a tensor ``(C,)``, is made here when not given.
    The fused engine passes it in: loaded from memory, the compiled loop compares it with one
    vector load, where an index generated in the loop costs as much as the loss itself.
    """
    if classes is None:
        classes = torch.arange(x.shape[1], device=x.device)
    return classes.view((1, -1) + (1,) * (x.dim() - 2)) == labels.unsqueeze(1)
