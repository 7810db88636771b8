"""The math of each loss, written once, as elementwise functions of a probability.

Every loss is a function of a :class:`~polyfocal._numerics.Probability` ``P`` (``log p``, ``log(1-p)``,
``p`` and ``1-p`` together). Softmax-family losses are functions ``phi(P)`` of one class's
probability, applied to the target class (or averaged over a soft target). Sigmoid-family
losses are functions ``f(P, y)`` of ``p = sigmoid(x)`` and a target in [0, 1] (and, for hard
targets, of ``p_t`` and ``y``). The engines (reference autograd, fused paths) only evaluate these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._numerics import (Probability, bernoulli_cross_entropy, bucket_index, is_constant, power, safe_pow,
                        sigmoid_complement_of_target, sigmoid_target_gap)


# --- functions of p_t (softmax family; also the sigmoid family's Su losses) ----------------------

def poly_series(prob: Probability, *, coefficients: Sequence[float] = (), gamma: float = 0.0,
                keep_tail: bool = True) -> Tensor:
    """``sum_j a_j (1-p)^(j+gamma)``, with ``a_j = 1/j`` beyond the given coefficients when
    ``keep_tail`` (the exact cross-entropy tail), or nothing beyond them when it is False.

    With the tail kept this is ``(1-p)^gamma * (-log p + sum_j (a_j - 1/j) (1-p)^j)``:
    cross-entropy (no coefficients), focal loss (gamma), Poly-1 and Poly-N.
    """
    loss = -prob.logp if keep_tail else torch.zeros_like(prob.logp)
    for j, a in enumerate(coefficients, start=1):
        c = a - 1.0 / j if keep_tail else a
        if not is_constant(c, 0):
            loss = loss + c * power(prob.one_minus_p, prob.log1m, j)
    return loss if is_constant(gamma, 0) else loss * power(prob.one_minus_p, prob.log1m, gamma)


def poly_series_and_slope(prob: Probability, *, coefficients: Sequence[float] = (), gamma: float = 0.0,
                          keep_tail: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`poly_series` and its derivative in the margin ``z`` (``p = sigmoid(z)``: ``dp/dz = p (1-p)``,
    ``d log p / dz = 1-p``) together, sharing their terms (the eager row engine's few ops). With
    ``L = B M``, ``M = (1-p)^gamma``: ``dL/dz = M (dB/dz - gamma p B)``."""
    base = -prob.logp if keep_tail else torch.zeros_like(prob.logp)
    d_base = -prob.one_minus_p if keep_tail else torch.zeros_like(prob.one_minus_p)
    for j, a in enumerate(coefficients, start=1):
        c = a - 1.0 / j if keep_tail else a
        if not is_constant(c, 0):
            term = c * power(prob.one_minus_p, prob.log1m, j)
            base, d_base = base + term, d_base - j * term * prob.p
    if is_constant(gamma, 0):
        return base, d_base
    modulator = power(prob.one_minus_p, prob.log1m, gamma)
    return base * modulator, (d_base - gamma * prob.p * base) * modulator


def poly_series_slope(prob: Probability, **params) -> Tensor:
    """:func:`poly_series`'s derivative in the margin ``z`` (:func:`poly_series_and_slope`)."""
    return poly_series_and_slope(prob, **params)[1]


def soft_truncation(prob: Probability, *, k: float) -> Tensor:
    """Su's softened truncation ``sigmoid(-k m) * (-log p)`` with the margin ``m = logit(p)``."""
    margin = prob.logp - prob.log1m
    return torch.exp(F.logsigmoid(-k * margin)) * -prob.logp


def soft_truncation_slope(prob: Probability, *, k: float) -> Tensor:
    """:func:`soft_truncation`'s derivative in the margin ``z``, which is its ``m``."""
    margin = prob.logp - prob.log1m
    return -torch.exp(F.logsigmoid(-k * margin)) * (k * torch.sigmoid(k * margin) * -prob.logp + prob.one_minus_p)


def _log(value):
    return torch.log(value) if isinstance(value, Tensor) else math.log(value)


