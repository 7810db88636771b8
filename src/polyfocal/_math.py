"""The math of each loss, written once, as elementwise functions.

Softmax-family losses are functions ``phi(log p, log(1 - p))`` of one class's
probability, applied to the target class (or averaged over a soft target).
Sigmoid-family losses are functions ``f(log p, log(1 - p), y)`` of ``p = sigmoid(x)`` and a
target in [0, 1] (and, for hard targets, of ``log p_t``, ``log(1 - p_t)`` and ``y``).
The engines (reference autograd, fused paths) only evaluate these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._numerics import (binary_cross_entropy, is_constant, pow_of_log, safe_pow, sigmoid_log1m_pt,
                        sigmoid_target_gap)


# --- functions of p_t (softmax family; also the sigmoid family's Su losses) ----------------------

def poly_series(logp: Tensor, log1m: Tensor, *, coefficients: Sequence[float] = (),
                gamma: float = 0.0, keep_tail: bool = True) -> Tensor:
    """``sum_j a_j (1-p)^(j+gamma)``, with ``a_j = 1/j`` beyond the given coefficients when
    ``keep_tail`` (the exact cross-entropy tail), or nothing beyond them when it is False.

    With the tail kept this is ``(1-p)^gamma * (-log p + sum_j (a_j - 1/j) (1-p)^j)``:
    cross-entropy (no coefficients), focal loss (gamma), Poly-1 and Poly-N.
    """
    loss = -logp if keep_tail else torch.zeros_like(logp)
    for j, a in enumerate(coefficients, start=1):
        c = a - 1.0 / j if keep_tail else a
        if not is_constant(c, 0):
            loss = loss + c * pow_of_log(log1m, j)
    return loss if is_constant(gamma, 0) else loss * pow_of_log(log1m, gamma)


def soft_truncation(logp: Tensor, log1m: Tensor, *, k: float) -> Tensor:
    """Su's softened truncation ``sigmoid(-k m) * (-log p)`` with the margin ``m = logit(p)``."""
    margin = logp - log1m
    return torch.exp(F.logsigmoid(-k * margin)) * -logp


def hard_truncation(logp: Tensor, log1m: Tensor, *, margin: float) -> Tensor:
    """Su's hard truncation: ``-log p`` while ``p <= margin``, then no loss and no gradient."""
    del log1m  # the step depends on p alone
    log_margin = torch.log(margin) if isinstance(margin, Tensor) else math.log(margin)
    return torch.where(logp > log_margin, torch.zeros_like(logp), -logp)


# --- functions of (log p, log(1 - p), target) with p = sigmoid(logit) (sigmoid family) ----------

def expected_over_binary(phi, logp: Tensor, log1mp: Tensor, y: Tensor, **params) -> Tensor:
    """A function of p_t averaged over a binary target: ``y phi(p) + (1-y) phi(1-p)``."""
    return y * phi(logp, log1mp, **params) + (1 - y) * phi(log1mp, logp, **params)


def alpha_t(y: Tensor, alpha: float | None):
    """RetinaNet's class balance: ``alpha`` on positives, ``1 - alpha`` on negatives."""
    return 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)


def sigmoid_focal(logp: Tensor, log1mp: Tensor, y: Tensor, *, gamma: float, alpha: float | None = None,
                  epsilon: float = 0.0) -> Tensor:
    """``alpha_t (1-p_t)^gamma BCE + epsilon (1-p_t)^(gamma+1)``: BCE, focal, Poly-1 BCE and Poly-1 focal."""
    log1m = sigmoid_log1m_pt(logp, log1mp, y)
    loss = alpha_t(y, alpha) * pow_of_log(log1m, gamma) * binary_cross_entropy(logp, log1mp, y)
    if not is_constant(epsilon, 0):
        loss = loss + epsilon * pow_of_log(log1m, gamma + 1)
    return loss


def weighted_binary_cross_entropy(logp: Tensor, log1mp: Tensor, y: Tensor, *, pos_weight: Tensor | None) -> Tensor:
    """``-(w_pos y log p + (1-y) log(1-p))``, as ``binary_cross_entropy_with_logits``."""
    if pos_weight is None:
        return binary_cross_entropy(logp, log1mp, y)
    return -(pos_weight * y * logp + (1 - y) * log1mp)


