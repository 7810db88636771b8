"""Generalized Focal Loss (QFL, DFL, GFL) and Varifocal loss for dense detection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks, _math
from ._declare import declare, public_names
from ._backend import engine_for
from ._errors import InputValueError
from ._numerics import compute_dtype, output_dtype, safe_pow
from ._reduce import reduce_loss, reduction_scale
from ._sigmoid_engine import check_weight, sigmoid_loss
from ._softmax_engine import check_logits, softmax_loss



@declare("sigmoid", "QualityFocalLoss", aliases=("qfl",), hyperparameters=("beta",))
def quality_focal_loss(logits: Tensor, target, *, beta: float = 2.0, weight=None,
                       ignore_index: int = -100, reduction: str = "mean", normalizer=None,
                       validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Quality Focal Loss ``-|y - sigma|^beta ((1-y) log(1-sigma) + y log sigma)`` (arXiv:2006.04388).

    ``y`` in [0, 1] is the IoU quality of the positive class (0 for negatives). The minimum
    is at ``sigma = y``. The paper uses beta = 2. The detection form ``target=(labels,
    scores)`` gives the label's class the score and every other class 0 (label C is background).

    Args:
        beta: modulation exponent, >= 0; 0 gives BCE with soft targets.
        {sigmoid_args}

    {returns}
    """
    beta = _checks.number(beta, "beta", low=0.0)
    return sigmoid_loss(_math.QUALITY_FOCAL, dict(beta=beta), logits, target, weight=weight,
                        ignore_index=ignore_index, reduction=reduction, normalizer=normalizer,
                        validate=validate, backend=backend)