def hard_truncation(prob: Probability, *, margin: float) -> Tensor:
    """Su's hard truncation: ``-log p`` while ``p <= margin``, then no loss and no gradient."""
    return torch.where(prob.logp > _log(margin), torch.zeros_like(prob.logp), -prob.logp)


def hard_truncation_slope(prob: Probability, *, margin: float) -> Tensor:
    return torch.where(prob.logp > _log(margin), torch.zeros_like(prob.one_minus_p), -prob.one_minus_p)


def probability_weighted(prob: Probability) -> Tensor:
    """Dynamic Fine-Tuning's ``-sg(p) log p`` (arXiv:2508.05629): cross-entropy weighted by the
    probability, the weight held constant (``sg``, stop-gradient), so its gradient is ``p`` times
    cross-entropy's."""
    return prob.p.detach() * -prob.logp


def probability_weighted_slope(prob: Probability) -> Tensor:
    """:func:`probability_weighted`'s derivative in the margin ``z``: ``sg(p) * -(1-p)``."""
    return prob.p.detach() * -prob.one_minus_p


def inverse_focal(prob: Probability, *, gamma: float) -> Tensor:
    """Inverse focal loss ``-(1 + p)^gamma log p`` (Wang et al., NeurIPS 2021): a modulator that
    grows with ``p``, against under-confidence."""
    return torch.exp(gamma * torch.log1p(prob.p)) * -prob.logp


def inverse_focal_slope(prob: Probability, *, gamma: float) -> Tensor:
    """:func:`inverse_focal`'s derivative in the margin ``z``: ``(1+p)^gamma (1-p) (gamma p (-log p) / (1+p) - 1)``."""
    modulator = torch.exp(gamma * torch.log1p(prob.p))
    return modulator * prob.one_minus_p * (gamma * prob.p * -prob.logp / (1 + prob.p) - 1)


def reduced_focal(prob: Probability, *, gamma: float, threshold: float) -> Tensor:
    """Reduced focal loss (Sergievskiy and Ponamarev, 2019): cross-entropy ``-log p`` while ``p < threshold``,
    then ``((1-p) / threshold)^gamma (-log p)`` (focal loss scaled by ``threshold^-gamma``; continuous at 1/2)."""
    focal = poly_series(prob, gamma=gamma) * threshold ** -gamma
    return torch.where(prob.logp < _log(threshold), -prob.logp, focal)


def reduced_focal_slope(prob: Probability, *, gamma: float, threshold: float) -> Tensor:
    focal = poly_series_slope(prob, gamma=gamma) * threshold ** -gamma
    return torch.where(prob.logp < _log(threshold), -prob.one_minus_p, focal)


def power_weighted(prob: Probability, *, gamma) -> Tensor:
    """``-p^gamma log p``: the single-label ASL's term of a class other than the target."""
    return power(prob.p, prob.logp, gamma) * -prob.logp


def target_minus_other(prob: Probability, *, gamma_pos, gamma_neg) -> Tensor:
    """The single-label ASL's target form less the other classes' form, ``-((1-p)^gamma_pos - p^gamma_neg) log p``
    (added at the target to a sum of the other form over every class)."""
    return poly_series(prob, gamma=gamma_pos) - power_weighted(prob, gamma=gamma_neg)


def scheduled_gamma(p: Tensor, bounds: Sequence, gammas: Sequence) -> Tensor:
    """A step function of ``p``: ``gammas[i]`` where ``p < bounds[i]`` first holds (the last for the rest)."""
    gamma = torch.zeros_like(p) + gammas[-1]
    for bound, value in reversed(list(zip(bounds[:-1], gammas[:-1]))):
        gamma = torch.where(p < bound, value, gamma)
    return gamma


def sample_dependent_focal(prob: Probability, *, bounds: Sequence, gammas: Sequence) -> Tensor:
    """Focal loss with gamma a step function of ``p`` (Mukhoti et al., NeurIPS 2020: FLSD-53 is gamma = 5
    below p = 0.2, 3 above); gamma is constant on each step, so it has no derivative of its own."""
    return poly_series(prob, gamma=scheduled_gamma(prob.p, bounds, gammas))


