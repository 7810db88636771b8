"""Log-space building blocks: every loss is written with these, never with raw probabilities."""

from __future__ import annotations

import contextlib
import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(x: Tensor) -> torch.dtype:
    """fp16 and bf16 inputs are computed in fp32; other floats in their own dtype."""
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def cached_outside_compile(make):
    """``make``, its results cached per arguments: for small constant tensors (a dtype's stand-in, class
    indices, bin edges) that every call would otherwise allocate again, a microsecond each, which small
    batches notice. The results are shared, so never written to. Inside ``torch.compile`` ``make`` runs
    itself: the compiler has no use for the cache, and warns about every ``lru_cache`` it traces."""
    cached = functools.lru_cache(maxsize=64)(make)

    @functools.wraps(make)
    def call(*args):
        return make(*args) if torch.compiler.is_compiling() else cached(*args)

    return call


@cached_outside_compile
def shared_like(dtype: torch.dtype, device: torch.device) -> Tensor:
    """A 0-d tensor that only stands for ``dtype`` and ``device``."""
    return torch.empty((), dtype=dtype, device=device)


def bucket_index(values: Tensor, inner_edges: Tensor) -> Tensor:
    """The number of ``inner_edges`` each value reaches (a value on an edge takes the bin above it).
    Contiguous first: ``bucketize`` copies a strided input anyway, and warns when it does."""
    return torch.bucketize(values.contiguous(), inner_edges, right=True)


