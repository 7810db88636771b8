"""GHM, the Gradient Harmonizing Mechanism (Li, Liu, Wang, arXiv:1811.05181).

Each example is weighted by the inverse density of its gradient norm ``g``. The unit
region ``[0, 1]`` is cut into ``bins`` equal bins; ``GD(g_i) = count(bin of g_i) * n``
with ``n`` the number of non-empty bins, so ``beta_i = N / GD(g_i)`` averages to 1 over
the batch; ``mean`` is the paper's ``(1/N) sum_i beta_i L_i = sum_i L_i / GD(g_i)``.

Element weights count as that many examples in the histogram (0 leaves an element out).
In a ``torch.distributed`` run the bin counts and N are all-reduced, so every rank
weights by the global density and divides by the global N: the ranks' losses add up to
the single-process loss on the concatenated batch.

The Modules keep an exponential moving average of the bin counts (``momentum``) as
buffers. A zero-initialised average underestimates the counts for its first steps by a
factor ``1 - momentum^t``; ``bias_correction=True`` (default) divides that out, as Adam
does; ``False`` keeps the classic behaviour of the reference implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from . import _checks, _math
from ._declare import declare, public_names
from . import _fused
from ._backend import engine_for
from ._errors import InputValueError
from ._loss_module import StatisticsModule
from ._numerics import (bernoulli_cross_entropy, bucket_index, cached_outside_compile, compute_dtype, is_class,
                        output_dtype, shared_like, sigmoid_probability, sigmoid_target_gap)
from ._reduce import reduce_loss, reduction_scale
from ._sigmoid_engine import check_weight, dense_target, prepare_target



class _MovingCounts:
    """The moving-average state of a GHM Module: ``counts`` and per-bin ``steps`` buffers."""

    def __init__(self, counts: Tensor, steps: Tensor, momentum: float, bias_correction: bool):
        self.counts, self.steps = counts, steps
        self.momentum, self.bias_correction = momentum, bias_correction

    def update(self, batch_counts: Tensor) -> Tensor:
        """Fold this batch's counts into the average (non-empty bins only); return the estimate."""
        dtype = batch_counts.dtype
        batch_counts = batch_counts.to(self.counts.dtype)
        seen = batch_counts > 0
        mixed = self.momentum * self.counts + (1 - self.momentum) * batch_counts
        self.counts.copy_(torch.where(seen, mixed, self.counts))
        self.steps.add_(seen.to(self.steps.dtype))
        if not self.bias_correction:
            return self.counts.to(dtype)
        unbias = 1 - torch.pow(self.momentum, self.steps)  # 0 only where a bin was never seen, and its count is 0
        return (self.counts / torch.where(unbias > 0, unbias, 1.0)).to(dtype)


# --- bins: an element's bin is the number of inner edges its statistic reaches ---------------------
# The statistic is g itself with the edges k / bins, or any increasing function of g with the edges
# mapped through it: for 0/1 targets the margin -z, g = sigmoid(-z), with edges logit(k / bins),
# which needs no exponential. g = 1 falls in the last bin.

def unit_edges(bins: int, like: Tensor) -> Tensor:
    """The inner edges ``k / bins`` (k = 1 .. bins-1) of ``bins`` equal regions of [0, 1]."""
    return torch.arange(1, bins, dtype=like.dtype, device=like.device) / bins


def margin_edges(bins: int, like: Tensor) -> Tensor:
    """:func:`unit_edges` mapped through ``logit``: ``sigmoid(s) >= k / bins`` iff ``s >= logit(k / bins)``."""
    k = torch.arange(1, bins, dtype=torch.float64, device=like.device)
    return torch.log(k / (bins - k)).to(like.dtype)


