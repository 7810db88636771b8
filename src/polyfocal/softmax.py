"""Softmax (multi-class) losses: cross-entropy and its polynomial family."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from . import _checks, _math
from ._docs import fill
from ._errors import InputValueError
from ._softmax_engine import softmax_loss

__all__ = [
    "cross_entropy", "focal_loss", "poly1_cross_entropy", "polyn_cross_entropy", "poly_loss",
    "truncated_cross_entropy", "soft_truncated_loss", "hard_truncated_loss",
]

TAILS = ("ce", "drop")


@fill
def cross_entropy(logits: Tensor, target: Tensor, *, weight=None, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean", normalizer=None,
                  validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Cross-entropy ``-log p_t``, matching ``torch.nn.functional.cross_entropy``.

    The baseline of the family: ``CE = sum_j (1 - p_t)^j / j``. One deliberate
    difference: an all-ignored batch gives 0 (torch gives NaN).

    Args:
        {softmax_args}

    {returns}

    Example:
        >>> import torch, polyfocal as pf
        >>> pf.cross_entropy(torch.randn(8, 5), torch.randint(0, 5, (8,))).shape
        torch.Size([])
    """
    return softmax_loss(_math.poly_series, {}, logits, target, weight=weight,
                        ignore_index=ignore_index, label_smoothing=label_smoothing,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@fill
def focal_loss(logits: Tensor, target: Tensor, *, gamma: float = 2.0, alpha=None, weight=None,
               ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean",
               normalizer=None, validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Softmax focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (Lin et al., arXiv:1708.02002).

    The modulator is computed as ``exp(gamma * log(1 - p_t))`` with an exact ``log(1 - p_t)``,
    so saturated logits and ``gamma < 1`` stay finite. In the polynomial view every power of
    cross-entropy's series moves right by gamma. The paper uses gamma = 2.

    Args:
        gamma: focusing parameter, >= 0; 0 gives cross-entropy.
        alpha: ``None`` (off), a number (scales every class) or a ``(C,)`` per-class factor
            ``alpha_t``. Unlike ``weight`` it is not part of the mean's denominator.
        {softmax_args}

    {returns}

    Example:
        >>> import torch, polyfocal as pf
        >>> logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
        >>> bool(pf.focal_loss(logits, target, gamma=0.0).isclose(pf.cross_entropy(logits, target)))
        True
    """
    gamma = _checks.number(gamma, "gamma", low=0.0)
    return softmax_loss(_math.poly_series, dict(gamma=gamma), logits, target, weight=weight,
                        alpha=alpha, ignore_index=ignore_index, label_smoothing=label_smoothing,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@fill
def poly1_cross_entropy(logits: Tensor, target: Tensor, *, epsilon: float = 1.0, weight=None,
                        ignore_index: int = -100, label_smoothing: float = 0.0,
                        reduction: str = "mean", normalizer=None, validate: bool | None = None,
                        backend: str | None = None) -> Tensor:
    """Poly-1 cross-entropy ``-log p_t + epsilon (1 - p_t)`` (Leng et al., arXiv:2204.12511).

    Moves the first coefficient of cross-entropy's series from 1 to ``1 + epsilon``.
    With soft targets ``p_t = sum_c y_c p_c``. The paper finds epsilon = 2 helps ImageNet
    classification and epsilon = -1 some detection settings: tune it for your data.

    Args:
        epsilon: the first-term perturbation (any finite number; >= -1 keeps the loss
            decreasing in p_t).
        {softmax_args}

    {returns}
    """
    epsilon = _checks.number(epsilon, "epsilon")
    return softmax_loss(_math.poly_series, dict(coefficients=(1.0 + epsilon,)), logits, target,
                        weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@fill
def polyn_cross_entropy(logits: Tensor, target: Tensor, *, epsilons: Sequence[float] = (1.0,),
                        weight=None, ignore_index: int = -100, label_smoothing: float = 0.0,
                        reduction: str = "mean", normalizer=None, validate: bool | None = None,
                        backend: str | None = None) -> Tensor:
    """Poly-N cross-entropy ``-log p_t + sum_(j=1..N) epsilon_j (1 - p_t)^j`` (arXiv:2204.12511).

    Perturbs the first N coefficients of cross-entropy's series and keeps its exact tail.

    Args:
        epsilons: ``(epsilon_1, ..., epsilon_N)``, N >= 1.
        {softmax_args}

    {returns}
    """
    epsilons = _checks.numbers(epsilons, "epsilons")
    coefficients = tuple(1.0 / j + e for j, e in enumerate(epsilons, start=1))
    return softmax_loss(_math.poly_series, dict(coefficients=coefficients), logits, target,
                        weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@fill
def poly_loss(logits: Tensor, target: Tensor, *, coefficients: Sequence[float] = (1.0,),
              gamma: float = 0.0, tail: str = "ce", alpha=None, weight=None, ignore_index: int = -100,
              label_smoothing: float = 0.0, reduction: str = "mean", normalizer=None,
              validate: bool | None = None, backend: str | None = None) -> Tensor:
    """The general PolyLoss ``sum_j a_j (1 - p_t)^(j + gamma)`` (arXiv:2204.12511).

    ``coefficients = (a_1, ..., a_K)`` set the first K terms. ``tail="ce"`` keeps
    cross-entropy's exact terms ``a_j = 1/j`` for ``j > K`` (so the loss is
    ``(1-p_t)^gamma (-log p_t + sum_(j<=K) (a_j - 1/j)(1-p_t)^j)``); ``tail="drop"`` keeps
    only the K given terms. Special cases: cross-entropy ``(1,)``, focal loss ``(1,)`` with
    gamma, Poly-1 ``(1 + epsilon,)``, Poly-N ``(1 + e_1, 1/2 + e_2, ...)``, truncated CE
    ``(1, 1/2, ..., 1/N)`` with ``tail="drop"``. Non-negative coefficients keep the loss
    decreasing in p_t.

    Args:
        coefficients: ``(a_1, ..., a_K)``, K >= 1.
        gamma: the horizontal shift of every power (focal loss's gamma), >= 0.
        tail: ``"ce"`` or ``"drop"``.
        alpha: as in :func:`focal_loss`.
        {softmax_args}

    {returns}
    """
    coefficients = _checks.numbers(coefficients, "coefficients")
    gamma = _checks.number(gamma, "gamma", low=0.0)
    if tail not in TAILS:
        raise InputValueError(f"`tail` must be one of {TAILS}; got {tail!r}")
    params = dict(coefficients=coefficients, gamma=gamma, keep_tail=tail == "ce")
    return softmax_loss(_math.poly_series, params, logits, target, weight=weight, alpha=alpha,
                        ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
                        normalizer=normalizer, validate=validate, backend=backend)


@fill
def truncated_cross_entropy(logits: Tensor, target: Tensor, *, n_terms: int, weight=None,
                            ignore_index: int = -100, label_smoothing: float = 0.0,
                            reduction: str = "mean", normalizer=None, validate: bool | None = None,
                            backend: str | None = None) -> Tensor:
    """Cross-entropy's series cut after N terms, ``sum_(j=1..N) (1 - p_t)^j / j`` (arXiv:2204.12511).

    The PolyLoss paper's "drop high-order polynomials" experiment: on ImageNet about 600
    terms are needed to match cross-entropy. The remainder is below
    ``(1 - p_t)^(N+1) / p_t``.

    Args:
        n_terms: N >= 1.
        {softmax_args}

    {returns}
    """
    n_terms = _checks.integer(n_terms, "n_terms", low=1)
    coefficients = tuple(1.0 / j for j in range(1, n_terms + 1))
    params = dict(coefficients=coefficients, keep_tail=False)
    return softmax_loss(_math.poly_series, params, logits, target, weight=weight,
                        ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
                        normalizer=normalizer, validate=validate, backend=backend)


@fill
def soft_truncated_loss(logits: Tensor, target: Tensor, *, k: float = 1.0, weight=None,
                        ignore_index: int = -100, label_smoothing: float = 0.0,
                        reduction: str = "mean", normalizer=None, validate: bool | None = None,
                        backend: str | None = None) -> Tensor:
    """Su Jianlin's softened truncated cross-entropy, ``-sigmoid(-k m_t) log p_t``.

    ``m_t = x_t - logsumexp_(j != t) x_j`` is the target margin (the logit of p_t), so with
    C = 2 this is exactly the binary form ``-y sigmoid(-k x) log sigmoid(x) - ...``. With
    k = 1 the weight is ``1 - p_t``: focal loss with gamma = 1. Larger k approaches the
    hard truncation at p_t = 1/2.

    Args:
        k: steepness of the soft step, > 0.
        {softmax_args}

    {returns}
    """
    k = _checks.number(k, "k", low=0.0, low_open=True)
    return softmax_loss(_math.soft_truncation, dict(k=k), logits, target, weight=weight,
                        ignore_index=ignore_index, label_smoothing=label_smoothing,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@fill
def hard_truncated_loss(logits: Tensor, target: Tensor, *, margin: float = 0.5, weight=None,
                        ignore_index: int = -100, label_smoothing: float = 0.0,
                        reduction: str = "mean", normalizer=None, validate: bool | None = None,
                        backend: str | None = None) -> Tensor:
    """Su Jianlin's hard-truncated cross-entropy: ``-log p_t`` while ``p_t <= margin``, else 0.

    Examples already past the margin get no loss and no gradient; nothing keeps them
    there, so training takes longer (use :func:`soft_truncated_loss` for the smooth form).

    Args:
        margin: the probability past which an example stops counting, in (0, 1).
        {softmax_args}

    {returns}
    """
    margin = _checks.number(margin, "margin", low=0.0, high=1.0, low_open=True, high_open=True)
    return softmax_loss(_math.hard_truncation, dict(margin=margin), logits, target, weight=weight,
                        ignore_index=ignore_index, label_smoothing=label_smoothing,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)