def sample_dependent_focal_slope(prob: Probability, *, bounds: Sequence, gammas: Sequence) -> Tensor:
    return poly_series_slope(prob, gamma=scheduled_gamma(prob.p, bounds, gammas))


def binned_gamma(p: Tensor, inner_edges: Tensor, gammas: Tensor) -> Tensor:
    """``gammas[b]`` for the bin ``b`` of ``p`` (the number of inner edges it reaches), no derivative."""
    return gammas.to(p.dtype)[bucket_index(p.detach(), inner_edges.to(p.dtype))]


def binned_focal(prob: Probability, *, inner_edges: Tensor, gammas: Tensor) -> Tensor:
    """AdaFocal's loss (Ghosh, Schaaf and Gormley, NeurIPS 2022): gamma looked up from ``p``'s bin,
    focal loss ``-(1-p)^gamma log p`` where it is >= 0 and inverse focal loss ``-(1+p)^|gamma| log p``
    where it is negative."""
    gamma = binned_gamma(prob.p, inner_edges, gammas)
    magnitude = gamma.abs()
    return torch.where(gamma >= 0, poly_series(prob, gamma=magnitude), inverse_focal(prob, gamma=magnitude))


def binned_focal_slope(prob: Probability, *, inner_edges: Tensor, gammas: Tensor) -> Tensor:
    gamma = binned_gamma(prob.p, inner_edges, gammas)
    magnitude = gamma.abs()
    return torch.where(gamma >= 0, poly_series_slope(prob, gamma=magnitude), inverse_focal_slope(prob, gamma=magnitude))


def dual_focal(prob: Probability, *, gamma: float, log_below: Tensor) -> Tensor:
    """Dual focal loss ``-(1 - p + p_j)^gamma log p`` (Tao et al., ICML 2023), ``p_j`` the largest
    probability of the row below ``p`` (0 where there is none), given as ``log_below``. ``p_j`` is part
    of ``1 - p``, so the modulator's base is ``log(1-p) + log1p(p_j / (1-p))`` with the ratio in [0, 1]:
    exact where ``1 - p`` and ``p_j`` are tiny (and not ``logaddexp``, which inductor compiled to NaN
    beside the softmax's ``log(1-p)`` with a ``-inf`` ``p_j``, torch 2.13)."""
    log_base = prob.log1m + torch.log1p(torch.exp(log_below - prob.log1m))
    return power(torch.exp(log_base), log_base, gamma) * -prob.logp


#: functions of p that also read ``log_below``, the log of the largest probability of the row below
#: ``p`` (:func:`polyfocal._numerics.log_probability_below`): not functions of p_t alone, so the
#: softmax row engine (which reduces a row to p_t) does not take them
READS_BELOW = frozenset({dual_focal})


#: written-out derivatives in the margin ``z`` of the functions of p_t, for the eager row engine
#: (``_fused.log_slope`` takes the same derivative by autograd; the tests hold them equal)
SLOPES: dict[Callable, Callable] = {poly_series: poly_series_slope, soft_truncation: soft_truncation_slope,
                                    hard_truncation: hard_truncation_slope,
                                    probability_weighted: probability_weighted_slope, inverse_focal: inverse_focal_slope,
                                    sample_dependent_focal: sample_dependent_focal_slope,
                                    binned_focal: binned_focal_slope, reduced_focal: reduced_focal_slope}
#: the functions of p_t whose value and slope share their terms: both from one call
VALUES_AND_SLOPES: dict[Callable, Callable] = {poly_series: poly_series_and_slope}


# --- functions of (p, target) with p = sigmoid(logit) (sigmoid family) ----------------------------

def expected_over_binary(phi, prob: Probability, y: Tensor, **params) -> Tensor:
    """A function of p_t averaged over a binary target: ``y phi(p) + (1-y) phi(1-p)``."""
    return y * phi(prob, **params) + (1 - y) * phi(prob.complement(), **params)