@cached_outside_compile
def cached_edges(edges: Callable, bins: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``edges(bins, ...)`` in ``dtype`` on ``device``, made once per call signature (five ops a call)."""
    return edges(bins, shared_like(dtype, device))


def bin_index(statistic: Tensor, edges: Tensor) -> Tensor:
    """The number of ``edges`` each element's statistic reaches, 0 .. len(edges)."""
    return bucket_index(statistic, edges)


def _compiled_bins(edges: Tensor) -> bool:
    """Inside a compiled kernel, up to 64 bins run as per-bin compares, kept in vector lanes (the
    compiler's gather and scatter-add with an integer index are not)."""
    return torch.compiler.is_compiling() and edges.numel() < 64


def per_bin(statistic: Tensor, table: Tensor, edges: Tensor) -> Tensor:
    """``table[bin]`` per element: eagerly a gather; compiled, a chain of selects on the compares."""
    if not _compiled_bins(edges):
        return table[bin_index(statistic, edges)]
    out = table[0].expand_as(statistic)
    for k in range(edges.numel()):
        out = torch.where(statistic >= edges[k], table[k + 1], out)
    return out


def gradient_histogram(statistic: Tensor, weight: Tensor, edges: Tensor) -> Tensor:
    """Weighted counts per bin, and the total weight N last: a ``(bins + 1,)`` vector, no host sync.

    Eagerly one scatter-add; inside a compiled kernel, one masked sum per bin from the shared
    compares, which the compiler fuses into a single pass with ``bins`` accumulators.
    """
    if _compiled_bins(edges):
        reached = [statistic >= edges[k] for k in range(edges.numel())]
        inside = [reached[0].logical_not()] if reached else [torch.ones_like(statistic, dtype=torch.bool)]
        inside += [low & high.logical_not() for low, high in zip(reached, reached[1:])] + reached[-1:]
        counts = torch.stack([torch.where(mask, weight, torch.zeros_like(weight)).sum() for mask in inside])
    else:
        counts = scatter_counts(bin_index(statistic, edges).flatten(), weight.flatten(), edges.numel() + 1)
    return torch.cat([counts, weight.sum().reshape(1)])


def scatter_counts(index: Tensor, weight: Tensor, bins: int, lanes: int | None = None) -> Tensor:
    """``weight`` summed per ``index`` into ``bins`` counts. On CUDA every element's atomic add
    would go to one of a few addresses (16M elements: 6.5 ms on an H200); there the elements are
    split into up to 1,024 lanes (a divisor of their number) with counts of their own, then summed."""
    if lanes is None:
        lanes = math.gcd(index.numel(), 1024) if index.is_cuda else 1
    counts = torch.zeros(lanes, bins, dtype=weight.dtype, device=weight.device)
    counts.scatter_add_(1, index.view(lanes, -1), weight.view(lanes, -1))
    return counts.sum(0)


@torch.no_grad()
def bin_density(totals: Tensor, bins: int, state: _MovingCounts | None = None,
                distributed: bool | None = None) -> tuple[Tensor, Tensor]:
    """``GD`` per bin (0 bins replaced by 1, as no element falls there) and N, from the histogram;
    all-reduced across ranks and folded into the moving average when asked."""
    if _checks.is_distributed(distributed):
        dist.all_reduce(totals)
    batch_counts, n = totals[:bins], totals[bins]
    counts = batch_counts if state is None else state.update(batch_counts)
    density = counts * (batch_counts > 0).sum().to(counts.dtype)
    return torch.where(density > 0, density, 1.0), n


@torch.no_grad()
def harmonizing_weights(g: Tensor, weight: Tensor, bins: int, state: _MovingCounts | None = None,
                        distributed: bool | None = None) -> tuple[Tensor, Tensor]:
    """``beta_i / N = 1 / GD(g_i)`` times each element's weight, and N (the weighted count)."""
    edges = unit_edges(bins, g)
    density, n = bin_density(gradient_histogram(g, weight, edges), bins, state, distributed)
    return weight / density[bin_index(g, edges)], n


def _check_bins(bins) -> int:
    return _checks.integer(bins, "bins", low=1)


# --- the element math, shared by the reference and fused engines ---------------------------------
# GHM-C: g = |sigmoid(x) - y| and BCE; GHM-R: g = |d| / sqrt(d^2 + mu^2) and sqrt(d^2 + mu^2) - mu.

def _classification_gap(x: Tensor, y: Tensor) -> Tensor:
    return sigmoid_target_gap(_fused.sigmoid_parts(x), y)  # one exponential and one division


def _classification_loss(x: Tensor, y: Tensor) -> Tensor:
    return bernoulli_cross_entropy(sigmoid_probability(x), y)


def _negative_margin(x: Tensor, y: Tensor) -> Tensor:
    """For targets exactly 0 or 1, ``-z`` with ``z = (2y - 1) x``: ``g = |sigmoid(x) - y| = sigmoid(-z)``."""
    return torch.where(y > 0, -x, x)


def _hard_classification_loss(x: Tensor, y: Tensor) -> Tensor:
    return -F.logsigmoid(torch.where(y > 0, x, -x))


def _regression_gap(x: Tensor, y: Tensor, mu) -> Tensor:
    d = x - y
    return d.abs() / torch.sqrt(d * d + mu * mu)


def _regression_loss(x: Tensor, y: Tensor, mu) -> Tensor:
    return _math.smooth_l1_authentic(x - y, mu=mu)


@dataclass(frozen=True)
class _Elements:
    """What GHM knows of each element besides its logit: class ``labels`` (with ``ignore_index``; None
    where no label is ignored) or a dense target ``y`` (with a ``valid`` mask where some elements do
    not count), the element ``weight``, and the bin ``edges`` of the statistic."""

    labels: Tensor | None
    y: Tensor | None
    valid: Tensor | None
    weight: Tensor | None
    ignore_index: int | None
    edges: Tensor

    def target_and_weight(self, x: Tensor, classes=None) -> tuple[Tensor, Tensor]:
        """The dense target and the element weights (0 where ignored)."""
        y, valid = self.y, self.valid
        if self.labels is not None:
            y = is_class(x, self.labels, classes).to(x.dtype)
            valid = None if self.ignore_index is None else (self.labels != self.ignore_index).unsqueeze(1)
        w = torch.ones_like(x) if self.weight is None else self.weight.expand_as(x)
        return y, w if valid is None else torch.where(valid, w, torch.zeros_like(w))

    def in_3d(self, logits: Tensor) -> "_Elements":
        """The same elements on the fused engine's ``(N, C, L)`` view of ``logits``."""
        return replace(self, labels=_fused.rows_3d(self.labels, logits.shape), y=_fused.full_3d(self.y, logits),
                       valid=_fused.full_3d(self.valid, logits), weight=_fused.full_3d(self.weight, logits))


@dataclass(frozen=True)
class _Variant:
    """A GHM loss: the statistic its elements are binned by (g, or an increasing function of g with
    edges to match), its loss, optionally its loss with a written-out gradient, and whether the
    two take GHM-R's smoothness ``mu``."""

    statistic: Callable
    edges: Callable
    loss: Callable
    with_gradient: Callable | None = None
    takes_mu: bool = False

    def g(self, x: Tensor, y: Tensor, mu) -> Tensor:
        return self.statistic(x, y, mu) if self.takes_mu else self.statistic(x, y)

    def elements_loss(self, x: Tensor, y: Tensor, mu) -> Tensor:
        return self.loss(x, y, mu) if self.takes_mu else self.loss(x, y)


def _histogram(x: Tensor, elements: _Elements, variant: _Variant, mu, dtype, classes=None):
    x = x.to(dtype)
    y, w = elements.target_and_weight(x, classes)
    return gradient_histogram(variant.g(x, y, mu), w, elements.edges)


def _harmonized(x: Tensor, elements: _Elements, variant: _Variant, density, n, mu, classes=None) -> Tensor:
    """``beta_i L_i = w_i N / GD(g_i) L_i`` per element (``beta`` is a constant for the gradient)."""
    y, w = elements.target_and_weight(x, classes)
    beta = w * per_bin(variant.g(x.detach(), y, mu), n / density, elements.edges)  # a table, not a division each
    return beta * variant.elements_loss(x, y, mu)


def _hard_harmonized_and_gradient(x: Tensor, scale: Tensor, elements: _Elements, density, n,
                                  classes=None) -> tuple[Tensor, Tensor]:
    """:func:`_harmonized` of GHM-C with 0/1 targets, ``-beta log p_t`` with ``p_t = sigmoid(z)``, and the
    gradient of its sum times ``scale``, written out: ``-beta (1 - p_t)`` in ``z``."""
    y, w = elements.target_and_weight(x, classes)
    positive = y > 0
    z = torch.where(positive, x, -x)
    beta = w * per_bin(-z, n / density, elements.edges)
    p_t = _fused.margin_probability(z)
    slope = -beta * p_t.one_minus_p * scale
    return -beta * p_t.logp, torch.where(positive, slope, -slope)


def _soft_harmonized_and_gradient(x: Tensor, scale: Tensor, elements: _Elements, density, n,
                                  classes=None) -> tuple[Tensor, Tensor]:
    """:func:`_harmonized` of GHM-C with float targets, and the gradient of its sum times ``scale``,
    written out: ``beta (p - y)`` with ``p - y = (1-y) p - y (1-p)`` (no cancellation, no logarithm of
    the target)."""
    y, w = elements.target_and_weight(x, classes)
    prob = _fused.margin_probability(x)
    beta = w * per_bin(sigmoid_target_gap(prob, y), n / density, elements.edges)
    return beta * bernoulli_cross_entropy(prob, y), beta * ((1 - y) * prob.p - y * prob.one_minus_p) * scale


_CLASSIFICATION = _Variant(_classification_gap, unit_edges, _classification_loss, _soft_harmonized_and_gradient)
_HARD_CLASSIFICATION = _Variant(_negative_margin, margin_edges, _hard_classification_loss,
                                _hard_harmonized_and_gradient)
_REGRESSION = _Variant(_regression_gap, unit_edges, _regression_loss, takes_mu=True)


def _ghm(logits: Tensor, labels, y, valid, weight, *, ignore_index: int | None, bins: int, variant: _Variant, mu,
         reduction: str, distributed, state: _MovingCounts | None, backend) -> Tensor:
    """Histogram pass, density (all-reduce, moving average: exactly once), then the harmonised loss
    (on the eager and fused engines by the variant's written-out gradient, where it has one)."""
    dtype, out_dtype = compute_dtype(logits), output_dtype(logits)
    with torch.autocast(logits.device.type, enabled=False):
        edges = cached_edges(variant.edges, bins, dtype, logits.device)
        elements = _Elements(labels, None if y is None else y.to(dtype), valid,
                             None if weight is None else weight.to(dtype), ignore_index, edges)
        shape = logits.shape
        engine = engine_for(backend, logits, (y, weight), eager="sigmoid" if variant.with_gradient else None)
        fused, totals = engine not in ("reference", "eager"), None
        classes = None if labels is None else _fused.class_indices(shape[1], logits.device)
        if fused:
            try:
                totals = _fused.run(_histogram, logits.reshape(_fused.shape_3d(shape)), elements.in_3d(logits), variant,
                                    mu, dtype, classes)
            except _fused.FusedUnavailable:
                fused = False
        if totals is None:
            totals = _histogram(logits.detach(), elements, variant, mu, dtype, classes)
        density, n = bin_density(totals, bins, state, distributed)
        scale, summed = reduction_scale(reduction, n, None, n), reduction != "none"

        def reference(x: Tensor) -> Tensor:
            return reduce_loss(_harmonized(x.to(dtype), elements, variant, density, n, mu, classes), reduction, scale)

        if engine == "eager" and logits.requires_grad and torch.is_grad_enabled():
            return _eager_harmonized(logits, elements, variant, density, n, classes, dtype=dtype, scale=scale,
                                     summed=summed, reference=reference).to(out_dtype)
        if fused:
            try:
                return _fused_harmonized(logits, elements.in_3d(logits), variant, density, n, mu, classes, dtype=dtype,
                                         scale=scale, summed=summed, loss_shape=shape,
                                         reference=reference).to(out_dtype)
            except _fused.FusedUnavailable:
                pass
        return reference(logits).to(out_dtype)


def _eager_harmonized(logits: Tensor, elements: _Elements, variant: _Variant, density, n, classes, *,
                      dtype: torch.dtype, scale: Tensor, summed: bool, reference) -> Tensor:
    """The harmonised pass on the eager engine (small inputs): the variant's written-out gradient in a
    few eager ops, saved (no autograd graph through the elements, nothing to compile)."""
    with torch.no_grad():
        value, grad = variant.with_gradient(logits.to(dtype), scale, elements, density, n, classes)
    return _fused.with_saved_gradient(logits, value.sum() * scale if summed else value, grad.to(logits.dtype),
                                      reference)


def _fused_harmonized(logits: Tensor, elements: _Elements, variant: _Variant, density, n, mu, classes, **kwargs):
    """The harmonised pass on the fused engine: the variant's written-out gradient, or autograd's."""
    if variant.with_gradient is not None:
        return _fused.value_and_grad(variant.with_gradient, logits, (elements, density, n), {"classes": classes},
                                     with_gradient=True, **kwargs)
    return _fused.value_and_grad(_harmonized, logits, (elements, variant, density, n), {"mu": mu, "classes": classes},
                                 **kwargs)


def _ghm_c(logits: Tensor, target, *, bins: int, weight, ignore_index: int, reduction: str,
           validate, distributed, state: _MovingCounts | None, backend=None) -> Tensor:
    _checks.float_tensor(logits, "logits")
    _checks.check_reduction(reduction, None)
    _checks.integer(ignore_index, "ignore_index", low=-(2**63))
    weight = check_weight(weight, logits)
    labels, scores, y, _, every_row = prepare_target(logits, target, ignore_index, validate, compute_dtype(logits))
    valid = None
    if scores is not None:  # the detection form: a dense target
        y, valid, _ = dense_target(logits, target, ignore_index, False, compute_dtype(logits))
        labels = None
    hard = labels is not None  # class labels: exact 0/1 targets, half the transcendentals
    return _ghm(logits, labels, y, valid, weight, ignore_index=None if every_row else ignore_index, bins=bins,
                variant=_HARD_CLASSIFICATION if hard else _CLASSIFICATION, mu=0.0, reduction=reduction,
                distributed=distributed, state=state, backend=backend)


def _ghm_r(pred: Tensor, target: Tensor, *, mu: float, bins: int, weight, reduction: str,
           distributed, state: _MovingCounts | None, backend=None) -> Tensor:
    _checks.float_tensor(pred, "pred")
    _checks.float_tensor(target, "target")
    if target.shape != pred.shape:
        raise InputValueError(f"`target` must have the shape of `pred` {tuple(pred.shape)}; got {tuple(target.shape)}")
    _checks.check_reduction(reduction, None)
    weight = check_weight(weight, pred)
    return _ghm(pred, None, target, None, weight, ignore_index=-100, bins=bins, variant=_REGRESSION, mu=mu,
                reduction=reduction, distributed=distributed, state=state, backend=backend)


@declare("sigmoid", "GHMCLoss", aliases=("ghm_c", "ghm"), curve=False)
def ghm_c_loss(logits: Tensor, target, *, bins: int = 10, weight: Tensor | None = None,
               ignore_index: int = -100, reduction: str = "mean", validate: bool | None = None,
               distributed: bool | None = None, backend: str | None = None) -> Tensor:
    """GHM-C: sigmoid BCE weighted by the inverse density of ``g = |sigmoid(x) - y|`` in this batch.

    Stateless: the density comes from this batch alone (use :class:`GHMCLoss` for the
    moving average). See the module docstring for the weighting and ``mean``.

    Args:
        logits: any shape; ``(N, C, *)`` with class-index targets.
        target: as the sigmoid family: floats in [0, 1] the shape of ``logits``, class
            indices ``(N, *)`` with C as background, or ``(labels, scores)``.
        bins: number of unit regions, the paper uses 30 (10 in later code).
        weight: per-element weights >= 0, broadcastable to ``logits``; an element counts as
            that many examples in the density and in N.
        ignore_index: with class indices, the label to skip.
        reduction: ``"none"`` (``beta_i L_i`` per element), ``"sum"``, or ``"mean"``
            (``(1/N) sum beta_i L_i``).
        validate: check target values (``None``: on CPU outside ``torch.compile``).
        distributed: all-reduce the histogram (``None``: when a process group of 2+ ranks exists).
        backend: the engine (README, Engines).

    Returns:
        The loss, in the dtype of ``logits``.
    """
    return _ghm_c(logits, target, bins=_check_bins(bins), weight=weight, ignore_index=ignore_index,
                  reduction=reduction, validate=validate, distributed=distributed, state=None, backend=backend)


@declare("regression", "GHMRLoss", aliases=("ghm_r",))
def ghm_r_loss(pred: Tensor, target: Tensor, *, mu: float = 0.02, bins: int = 10,
               weight: Tensor | None = None, reduction: str = "mean",
               distributed: bool | None = None, backend: str | None = None) -> Tensor:
    """GHM-R: the authentic smooth L1 ``sqrt(d^2 + mu^2) - mu`` weighted by the inverse density of
    its gradient norm ``g = |d| / sqrt(d^2 + mu^2)``, ``d = pred - target``.

    Stateless (see :class:`GHMRLoss` for the moving average). The paper uses mu = 0.02.

    Args:
        pred, target: regression outputs and targets of the same shape.
        mu: smoothness of the authentic smooth L1, > 0.
        bins: number of unit regions.
        weight: per-element weights >= 0 broadcastable to ``pred`` (0 leaves an element out).
        reduction: ``"none"``, ``"sum"`` or ``"mean"`` (``(1/N) sum beta_i L_i``).
        distributed: all-reduce the histogram (``None``: when a process group of 2+ ranks exists).
        backend: the engine (README, Engines).

    Returns:
        The loss, in the dtype of ``pred``.
    """
    mu = _checks.number(mu, "mu", low=0.0, low_open=True)
    return _ghm_r(pred, target, mu=mu, bins=_check_bins(bins), weight=weight, reduction=reduction,
                  distributed=distributed, state=None, backend=backend)


class _GHMBase(StatisticsModule):
    statistics = ("counts", "steps")

    def __init__(self, bins: int, momentum: float, bias_correction: bool):
        super().__init__()
        self.bins = _check_bins(bins)
        self.momentum = _checks.number(momentum, "momentum", low=0.0, high=1.0, high_open=True)
        self.bias_correction = bool(bias_correction)
        self.register_buffer("counts", torch.zeros(self.bins, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros(self.bins, dtype=torch.float64))

    def _state(self) -> _MovingCounts | None:
        if self.momentum == 0:
            return None
        return _MovingCounts(self.counts, self.steps, self.momentum, self.bias_correction)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, momentum={self.momentum}, bias_correction={self.bias_correction}"


class GHMCLoss(_GHMBase):
    """GHM-C with a moving average of the gradient-norm histogram, kept in ``state_dict``.

    Args:
        bins: number of unit regions.
        momentum: moving-average momentum in [0, 1); 0 uses each batch alone. The paper's
            detection runs use 0.75.
        bias_correction: correct the zero-initialised average's start-up bias.
        weight, ignore_index, reduction, validate, distributed, backend: as :func:`ghm_c_loss`.
    """

    def __init__(self, *, bins: int = 10, momentum: float = 0.75, bias_correction: bool = True,
                 ignore_index: int = -100, reduction: str = "mean", validate: bool | None = None,
                 distributed: bool | None = None, backend: str | None = None):
        super().__init__(bins, momentum, bias_correction)
        _checks.check_reduction(reduction, None)
        self.ignore_index, self.reduction = ignore_index, reduction
        self.validate, self.distributed, self.backend = validate, distributed, backend

    def forward(self, logits: Tensor, target, weight: Tensor | None = None) -> Tensor:
        return _ghm_c(logits, target, bins=self.bins, weight=weight, ignore_index=self.ignore_index,
                      reduction=self.reduction, validate=self.validate, distributed=self.distributed,
                      state=self._state(), backend=self.backend)


class GHMRLoss(_GHMBase):
    """GHM-R with a moving average of the gradient-norm histogram, kept in ``state_dict``.

    Args:
        mu: smoothness of the authentic smooth L1 (0.02 in the paper).
        bins, momentum, bias_correction: as :class:`GHMCLoss`.
        reduction, distributed, backend: as :func:`ghm_r_loss`.
    """

    def __init__(self, *, mu: float = 0.02, bins: int = 10, momentum: float = 0.75,
                 bias_correction: bool = True, reduction: str = "mean", distributed: bool | None = None,
                 backend: str | None = None):
        super().__init__(bins, momentum, bias_correction)
        _checks.check_reduction(reduction, None)
        self.mu = _checks.number(mu, "mu", low=0.0, low_open=True)
        self.reduction, self.distributed, self.backend = reduction, distributed, backend

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return _ghm_r(pred, target, mu=self.mu, bins=self.bins, weight=weight, reduction=self.reduction,
                      distributed=self.distributed, state=self._state(), backend=self.backend)


__all__ = public_names(__name__)