@declare("sigmoid", "VarifocalLoss", aliases=("vfl",), hyperparameters=("alpha", "gamma"))
def varifocal_loss(logits: Tensor, target, *, alpha: float = 0.75, gamma: float = 2.0,
                   iou_weighted: bool = True, weight=None, ignore_index: int = -100,
                   reduction: str = "mean", normalizer=None, validate: bool | None = None,
                   backend: str | None = None) -> Tensor:
    """Varifocal loss (Zhang et al., arXiv:2008.13367).

    ``-q (q log p + (1-q) log(1-p))`` for a positive with IoU-aware target q > 0 (without
    the leading q when ``iou_weighted=False``), ``-alpha p^gamma log(1-p)`` for q = 0.
    The paper uses alpha = 0.75, gamma = 2.

    Args:
        alpha: weight of the negatives, >= 0.
        gamma: focusing exponent on the negatives, >= 0.
        iou_weighted: weight positives by their target q.
        {sigmoid_args}

    {returns}
    """
    alpha = _checks.number(alpha, "alpha", low=0.0)
    gamma = _checks.number(gamma, "gamma", low=0.0)
    f, params = _math.VARIFOCAL, dict(alpha=alpha, gamma=gamma, iou_weighted=bool(iou_weighted))
    return sigmoid_loss(f, params, logits, target, weight=weight, ignore_index=ignore_index,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


def _check_distribution_target(logits: Tensor, target, weight, validate) -> None:
    _checks.float_tensor(target, "target")
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise InputValueError(f"`target` must have shape (N, *) = {expected}; got {tuple(target.shape)}")
    if weight is not None:
        check_weight(weight, target)
    if _checks.should_validate(validate, target) and not bool(torch.isfinite(target).all()):
        raise InputValueError("`target` must be finite")


def _two_hot(target: Tensor, num_bins: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """The target clamped to [0, n-1] (a new tensor), its left bin index and weight of the right bin."""
    y = target.to(dtype).clamp(0, num_bins - 1)
    left = y.floor().clamp(max=num_bins - 2)
    return y, left.long(), y - left


def _two_hot_distribution(target: Tensor, num_bins: int, dtype: torch.dtype) -> Tensor:
    _, left, w_right = _two_hot(target, num_bins, dtype)
    hot = F.one_hot(left, num_bins).to(dtype) * (1 - w_right).unsqueeze(-1)
    hot = hot + F.one_hot(left + 1, num_bins).to(dtype) * w_right.unsqueeze(-1)
    return hot.movedim(-1, 1)


@declare("distribution", "DistributionFocalLoss")
def distribution_focal_loss(logits: Tensor, target: Tensor, *, weight: Tensor | None = None,
                            reduction: str = "mean", normalizer=None, validate: bool | None = None,
                            backend: str | None = None) -> Tensor:
    """Distribution Focal Loss ``-((y_r - y) log S_l + (y - y_l) log S_r)`` (arXiv:2006.04388).

    A box edge is a distribution over ``n`` bins at 0, 1, ..., n-1 (a softmax over dim 1);
    a continuous target ``y`` is supervised on the two bins around it. Targets are clamped
    into [0, n-1] on a copy; the caller's tensor is untouched. The paper uses 8-16 bins.

    Args:
        logits: ``(N, n, *)`` bin scores, n >= 2.
        target: ``(N, *)`` float distances in bin units.
        weight: per-example rescaling broadcastable to ``(N, *)`` (not part of the mean's count).
        reduction: ``"none"`` (shape ``(N, *)``), ``"sum"`` or ``"mean"`` (over ``N * prod(*)``).
        normalizer: with ``reduction="mean"``, divide the sum by this instead.
        validate: check that targets are finite (``None``: on CPU outside ``torch.compile``).
        backend: the engine, as for every loss (README, Engines).

    Returns:
        The loss, in the dtype of ``logits``. Decode predictions with :func:`decode_distribution`.
    """
    num_bins = check_logits(logits)
    _check_distribution_target(logits, target, weight, validate)
    hot = _two_hot_distribution(target, num_bins, compute_dtype(logits))
    return softmax_loss(_math.poly_series, {}, logits, hot, reduction=reduction, normalizer=normalizer,
                        validate=False, sample_weight=weight, backend=backend)


@declare("distribution", "GeneralizedFocalLoss", hyperparameters=("beta",))
def generalized_focal_loss(logits: Tensor, target: Tensor, *, beta: float = 2.0,
                           weight: Tensor | None = None, reduction: str = "mean", normalizer=None,
                           validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Generalized Focal Loss ``-|y - y_hat|^beta ((y_r - y) log p_l + (y - y_l) log p_r)`` (arXiv:2006.04388).

    Over ``n`` bins at 0, 1, ..., n-1 with a softmax over dim 1: ``y_l <= y <= y_r`` are the
    bins around the target and ``y_hat = sum_i p_i y_i`` the predicted expectation.
    Special cases: beta = 0 is :func:`distribution_focal_loss`; with two bins and logits
    ``(0, x)``, ``y_hat = sigmoid(x)`` and this is :func:`quality_focal_loss` of x.

    Args:
        logits: ``(N, n, *)`` bin scores, n >= 2.
        target: ``(N, *)`` float targets in bin units, clamped into [0, n-1] on a copy.
        beta: modulation exponent, >= 0.
        weight: per-example rescaling broadcastable to ``(N, *)``.
        reduction: ``"none"`` (shape ``(N, *)``), ``"sum"`` or ``"mean"`` (over ``N * prod(*)``).
        normalizer: with ``reduction="mean"``, divide the sum by this instead.
        validate: check that targets are finite.
        backend: ``"auto"`` or ``"reference"``: GFL runs on autograd (its modulator couples all
            the bins of a row), and a forced ``"fused"`` or ``"triton"`` raises rather than being
            silently ignored (a process-wide default set by :func:`polyfocal.set_backend` is not
            forced).

    Returns:
        The loss, in the dtype of ``logits``.
    """
    engine_for(backend, logits)
    if backend in ("fused", "triton"):
        raise InputValueError(f"generalized_focal_loss has no {backend} engine (its modulator couples a row's "
                              "bins); use backend='reference' or 'auto'")
    num_bins = check_logits(logits)
    _check_distribution_target(logits, target, weight, validate)
    beta = _checks.number(beta, "beta", low=0.0)
    _checks.check_reduction(reduction, normalizer)
    dtype, out_dtype = compute_dtype(logits), output_dtype(logits)
    with torch.autocast(logits.device.type, enabled=False):
        logp = logits.to(dtype).log_softmax(1)
        y, left, w_right = _two_hot(target, num_bins, dtype)
        logp_l = logp.gather(1, left.unsqueeze(1)).squeeze(1)
        logp_r = logp.gather(1, (left + 1).unsqueeze(1)).squeeze(1)
        y_hat = decode_distribution(logp, log_probs=True)
        loss = -((1 - w_right) * logp_l + w_right * logp_r) * safe_pow((y - y_hat).abs(), beta)
        if weight is not None:
            loss = loss * weight.to(dtype)
        scale = reduction_scale(reduction, loss.numel(), normalizer, loss)
        return reduce_loss(loss, reduction, scale).to(out_dtype)


def decode_distribution(logits: Tensor, *, dim: int = 1, log_probs: bool = False) -> Tensor:
    """The expectation ``sum_i p_i i`` of a distribution over bins 0, 1, ..., n-1 along ``dim``.

    Args:
        logits: scores (softmax taken here), or log-probabilities with ``log_probs=True``.
        dim: the bin dimension.

    Returns:
        The expected bin position, the shape of ``logits`` without ``dim``.
    """
    _checks.float_tensor(logits, "logits")
    probs = logits.exp() if log_probs else logits.softmax(dim)
    positions = torch.arange(logits.shape[dim], dtype=probs.dtype, device=probs.device)
    shape = [1] * logits.ndim
    shape[dim] = -1
    return (probs * positions.view(shape)).sum(dim)


__all__ = [*public_names(__name__), "decode_distribution"]