def alpha_t(y: Tensor, alpha: float | None):
    """RetinaNet's class balance: ``alpha`` on positives, ``1 - alpha`` on negatives."""
    return 1.0 if alpha is None else (1 - alpha) + (2 * alpha - 1) * y  # alpha y + (1 - alpha)(1 - y)


def _focal_terms(ce: Tensor, one_minus_pt: Tensor, log1m: Tensor, y: Tensor, gamma, alpha, epsilon) -> Tensor:
    """``(1-p_t)^gamma (alpha_t ce + epsilon (1-p_t))``: one modulator for both terms."""
    loss = alpha_t(y, alpha) * ce
    if not is_constant(epsilon, 0):
        loss = loss + epsilon * one_minus_pt
    return loss * power(one_minus_pt, log1m, gamma)


def sigmoid_focal(prob: Probability, y: Tensor, *, gamma: float, alpha: float | None = None,
                  epsilon: float = 0.0) -> Tensor:
    """``alpha_t (1-p_t)^gamma BCE + epsilon (1-p_t)^(gamma+1)``: BCE, focal, Poly-1 BCE and Poly-1 focal."""
    one_minus_pt, log1m = sigmoid_complement_of_target(prob, y)
    return _focal_terms(bernoulli_cross_entropy(prob, y), one_minus_pt, log1m, y, gamma, alpha, epsilon)


def weighted_binary_cross_entropy(prob: Probability, y: Tensor, *, pos_weight: Tensor | None) -> Tensor:
    """``-(w_pos y log p + (1-y) log(1-p))``, as ``binary_cross_entropy_with_logits``."""
    if pos_weight is None:
        return bernoulli_cross_entropy(prob, y)
    return -(pos_weight * y * prob.logp + (1 - y) * prob.log1m)


def quality_focal(prob: Probability, y: Tensor, *, beta: float) -> Tensor:
    """QFL: ``|y - sigma|^beta * BCE(sigma, y)``."""
    return safe_pow(sigmoid_target_gap(prob, y), beta) * bernoulli_cross_entropy(prob, y)


def varifocal(prob: Probability, quality: Tensor, *, alpha: float, gamma: float, iou_weighted: bool) -> Tensor:
    """VFL: ``q * BCE(p, q)`` (or ``BCE``) for the IoU quality q > 0, ``alpha p^gamma BCE(p, 0)`` for q = 0."""
    positive = quality > 0
    pos_factor = quality if iou_weighted else torch.ones_like(quality)
    neg_factor = alpha * power(prob.p, prob.logp, gamma)
    return torch.where(positive, pos_factor, neg_factor) * bernoulli_cross_entropy(prob, quality)


def smooth_l1_authentic(diff: Tensor, *, mu: float) -> Tensor:
    """GHM-R's authentic smooth L1: ``sqrt(d^2 + mu^2) - mu``."""
    return torch.sqrt(diff * diff + mu * mu) - mu


def _asymmetric_negative(prob: Probability, gamma_neg, clip) -> Tensor:
    """ASL's term of a negative at ``p``: ``p_m^gamma_neg (-log(1 - p_m))`` with ``p_m = max(p - clip, 0)``
    (``1 - p_m = min(1 - p + clip, 1)``, never a difference near 1); with ``clip`` 0, focal loss in ``1 - p``."""
    if is_constant(clip, 0):
        return power(prob.p, prob.logp, gamma_neg) * -prob.log1m
    shifted = (prob.p - clip).clamp_min(0)
    return safe_pow(shifted, gamma_neg) * -torch.log((prob.one_minus_p + clip).clamp_max(1))


def asymmetric(prob: Probability, y: Tensor, *, gamma_pos, gamma_neg, clip) -> Tensor:
    """Asymmetric loss, ASL (Ben-Baruch et al., ICCV 2021): ``y (1-p)^gamma_pos (-log p)`` plus
    ``(1-y) p_m^gamma_neg (-log(1 - p_m))``, ``p_m = max(p - clip, 0)``; linear in the target ``y``."""
    return y * poly_series(prob, gamma=gamma_pos) + (1 - y) * _asymmetric_negative(prob, gamma_neg, clip)