def quality_focal(logp: Tensor, log1mp: Tensor, y: Tensor, *, beta: float) -> Tensor:
    """QFL: ``|y - sigma|^beta * BCE(sigma, y)``."""
    return safe_pow(sigmoid_target_gap(logp, log1mp, y), beta) * binary_cross_entropy(logp, log1mp, y)


def varifocal(logp: Tensor, log1mp: Tensor, q: Tensor, *, alpha: float, gamma: float,
              iou_weighted: bool) -> Tensor:
    """VFL: ``q * BCE(p, q)`` (or ``BCE``) for q > 0, ``alpha p^gamma BCE(p, 0)`` for q = 0."""
    positive = q > 0
    pos_factor = q if iou_weighted else torch.ones_like(q)
    neg_factor = alpha * pow_of_log(logp, gamma)
    return torch.where(positive, pos_factor, neg_factor) * binary_cross_entropy(logp, log1mp, q)


def smooth_l1_authentic(diff: Tensor, *, mu: float) -> Tensor:
    """GHM-R's authentic smooth L1: ``sqrt(d^2 + mu^2) - mu``."""
    return torch.sqrt(diff * diff + mu * mu) - mu


# --- binary forms: functions of (log p_t, log(1-p_t), y) for targets exactly 0 or 1 -------------
# With a hard target, p_t = sigmoid(z) with z = (2y-1) x: two log-sigmoids, no log of the target.

def binary_focal(logpt: Tensor, log1m: Tensor, y: Tensor, *, gamma, alpha=None, epsilon=0.0) -> Tensor:
    """``(1-p_t)^gamma (alpha_t (-log p_t) + epsilon (1-p_t))``: one modulator for both terms."""
    loss = alpha_t(y, alpha) * -logpt
    if not is_constant(epsilon, 0):
        loss = loss + epsilon * torch.exp(log1m)
    return loss * pow_of_log(log1m, gamma)


def binary_bce(logpt: Tensor, log1m: Tensor, y: Tensor, *, pos_weight=None) -> Tensor:
    del log1m
    return -logpt if pos_weight is None else -logpt * (1 + (pos_weight - 1) * y)


def binary_quality_focal(logpt: Tensor, log1m: Tensor, y: Tensor, *, beta) -> Tensor:
    del y  # |y - sigma| = 1 - p_t for a hard target
    return poly_series(logpt, log1m, gamma=beta)


def binary_varifocal(logpt: Tensor, log1m: Tensor, y: Tensor, *, alpha, gamma, iou_weighted) -> Tensor:
    del iou_weighted  # q = 1 for a hard positive
    return -logpt * (y + (1 - y) * alpha * pow_of_log(log1m, gamma))


def binary_soft_truncation(logpt: Tensor, log1m: Tensor, y: Tensor, *, k) -> Tensor:
    del y
    return soft_truncation(logpt, log1m, k=k)


def binary_hard_truncation(logpt: Tensor, log1m: Tensor, y: Tensor, *, margin) -> Tensor:
    del y
    return hard_truncation(logpt, log1m, margin=margin)


@dataclass(frozen=True)
class SigmoidMath:
    """A sigmoid-family loss: its form for soft targets ``f(log p, log(1-p), y)`` and for hard ones
    ``f(log p_t, log(1-p_t), y)``; the engines supply the logarithms of the sigmoid."""

    soft: Callable
    binary: Callable


BCE = SigmoidMath(weighted_binary_cross_entropy, binary_bce)
FOCAL = SigmoidMath(sigmoid_focal, binary_focal)
QUALITY_FOCAL = SigmoidMath(quality_focal, binary_quality_focal)
VARIFOCAL = SigmoidMath(varifocal, binary_varifocal)
SOFT_TRUNCATION = SigmoidMath(partial(expected_over_binary, soft_truncation), binary_soft_truncation)
HARD_TRUNCATION = SigmoidMath(partial(expected_over_binary, hard_truncation), binary_hard_truncation)