def in_dtype(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in ``dtype``, with no op where it is already: at a few hundred elements every dispatched op, even
    one that does nothing, costs about a microsecond (the eager engines' few ops)."""
    return x if x.dtype == dtype else x.to(dtype)


def optional_product(*factors):
    """The product of the factors given (None stands for 1), or None when every one is None."""
    result = None
    for factor in factors:
        if factor is not None:
            result = factor if result is None else result * factor
    return result


def output_dtype(x: Tensor) -> torch.dtype:
    """The input dtype, or fp32 for low-precision inputs under autocast."""
    if x.dtype in _LOW_PRECISION and torch.is_autocast_enabled(x.device.type):
        return torch.float32
    return x.dtype


def no_autocast(x: Tensor):
    """A context in which autocast is off on ``x``'s device (a no-op, and free, where it is off)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def log_softmax_and_log1m(logits: Tensor, dim: int = 1) -> tuple[Tensor, Tensor]:
    """``log p`` and ``log(1 - p)`` of a softmax, both exact in floating point.

    ``log1p(-p)`` loses everything once ``p`` rounds to 1 (a target margin above
    ~17 in fp32). Only the most probable class can have ``p > 1/2``; for it,
    ``1 - p`` is the mass of the other classes, a log-sum-exp. Every other class
    has ``p <= 1/2``, where ``log1p(-p)`` is accurate.
    """
    # over the last dimension: ATen's softmax along an inner dimension sums sequentially in fp32
    # (at 32,000 classes about 40x the error of its contiguous kernel)
    logp = logits.movedim(dim, -1).log_softmax(-1).movedim(-1, dim)
    top = torch.zeros_like(logp, dtype=torch.bool).scatter_(dim, logp.argmax(dim, keepdim=True), True)
    rest = logp.masked_fill(top, float("-inf")).logsumexp(dim, keepdim=True)
    # The top class gets a harmless stand-in so its unused branch has a finite gradient.
    others = torch.log1p(-logp.masked_fill(top, -1.0).exp())
    return logp, torch.where(top, rest, others)


def log_probability_below(x: Tensor, logp: Tensor) -> Tensor:
    """For each class, the log of the largest probability of its row strictly below its own (``-inf``
    for a row's least probable classes), with ``logp = log_softmax(x)``: the logits sorted along dim 1,
    each tie group pointing at the last value before it. The order is the logits', which rounding
    cannot merge as it can two close ``log p``."""
    ordered, order = x.sort(1)
    positions = torch.arange(x.shape[1], device=x.device).view((1, -1) + (1,) * (x.dim() - 2))
    rises = torch.cat([torch.zeros_like(ordered[:, :1], dtype=torch.bool), ordered[:, 1:] > ordered[:, :-1]], 1)
    group_start = torch.where(rises, positions, 0).cummax(1).values
    before = logp.gather(1, order).gather(1, (group_start - 1).clamp_min(0))
    below = torch.where(group_start > 0, before, float("-inf"))
    return torch.empty_like(below).scatter(1, order, below)


def log_probability_below_target(x: Tensor, logp: Tensor, labels: Tensor) -> Tensor:
    """:func:`log_probability_below` at the target class alone, ``(N, *)``, without sorting."""
    return logp.masked_fill(x >= x.gather(1, labels.unsqueeze(1)), float("-inf")).amax(1)


def class_sum(x: Tensor, keepdim: bool = False) -> Tensor:
    """The sum over the classes (dim 1), accumulated in float64: a long fp32 row summed in fp32
    loses about one bit per doubling of its length (128,000 classes: ~10x the rounding of torch's
    own sums), in float64 it is exact to fp32 rounding."""
    return x.sum(1, keepdim=keepdim, dtype=torch.float64).to(x.dtype)


def is_constant(value, constant: float) -> bool:
    """True for a Python number equal to ``constant``; hyperparameters passed as tensors (to the
    compiled engines, so new values do not recompile) never take such shortcuts."""
    return not isinstance(value, Tensor) and value == constant


def is_special_exponent(value) -> bool:
    """True for the exponents 0, 1 and 2 given as Python numbers: the engines specialise on these
    (the fused engine compiles them as constants), so that ``(1-p)^2`` is one multiplication."""
    return not isinstance(value, Tensor) and value in (0, 1, 2)


def power(base: Tensor, log_base: Tensor, exponent) -> Tensor:
    """``base ** exponent`` given ``base`` and its logarithm: a product for the exponents 0, 1 and 2
    (:func:`is_special_exponent`), else ``exp(exponent * log_base)`` (finite where ``base`` is 0)."""
    if is_special_exponent(exponent):
        return torch.ones_like(base) if exponent == 0 else base if exponent == 1 else base * base
    return torch.exp(exponent * log_base)


def safe_pow(base: Tensor, exponent) -> Tensor:
    """``base ** exponent`` for ``base >= 0``, with ``0 ** 0 = 1`` and a zero (not NaN) gradient at 0."""
    if is_special_exponent(exponent):
        return power(base, base, exponent)
    tiny = torch.finfo(base.dtype).tiny
    at_zero = torch.zeros_like(base) if not isinstance(exponent, Tensor) else (exponent == 0).to(base.dtype)
    # exp and log, not pow: the fused kernels then differentiate it with one division, not a second pow
    return torch.where(base > 0, torch.exp(exponent * torch.log(base.clamp_min(tiny))), at_zero)


class Probability(NamedTuple):
    """A probability in log and linear space: ``log p``, ``log(1-p)``, ``p`` and ``1-p``, each exact
    where another rounds (``1-p`` is never computed as a difference).

    Every loss is written with these. The reference engine derives them by autograd-able ops
    (:func:`sigmoid_probability`, :func:`from_logs`); the fused engine computes all four in one
    step and applies the chain rule to the loss's partial derivatives itself.
    """

    logp: Tensor
    log1m: Tensor
    p: Tensor
    one_minus_p: Tensor

    def complement(self) -> "Probability":
        """``1 - p`` as a probability."""
        return Probability(self.log1m, self.logp, self.one_minus_p, self.p)


def from_logs(logp: Tensor, log1m: Tensor) -> Probability:
    """A probability from ``log p`` and ``log(1-p)``."""
    return Probability(logp, log1m, torch.exp(logp), torch.exp(log1m))


def sigmoid_probability(x: Tensor) -> Probability:
    """``p = sigmoid(x)``."""
    return from_logs(torch.nn.functional.logsigmoid(x), torch.nn.functional.logsigmoid(-x))


def sigmoid_complement_of_target(prob: Probability, y: Tensor) -> tuple[Tensor, Tensor]:
    """``1 - p_t`` and its logarithm, with ``p_t = y p + (1 - y)(1 - p)`` for y in [0, 1].

    ``1 - p_t = y (1 - p) + (1 - y) p``, a sum of non-negative parts. Its logarithm is that of the
    larger part plus ``log(w_m + w_o exp(d))``, with ``w`` the parts' weights (``y``, ``1 - y``) and
    ``d`` the other part's log-probability minus the larger one's: no logarithm of the target, so
    a hard target (y exactly 0 or 1) gives ``log(1 - p)`` or ``log p`` exactly, and every
    derivative of any order is finite there. Where a weight is 0, ``d`` is capped (at half the
    dtype's largest exponent) so that its products with 0 stay 0; only the derivative in a hard
    target at logits beyond that cap (about 44 in fp32) saturates.
    """
    up, down = y * prob.one_minus_p, (1 - y) * prob.p
    first = (up > down) | ((up == down) & (y >= 0.5))
    larger, other = torch.where(first, prob.log1m, prob.logp), torch.where(first, prob.logp, prob.log1m)
    w_larger, w_other = torch.where(first, y, 1 - y), torch.where(first, 1 - y, y)
    d = other - larger
    cap = 0.5 * math.log(torch.finfo(d.dtype).max) - 1
    d = torch.where(w_other > 0, d, d.clamp_max(cap))
    return up + down, larger + torch.log(w_larger + w_other * torch.exp(d))


def bernoulli_cross_entropy(prob: Probability, y: Tensor) -> Tensor:
    """``-(y log p + (1 - y) log(1 - p))``, finite for any finite logit."""
    return -(y * prob.logp + (1 - y) * prob.log1m)


def sigmoid_target_gap(prob: Probability, y: Tensor) -> Tensor:
    """``|y - p|`` as ``|y (1 - p) - (1 - y) p|``, without the cancellation of ``1 - p`` near 1."""
    return (y * prob.one_minus_p - (1 - y) * prob.p).abs()


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