# --- binary forms: functions of (p_t, y) for targets exactly 0 or 1 -------------------------------
# With a hard target, p_t = sigmoid(z) with z = (2y-1) x: no log of the target, no mixing.

def binary_focal(prob: Probability, y: Tensor, *, gamma, alpha=None, epsilon=0.0) -> Tensor:
    return _focal_terms(-prob.logp, prob.one_minus_p, prob.log1m, y, gamma, alpha, epsilon)


def binary_focal_and_slope(prob: Probability, y: Tensor, *, gamma, alpha=None, epsilon=0.0) -> tuple[Tensor, Tensor]:
    """:func:`binary_focal` and its derivative in the margin ``z`` (``p_t = sigmoid(z)``) together: with
    ``B = alpha_t (-log p_t) + epsilon (1-p_t)`` and ``M = (1-p_t)^gamma``, ``B M`` and ``M (dB/dz - gamma p_t B)``."""
    a = alpha_t(y, alpha)
    base, d_base = a * -prob.logp, -prob.one_minus_p * a
    if not is_constant(epsilon, 0):
        base, d_base = base + epsilon * prob.one_minus_p, d_base - epsilon * prob.p * prob.one_minus_p
    if is_constant(gamma, 0):
        return base, d_base
    modulator = power(prob.one_minus_p, prob.log1m, gamma)
    return base * modulator, (d_base - gamma * prob.p * base) * modulator


def binary_focal_slope(prob: Probability, y: Tensor, **params) -> Tensor:
    """:func:`binary_focal`'s derivative in the margin ``z`` (:func:`binary_focal_and_slope`)."""
    return binary_focal_and_slope(prob, y, **params)[1]


def hard_target_bce(prob: Probability, y: Tensor, *, pos_weight=None) -> Tensor:
    return -prob.logp if pos_weight is None else -prob.logp * (1 + (pos_weight - 1) * y)


def hard_target_bce_slope(prob: Probability, y: Tensor, *, pos_weight=None) -> Tensor:
    return -prob.one_minus_p if pos_weight is None else -prob.one_minus_p * (1 + (pos_weight - 1) * y)


def binary_quality_focal(prob: Probability, y: Tensor, *, beta) -> Tensor:
    del y  # |y - sigma| = 1 - p_t for a hard target
    return poly_series(prob, gamma=beta)


def binary_varifocal(prob: Probability, y: Tensor, *, alpha, gamma, iou_weighted) -> Tensor:
    del iou_weighted  # q = 1 for a hard positive
    return -prob.logp * (y + (1 - y) * alpha * power(prob.one_minus_p, prob.log1m, gamma))


def binary_quality_focal_slope(prob: Probability, y: Tensor, *, beta) -> Tensor:
    del y
    return poly_series_slope(prob, gamma=beta)


def binary_varifocal_slope(prob: Probability, y: Tensor, *, alpha, gamma, iou_weighted) -> Tensor:
    del iou_weighted
    negative = (1 - y) * alpha * power(prob.one_minus_p, prob.log1m, gamma)
    return -prob.one_minus_p * (y + negative) + prob.logp * gamma * prob.p * negative


def binary_soft_truncation(prob: Probability, y: Tensor, *, k) -> Tensor:
    del y
    return soft_truncation(prob, k=k)


def binary_soft_truncation_slope(prob: Probability, y: Tensor, *, k) -> Tensor:
    del y
    return soft_truncation_slope(prob, k=k)


def binary_hard_truncation(prob: Probability, y: Tensor, *, margin) -> Tensor:
    del y
    return hard_truncation(prob, margin=margin)


def binary_hard_truncation_slope(prob: Probability, y: Tensor, *, margin) -> Tensor:
    del y
    return hard_truncation_slope(prob, margin=margin)


def binary_asymmetric(prob: Probability, y: Tensor, *, gamma_pos, gamma_neg, clip) -> Tensor:
    return y * poly_series(prob, gamma=gamma_pos) + (1 - y) * _asymmetric_negative(prob.complement(), gamma_neg, clip)


