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

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import _checks, _math
from ._numerics import binary_cross_entropy, compute_dtype, output_dtype, sigmoid_target_gap
from ._reduce import reduce_loss, reduction_scale
from ._sigmoid_engine import check_weight, dense_target

__all__ = ["ghm_c_loss", "ghm_r_loss", "GHMCLoss", "GHMRLoss"]


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
        unbias = 1 - torch.pow(torch.full_like(self.counts, self.momentum), self.steps)
        return (self.counts / torch.where(unbias > 0, unbias, torch.ones_like(unbias))).to(dtype)


def _is_distributed(distributed: bool | None) -> bool:
    if distributed is not None:
        return bool(distributed)
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def harmonizing_weights(g: Tensor, weight: Tensor, bins: int, state: _MovingCounts | None = None,
                        distributed: bool | None = None) -> tuple[Tensor, Tensor]:
    """``beta_i / N = 1 / GD(g_i)`` times each element's weight, and N (the weighted count).

    ``g`` in [0, 1] and ``weight`` (>= 0) have the same shape. One vectorised histogram,
    no host sync.
    """
    index = (g * bins).floor().clamp(0, bins - 1).long()
    totals = torch.zeros(bins + 1, dtype=weight.dtype, device=weight.device)
    totals.index_add_(0, index.flatten(), weight.flatten())
    totals[bins] = weight.sum()
    if _is_distributed(distributed):
        dist.all_reduce(totals)
    batch_counts, n = totals[:bins], totals[bins]
    counts = batch_counts if state is None else state.update(batch_counts)
    nonempty = (batch_counts > 0).sum().to(weight.dtype)
    density = counts * nonempty
    density = torch.where(density > 0, density, torch.ones_like(density))
    return weight / density[index], n


def _check_bins(bins) -> int:
    return _checks.integer(bins, "bins", low=1)


def _ghm_c(logits: Tensor, target, *, bins: int, weight, ignore_index: int, reduction: str,
           validate, distributed, state: _MovingCounts | None) -> Tensor:
    _checks.float_tensor(logits, "logits")
    _checks.check_reduction(reduction, None)
    weight = check_weight(weight, logits)
    dtype, out_dtype = compute_dtype(logits), output_dtype(logits)
    with torch.autocast(logits.device.type, enabled=False):
        x = logits.to(dtype)
        y, valid, _ = dense_target(logits, target, ignore_index, validate, dtype)
        w = torch.ones_like(x) if weight is None else weight.to(dtype).expand_as(x)
        if valid is not None:
            w = torch.where(valid, w, torch.zeros_like(w))
        g = sigmoid_target_gap(x.detach(), y)
        beta_over_n, n = harmonizing_weights(g, w, bins, state, distributed)
        loss = beta_over_n * n * binary_cross_entropy(x, y)
        return reduce_loss(loss, reduction, reduction_scale(reduction, n, None, loss)).to(out_dtype)


def _ghm_r(pred: Tensor, target: Tensor, *, mu: float, bins: int, weight, reduction: str,
           distributed, state: _MovingCounts | None) -> Tensor:
    _checks.float_tensor(pred, "pred")
    _checks.float_tensor(target, "target")
    if target.shape != pred.shape:
        raise ValueError(f"`target` must have the shape of `pred` {tuple(pred.shape)}; got {tuple(target.shape)}")
    _checks.check_reduction(reduction, None)
    weight = check_weight(weight, pred)
    dtype, out_dtype = compute_dtype(pred), output_dtype(pred)
    with torch.autocast(pred.device.type, enabled=False):
        diff = pred.to(dtype) - target.to(dtype)
        w = torch.ones_like(diff) if weight is None else weight.to(dtype).expand_as(diff)
        d = diff.detach()
        g = d.abs() / torch.sqrt(d * d + mu * mu)
        beta_over_n, n = harmonizing_weights(g, w, bins, state, distributed)
        loss = beta_over_n * n * _math.smooth_l1_authentic(diff, mu=mu)
        return reduce_loss(loss, reduction, reduction_scale(reduction, n, None, loss)).to(out_dtype)


def ghm_c_loss(logits: Tensor, target, *, bins: int = 10, weight: Tensor | None = None,
               ignore_index: int = -100, reduction: str = "mean", validate: bool | None = None,
               distributed: bool | None = None) -> Tensor:
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

    Returns:
        The loss, in the dtype of ``logits``.
    """
    return _ghm_c(logits, target, bins=_check_bins(bins), weight=weight, ignore_index=ignore_index,
                  reduction=reduction, validate=validate, distributed=distributed, state=None)


def ghm_r_loss(pred: Tensor, target: Tensor, *, mu: float = 0.02, bins: int = 10,
               weight: Tensor | None = None, reduction: str = "mean",
               distributed: bool | None = None) -> Tensor:
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

    Returns:
        The loss, in the dtype of ``pred``.
    """
    mu = _checks.number(mu, "mu", low=0.0, low_open=True)
    return _ghm_r(pred, target, mu=mu, bins=_check_bins(bins), weight=weight, reduction=reduction,
                  distributed=distributed, state=None)


class _GHMBase(nn.Module):
    def __init__(self, bins: int, momentum: float, bias_correction: bool):
        super().__init__()
        self.bins = _check_bins(bins)
        self.momentum = _checks.number(momentum, "momentum", low=0.0, high=1.0, high_open=True)
        self.bias_correction = bool(bias_correction)
        self.register_buffer("counts", torch.zeros(self.bins, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros(self.bins, dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        # The histogram stays float64 whatever the Module is cast to: fp16 counts overflow at
        # 65504 and low-precision averages lose small updates.
        super()._apply(fn, recurse)
        for name in ("counts", "steps"):
            setattr(self, name, getattr(self, name).to(torch.float64))
        return self

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
        weight, ignore_index, reduction, validate, distributed: as :func:`ghm_c_loss`.
    """

    def __init__(self, *, bins: int = 10, momentum: float = 0.75, bias_correction: bool = True,
                 ignore_index: int = -100, reduction: str = "mean", validate: bool | None = None,
                 distributed: bool | None = None):
        super().__init__(bins, momentum, bias_correction)
        _checks.check_reduction(reduction, None)
        self.ignore_index, self.reduction = ignore_index, reduction
        self.validate, self.distributed = validate, distributed

    def forward(self, logits: Tensor, target, weight: Tensor | None = None) -> Tensor:
        return _ghm_c(logits, target, bins=self.bins, weight=weight, ignore_index=self.ignore_index,
                      reduction=self.reduction, validate=self.validate, distributed=self.distributed,
                      state=self._state())


class GHMRLoss(_GHMBase):
    """GHM-R with a moving average of the gradient-norm histogram, kept in ``state_dict``.

    Args:
        mu: smoothness of the authentic smooth L1 (0.02 in the paper).
        bins, momentum, bias_correction: as :class:`GHMCLoss`.
        reduction, distributed: as :func:`ghm_r_loss`.
    """

    def __init__(self, *, mu: float = 0.02, bins: int = 10, momentum: float = 0.75,
                 bias_correction: bool = True, reduction: str = "mean", distributed: bool | None = None):
        super().__init__(bins, momentum, bias_correction)
        _checks.check_reduction(reduction, None)
        self.mu = _checks.number(mu, "mu", low=0.0, low_open=True)
        self.reduction, self.distributed = reduction, distributed

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return _ghm_r(pred, target, mu=self.mu, bins=self.bins, weight=weight, reduction=self.reduction,
                      distributed=self.distributed, state=self._state())