def _asymmetric_negative_slope(prob: Probability, gamma_neg, clip) -> Tensor:
    """The negative's term at ``p = 1 - p_t`` differentiated in ``z`` (``p_t = sigmoid(z)``): with
    ``q = p - clip > 0``, ``-p_t (1-p_t) q^gamma (gamma (-log(1-q)) / q + 1 / (1-q))``, and 0 where ``q <= 0``."""
    if is_constant(clip, 0):
        return poly_series_slope(prob, gamma=gamma_neg)
    q = prob.one_minus_p - clip
    kept = q > 0
    q = torch.where(kept, q, torch.full_like(q, 0.5))  # any value in (0, 1): the slope is 0 there
    inner = gamma_neg * -torch.log1p(-q) / q + 1 / (prob.p + clip)
    slope = -prob.p * prob.one_minus_p * safe_pow(q, gamma_neg) * inner
    return torch.where(kept, slope, torch.zeros_like(slope))


def binary_asymmetric_slope(prob: Probability, y: Tensor, *, gamma_pos, gamma_neg, clip) -> Tensor:
    return y * poly_series_slope(prob, gamma=gamma_pos) + (1 - y) * _asymmetric_negative_slope(prob, gamma_neg, clip)


def binary_reduced_focal(prob: Probability, y: Tensor, *, gamma, threshold) -> Tensor:
    del y
    return reduced_focal(prob, gamma=gamma, threshold=threshold)


def binary_reduced_focal_slope(prob: Probability, y: Tensor, *, gamma, threshold) -> Tensor:
    del y
    return reduced_focal_slope(prob, gamma=gamma, threshold=threshold)


def side_weighted_bce(prob: Probability, y: Tensor, *, positive, negative) -> Tensor:
    """EQLv2's BCE times ``y positive + (1 - y) negative`` (per-class weights of the two sides)."""
    return (y * positive + (1 - y) * negative) * bernoulli_cross_entropy(prob, y)


def binary_side_weighted_bce(prob: Probability, y: Tensor, *, positive, negative) -> Tensor:
    return (y * positive + (1 - y) * negative) * -prob.logp


def binary_side_weighted_bce_slope(prob: Probability, y: Tensor, *, positive, negative) -> Tensor:
    return (y * positive + (1 - y) * negative) * -prob.one_minus_p


@dataclass(frozen=True)
class SigmoidMath:
    """A sigmoid-family loss: its form for soft targets ``f(P, y)`` with ``P`` the probability
    ``sigmoid(x)``, and for hard ones ``f(P_t, y)`` with ``P_t`` that of the target's side (and
    that form's written-out derivative, for the eager engine; the tests hold it to autograd's)."""

    soft: Callable
    binary: Callable
    binary_slope: Callable  # ``binary``'s derivative in the margin ``z`` (``P_t = sigmoid(z)``)
    binary_and_slope: Callable | None = None  # both at once, where they share terms (fewer eager ops)


BCE = SigmoidMath(weighted_binary_cross_entropy, hard_target_bce, hard_target_bce_slope)
FOCAL = SigmoidMath(sigmoid_focal, binary_focal, binary_focal_slope, binary_focal_and_slope)
QUALITY_FOCAL = SigmoidMath(quality_focal, binary_quality_focal, binary_quality_focal_slope)
VARIFOCAL = SigmoidMath(varifocal, binary_varifocal, binary_varifocal_slope)
SOFT_TRUNCATION = SigmoidMath(partial(expected_over_binary, soft_truncation), binary_soft_truncation,
                              binary_soft_truncation_slope)
HARD_TRUNCATION = SigmoidMath(partial(expected_over_binary, hard_truncation), binary_hard_truncation,
                              binary_hard_truncation_slope)
ASYMMETRIC = SigmoidMath(asymmetric, binary_asymmetric, binary_asymmetric_slope)
REDUCED_FOCAL = SigmoidMath(partial(expected_over_binary, reduced_focal), binary_reduced_focal,
                            binary_reduced_focal_slope)
SIDE_WEIGHTED_BCE = SigmoidMath(side_weighted_bce, binary_side_weighted_bce, binary_side_weighted_bce_slope)
