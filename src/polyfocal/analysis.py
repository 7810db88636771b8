"""The PolyLoss lens: losses of the cross-entropy family seen as series in ``(1 - p_t)``.

Numbers only (NumPy and torch, no plotting), so they can be tested against closed forms;
:mod:`polyfocal.plots` draws them. Following Leng et al., *PolyLoss* (ICLR 2022,
https://arxiv.org/abs/2204.12511):

.. math::

    \\mathrm{CE} = -\\log p_t = \\sum_{j \\ge 1} \\tfrac{1}{j} (1 - p_t)^j, \\qquad
    \\frac{\\partial\\,\\mathrm{CE}}{\\partial p_t} = -\\sum_{j \\ge 1} (1 - p_t)^{j-1} = -\\frac{1}{p_t}.

* :func:`poly_coefficients`: the coefficient of each power of ``(1 - p_t)`` in a loss and in
  its gradient (focal loss shifts the powers right by gamma, Poly-1 raises the first one).
* :func:`remainder`, :func:`remainder_derivative`, :func:`terms_needed`,
  :func:`theorem1_bound`: how many terms a truncated series needs (the paper's Theorem 1).
* :func:`gradient_share`, :func:`first_term_share`, :class:`GradientShareTracker`: the share
  of cross-entropy's gradient carried by its first terms (the paper's Fig. 3b).
* :func:`loss_curves`: any registered loss as a function of ``p_t`` (and of the logit margin).
* :func:`gradient_norm_histogram`: GHM's gradient-norm density before and after
  harmonizing (Li et al., https://arxiv.org/abs/1811.05181).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from numbers import Integral
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from . import _checks
from ._declare import HYPERPARAMETERS
from ._backend import use_backend
from ._errors import InputTypeError, InputValueError
from ._numerics import sigmoid_probability, sigmoid_target_gap
from ._sigmoid_engine import dense_target
from ._softmax_engine import check_logits, check_target
from .ghm import bin_index, harmonizing_weights, unit_edges
from .registry import LOSS_ALIASES, canonical_name, declaration, declarations, get_loss_function

__all__ = [
    "LOSS_ALIASES", "resolve_loss_name", "SHAPE_PARAMETERS", "loss_parameters",
    "PolyCoefficients", "poly_coefficients", "SERIES_LOSSES",
    "remainder", "remainders", "remainder_derivative", "terms_needed", "theorem1_bound",
    "gradient_share", "GradientShare", "first_term_share", "GradientShareTracker",
    "LossCurves", "loss_curves", "CURVE_LOSSES",
    "GradientNormHistogram", "gradient_norm_histogram", "synthetic_imbalanced_batch",
]



def resolve_loss_name(name, argument: str = "loss") -> str:
    """The registered name of a loss given by name or by one of :data:`LOSS_ALIASES`.

    Raises:
        ValueError: for an unknown name; the message names ``argument``.
    """
    if not isinstance(name, str):
        raise InputTypeError(f"`{argument}` must be a loss name (str); got {type(name).__name__} {name!r}")
    return canonical_name(name, argument)


#: The keyword arguments that shape a loss's curve (not reductions, weights or masks); each
#: declared loss names the ones it has.
SHAPE_PARAMETERS: tuple[str, ...] = tuple(HYPERPARAMETERS)


def loss_parameters(name: str, given: Mapping | None = None) -> dict:
    """A loss's shape parameters (:data:`SHAPE_PARAMETERS` it has), its defaults overridden by ``given``.

    Other keywords in ``given`` (``weight``, ``reduction``...) are kept as given.

    Raises:
        ValueError: an unknown loss, or a required parameter (``truncated_cross_entropy``'s
            ``n_terms``) missing from ``given``.

    Example:
        >>> from polyfocal.analysis import loss_parameters
        >>> loss_parameters("sigmoid_focal", {"gamma": 1.0})
        {'gamma': 1.0, 'alpha': 0.25}
    """
    name = resolve_loss_name(name, "name")
    given = dict(given or {})
    signature = inspect.signature(get_loss_function(name)).parameters
    resolved = {}
    for key, parameter in signature.items():
        if key in given:
            resolved[key] = given.pop(key)
        elif key in SHAPE_PARAMETERS:
            if parameter.default is inspect.Parameter.empty:
                raise InputValueError(f"{name} needs `{key}`")
            resolved[key] = parameter.default
    resolved.update(given)  # unknown keywords: the loss function reports them
    return resolved


def _integer(value, name: str, low: int) -> int:
    """An int-like hyperparameter (NumPy integers too) checked by the library's helper."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        value = int(value)
    return _checks.integer(value, name, low=low)


def _probabilities(p, name: str = "p", *, include_one: bool = True) -> np.ndarray:
    """``p`` as a float64 array, every value in (0, 1] (or (0, 1))."""
    try:
        values = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputTypeError(f"`{name}` must be a number or an array of numbers; got {type(p).__name__}") from None
    bad = ~((values > 0) & ((values <= 1) if include_one else (values < 1)))
    if bad.any():
        interval = "(0, 1]" if include_one else "(0, 1)"
        raise InputValueError(f"`{name}` must lie in {interval}; got a value {values[bad].flat[0]}")
    return values


# --- the coefficients of the series -----------------------------------------------------------------

#: Losses with a polynomial expansion in ``(1 - p_t)`` (declared with a ``series``), and the
#: parameters that shape it.
SERIES_LOSSES: dict[str, tuple[str, ...]] = {d.name: d.series_parameters for d in declarations() if d.series}


@dataclass(frozen=True)
class PolyCoefficients:
    """The first terms of ``L(p_t) = sum_j a_j (1 - p_t)^(k_j)`` and of its gradient.

    Attributes:
        loss: the registered loss name.
        params: the series parameters used (the loss's defaults filled in).
        powers: ``k_j``, shape ``(n_terms,)``; ``j + gamma``, so non-integer for focal loss.
        coefficients: ``a_j``, shape ``(n_terms,)``.
        gradient_powers: ``k_j - 1``, the powers of ``dL/dp_t``.
        gradient_coefficients: ``-a_j k_j``, the coefficients of ``dL/dp_t`` (all -1 for CE).
        exact_tail: True when the terms past ``n_terms`` are cross-entropy's ``1/j``
            (shifted by gamma); False when they are all 0 (a dropped tail).
    """

    loss: str
    params: dict
    powers: np.ndarray
    coefficients: np.ndarray
    gradient_powers: np.ndarray
    gradient_coefficients: np.ndarray
    exact_tail: bool

    def partial_sum(self, p_t) -> np.ndarray:
        """``sum_(j <= n_terms) a_j (1 - p_t)^(k_j)``, float64, the shape of ``p_t``."""
        q = 1.0 - _probabilities(p_t, "p_t")
        return np.sum(self.coefficients * q[..., None] ** self.powers, axis=-1)

    def gradient_partial_sum(self, p_t) -> np.ndarray:
        """``sum_(j <= n_terms) -a_j k_j (1 - p_t)^(k_j - 1)``, float64, the shape of ``p_t``."""
        q = 1.0 - _probabilities(p_t, "p_t")
        return np.sum(self.gradient_coefficients * q[..., None] ** self.gradient_powers, axis=-1)


def _series_params(loss: str, params: Mapping) -> dict:
    names = SERIES_LOSSES[loss]
    unknown = sorted(set(params) - set(names))
    if unknown:
        accepted = ", ".join(names) or "none"
        raise InputValueError(f"{loss} has no series parameter {', '.join(unknown)}; accepted: {accepted}")
    signature = inspect.signature(get_loss_function(loss)).parameters
    resolved = {}
    for name in names:
        if name in params:
            resolved[name] = params[name]
        elif signature[name].default is inspect.Parameter.empty:
            raise InputValueError(f"{loss} needs `{name}`")
        else:
            resolved[name] = signature[name].default
    return resolved


def poly_coefficients(loss: str, n_terms: int, /, **params) -> PolyCoefficients:
    """The coefficients of a loss's series in ``(1 - p_t)`` and of its gradient w.r.t. ``p_t``.

    .. math::

        L(p_t) = \\sum_{j \\ge 1} a_j (1 - p_t)^{j + \\gamma}, \\qquad
        \\frac{\\partial L}{\\partial p_t} = -\\sum_{j \\ge 1} a_j (j + \\gamma) (1 - p_t)^{j + \\gamma - 1}

    ============================  ==========================================  =========
    loss                          ``a_j``                                     ``gamma``
    ============================  ==========================================  =========
    ``cross_entropy``             ``1/j``                                     0
    ``focal_loss``                ``1/j`` (every power moves right by gamma)  gamma
    ``poly1_cross_entropy``       ``1 + epsilon``, then ``1/j``               0
    ``polyn_cross_entropy``       ``1/j + epsilon_j`` for j <= N, then 1/j    0
    ``poly_loss``                 the given ``a_j``, then 1/j or 0 (``tail``) gamma
    ``truncated_cross_entropy``   ``1/j`` for j <= N, then 0                  0
    ============================  ==========================================  =========

    Args:
        loss: one of :data:`SERIES_LOSSES` or an alias (``"focal"``).
        n_terms: how many terms to list, >= 1 (positional, so that
            ``truncated_cross_entropy``'s own ``n_terms`` can be passed as a keyword).
        **params: the loss's series parameters, named as in the loss function
            (``gamma``, ``epsilon``, ``epsilons``, ``coefficients``, ``tail``, ``n_terms``);
            missing ones take the loss function's defaults.

    Returns:
        A :class:`PolyCoefficients` with arrays of shape ``(n_terms,)``.

    Raises:
        ValueError: unknown ``loss`` or one without a series, ``n_terms`` < 1, a parameter
            the loss does not have, or an invalid parameter value.

    Example:
        >>> from polyfocal.analysis import poly_coefficients
        >>> poly_coefficients("focal_loss", 3, gamma=2.0).powers.tolist()
        [3.0, 4.0, 5.0]
        >>> poly_coefficients("poly1_cross_entropy", 2, epsilon=2.0).coefficients.tolist()
        [3.0, 0.5]
    """
    loss = resolve_loss_name(loss, "loss")
    if loss not in SERIES_LOSSES:
        raise InputValueError(f"`loss` {loss!r} has no polynomial expansion here; "
                              f"supported: {', '.join(SERIES_LOSSES)}")
    count = _integer(n_terms, "n_terms", 1)
    params = _series_params(loss, params)
    series = declaration(loss).series(**params)  # the loss's own series, checked as the loss checks it
    gamma, exact_tail = series.get("gamma", 0.0), series.get("keep_tail", True)
    j = np.arange(1, count + 1, dtype=np.float64)
    a = 1.0 / j if exact_tail else np.zeros(count)
    given = np.asarray(series.get("coefficients", ()), dtype=np.float64)[:count]
    a[:len(given)] = given
    powers = j + gamma
    return PolyCoefficients(loss=loss, params=params, powers=powers, coefficients=a,
                            gradient_powers=powers - 1.0, gradient_coefficients=-a * powers,
                            exact_tail=exact_tail)


# --- truncating the series: Theorem 1 -------------------------------------------------------------

def _partial_log_series(q: np.ndarray, n_terms: int, chunk: int = 4096) -> np.ndarray:
    """``sum_(j=1..N) q^j / j`` in float64, vectorised over chunks of j."""
    total = np.zeros_like(q)
    log_q = np.log(q, out=np.full_like(q, -np.inf), where=q > 0)
    for start in range(1, n_terms + 1, chunk):
        j = np.arange(start, min(start + chunk, n_terms + 1), dtype=np.float64)
        total += np.sum(np.exp(log_q[..., None] * j) / j, axis=-1)
    return total


def remainder(p, n_terms: int) -> np.ndarray:
    """Cross-entropy's series remainder after N terms, ``R_N(p) = sum_(j > N) (1 - p)^j / j``.

    .. math:: R_N(p) = -\\log p - \\sum_{j=1}^{N} \\frac{(1 - p)^j}{j}

    computed exactly in that closed form in float64 (so its absolute error is about
    ``1e-16 * N``; values below ~1e-13 are rounding noise). ``0 <= R_N(p) <= (1-p)^(N+1) / p``.

    Args:
        p: probabilities in (0, 1], any shape.
        n_terms: N >= 1.

    Returns:
        A float64 array of the shape of ``p``.

    Raises:
        ValueError: ``p`` outside (0, 1], or ``n_terms`` < 1.

    Example:
        >>> from polyfocal.analysis import remainder
        >>> float(remainder(0.5, 1))  # log 2 - 1/2
        0.1931471805599453
    """
    p = _probabilities(p, "p")
    n_terms = _integer(n_terms, "n_terms", 1)
    return -np.log(p) - _partial_log_series(1.0 - p, n_terms) + 0.0  # + 0.0 turns R_N(1) = -0.0 into 0.0


def remainders(p, max_terms: int) -> np.ndarray:
    """``R_N(p)`` for every ``N = 1..max_terms`` at once (the same closed form, by a cumulative sum).

    Args:
        p: probabilities in (0, 1], any shape.
        max_terms: the largest N, >= 1.

    Returns:
        A float64 array of shape ``p.shape + (max_terms,)``; entry ``[..., N - 1]`` is ``R_N(p)``.

    Raises:
        ValueError: ``p`` outside (0, 1], or ``max_terms`` < 1.
    """
    p = _probabilities(p, "p")
    max_terms = _integer(max_terms, "max_terms", 1)
    j = np.arange(1, max_terms + 1, dtype=np.float64)
    q = (1.0 - p)[..., None]
    terms = np.exp(np.log(q, out=np.full_like(q, -np.inf), where=q > 0) * j) / j
    return -np.log(p)[..., None] - np.cumsum(terms, axis=-1) + 0.0


def remainder_derivative(p, n_terms: int) -> np.ndarray:
    """``R'_N(p) = -sum_(j > N) (1 - p)^(j-1) = -(1 - p)^N / p``, from log space (float64).

    Negative: the remainder falls as p grows. Theorem 1 bounds its magnitude ``(1-p)^N / p``.

    Args:
        p: probabilities in (0, 1], any shape.
        n_terms: N >= 1.

    Returns:
        A float64 array of the shape of ``p``.

    Raises:
        ValueError: ``p`` outside (0, 1], or ``n_terms`` < 1.
    """
    p = _probabilities(p, "p")
    n_terms = _integer(n_terms, "n_terms", 1)
    with np.errstate(divide="ignore"):
        return -np.exp(n_terms * np.log1p(-p) - np.log(p))


def _check_zeta_delta(zeta, delta) -> tuple[float, float]:
    zeta = _checks.number(zeta, "zeta", low=0.0, low_open=True)
    delta = _checks.number(delta, "delta", low=0.0, high=1.0, low_open=True, high_open=True)
    return zeta, delta


def theorem1_bound(zeta: float, delta: float) -> float:
    """Theorem 1 of PolyLoss (arXiv:2204.12511): ``log_(1-delta)(delta * zeta)``.

    Any ``N`` above it makes ``|R_N(p)| < zeta`` and ``|R'_N(p)| < zeta`` for every p in
    ``[delta, 1]``, since ``R_N(p) <= (1-p)^(N+1) / p`` and ``|R'_N(p)| = (1-p)^N / p``.

    Args:
        zeta: the tolerance, > 0.
        delta: the smallest ``p_t`` to cover, in (0, 1).

    Returns:
        The bound, a float (at most 0 when ``delta * zeta >= 1``: every N works).

    Raises:
        ValueError: ``zeta`` <= 0 or ``delta`` outside (0, 1).

    Example:
        >>> from polyfocal.analysis import theorem1_bound
        >>> round(theorem1_bound(1e-3, 0.01), 1)
        1145.5
    """
    zeta, delta = _check_zeta_delta(zeta, delta)
    return math.log(delta * zeta) / math.log1p(-delta)


def _sup_on(grid: np.ndarray, n_terms: int) -> tuple[float, float]:
    return float(np.max(np.abs(remainder(grid, n_terms)))), \
        float(np.max(np.abs(remainder_derivative(grid, n_terms))))


def terms_needed(zeta: float, delta: float, *, grid_size: int = 65) -> int:
    """The smallest N with ``|R_N(p)| < zeta`` and ``|R'_N(p)| < zeta`` on ``[delta, 1]``, found numerically.

    Both quantities are evaluated on a grid of ``grid_size`` points, geometric from
    ``delta`` to 1 (``delta`` included), and N is found by doubling and bisection (both
    fall as N grows). Both also fall as p grows, so the binding point is ``p = delta``;
    and since ``R_N < |R'_N|`` there, the derivative condition decides, which makes
    Theorem 1's bound tight: the answer is ``floor(theorem1_bound) + 1``.

    Args:
        zeta: the tolerance, in [1e-12, inf) (below that ``R_N`` drowns in float64 rounding).
        delta: the smallest ``p_t`` to cover, in (0, 1).
        grid_size: points of the grid, >= 2.

    Returns:
        N >= 1.

    Raises:
        ValueError: ``zeta`` <= 0 or below 1e-12, ``delta`` outside (0, 1), ``grid_size`` < 2.
    """
    zeta, delta = _check_zeta_delta(zeta, delta)
    if zeta < 1e-12:
        raise InputValueError(f"`zeta` must be >= 1e-12 for a float64 search "
                              f"(R_N's rounding error is ~1e-13); got {zeta}")
    grid = np.geomspace(delta, 1.0, _integer(grid_size, "grid_size", 2))

    def ok(n: int) -> bool:
        r, dr = _sup_on(grid, n)
        return r < zeta and dr < zeta

    high = 1
    while not ok(high):
        high *= 2
    low = high // 2  # fails (or 0)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high


# --- the share of the gradient carried by the first terms -----------------------------------------

def gradient_share(p_t, k: int = 1):
    """The share of cross-entropy's gradient ``-1/p_t`` carried by its first ``k`` terms.

    .. math:: \\frac{\\sum_{j=1}^{k} (1-p_t)^{j-1}}{1 / p_t} = 1 - (1 - p_t)^k

    computed as the ratio of the partial sum to the whole (the closed form is what the
    tests check). ``k = 1`` gives ``p_t``: the constant first term carries over half of
    the gradient once the model is more than 50% confident.

    Args:
        p_t: probabilities in [0, 1], a tensor (any shape, differentiable) or array-like.
        k: number of leading terms, >= 1.

    Returns:
        The shares, a tensor for a tensor input, else a float64 array, the shape of ``p_t``.

    Raises:
        ValueError: ``k`` < 1.
    """
    k = _integer(k, "k", 1)
    if not isinstance(p_t, Tensor):
        p_t = torch.as_tensor(np.asarray(p_t, dtype=np.float64))
        return gradient_share(p_t, k).numpy()
    q = 1 - p_t
    head = sum(q ** (j - 1) for j in range(1, k + 1))
    return head * p_t  # head / (1 / p_t)


@dataclass(frozen=True)
class GradientShare:
    """The first-terms share of the CE gradient for a batch.

    Attributes:
        per_example: shape ``(N, *)``; 0 at ignored locations.
        mean: the mean over non-ignored locations, a 0-dim tensor.
        p_t: the target probability per example, shape ``(N, *)``.
    """

    per_example: Tensor
    mean: Tensor
    p_t: Tensor


@torch.no_grad()
def first_term_share(logits: Tensor, target: Tensor, *, k: int = 1, ignore_index: int = -100) -> GradientShare:
    """For a softmax batch, the share of each example's CE gradient (w.r.t. ``p_t``) in its first ``k`` terms.

    ``p_t`` is the softmax probability of the target class, or ``sum_c y_c p_c`` for
    probability targets (as Poly-1 with soft labels). See :func:`gradient_share`.

    Args:
        logits: ``(N, C, *)``.
        target: class indices ``(N, *)`` or class probabilities ``(N, C, *)``.
        k: number of leading terms, >= 1.
        ignore_index: class index to leave out of the mean.

    Returns:
        A :class:`GradientShare`.

    Raises:
        ValueError, TypeError: malformed ``logits`` / ``target`` (the library's checks), ``k`` < 1.

    Example:
        >>> import torch
        >>> from polyfocal.analysis import first_term_share
        >>> s = first_term_share(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
        >>> round(float(s.mean), 4)  # sigmoid(2)
        0.8808
    """
    k = _integer(k, "k", 1)
    check_logits(logits)
    index, _ = check_target(logits, target, ignore_index, validate=None)
    logp = logits.detach().double().log_softmax(1)
    if index:
        valid = target != ignore_index
        t = torch.where(valid, target, torch.zeros_like(target)).long()
        p_t = logp.gather(1, t.unsqueeze(1)).squeeze(1).exp()
    else:
        valid = torch.ones(logp.shape[:1] + logp.shape[2:], dtype=torch.bool, device=logp.device)
        p_t = (target.double() * logp.exp()).sum(1).clamp(0.0, 1.0)
    share = torch.where(valid, gradient_share(p_t, k), torch.zeros_like(p_t))
    count = valid.sum()
    mean = share.sum() / count.clamp(min=1)
    return GradientShare(per_example=share, mean=mean, p_t=torch.where(valid, p_t, torch.zeros_like(p_t)))


@dataclass
class GradientShareTracker:
    """Records the mean first-terms gradient share over training steps (PolyLoss Fig. 3b).

    Example:
        >>> import torch
        >>> from polyfocal.analysis import GradientShareTracker
        >>> tracker = GradientShareTracker()
        >>> _ = tracker.update(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
        >>> tracker.history
        [0.5]
    """

    k: int = 1
    history: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.k = _integer(self.k, "k", 1)

    def update(self, logits: Tensor, target: Tensor, *, ignore_index: int = -100) -> float:
        """Add this batch's mean share to :attr:`history` and return it (one host sync)."""
        value = float(first_term_share(logits, target, k=self.k, ignore_index=ignore_index).mean)
        self.history.append(value)
        return value

    @property
    def steps(self) -> np.ndarray:
        """The step index of each entry in :attr:`history`."""
        return np.arange(len(self.history))

    def reset(self) -> None:
        self.history.clear()


# --- losses as functions of p_t --------------------------------------------------------------------

#: Losses :func:`loss_curves` can draw: one example, the target's probability ``p_t``.
CURVE_LOSSES: tuple[str, ...] = tuple(d.name for d in declarations() if d.curve)


@dataclass(frozen=True)
class LossCurves:
    """Losses and gradient magnitudes along a grid of ``p_t``.

    Attributes:
        p_t: the grid, float64, shape ``(P,)``.
        margin: ``logit(p_t) = log(p_t / (1 - p_t))``, shape ``(P,)``.
        loss: loss name -> ``L(p_t)``, shape ``(P,)``.
        grad_p: loss name -> ``|dL/dp_t|``.
        grad_margin: loss name -> ``|dL/d margin|`` (``= |dL/dp_t| p_t (1 - p_t)``).
        params: loss name -> the keyword arguments it was called with (defaults of the
            :data:`SHAPE_PARAMETERS` filled in).
    """

    p_t: np.ndarray
    margin: np.ndarray
    loss: dict[str, np.ndarray]
    grad_p: dict[str, np.ndarray]
    grad_margin: dict[str, np.ndarray]
    params: dict[str, dict]


def _curve(name: str, p: Tensor, params: dict) -> tuple[Tensor, Tensor]:
    function = get_loss_function(name)
    p = p.clone().requires_grad_()
    margin = torch.log(p) - torch.log1p(-p)
    if declaration(name).family == "softmax":
        logits = torch.stack([margin, torch.zeros_like(margin)], dim=1)  # (P, 2), p_t = softmax[0]
        target = torch.zeros(len(p), dtype=torch.long)
    else:
        logits = margin.unsqueeze(1)  # (P, 1), a positive: p_t = sigmoid(x)
        target = torch.ones_like(logits)
    with use_backend("reference"):  # autograd through the math in float64, nothing to compile
        loss = function(logits, target, reduction="none", **params).reshape(len(p))
    (grad,) = torch.autograd.grad(loss.sum(), p)
    return loss.detach(), grad


def _curve_grid(p, margin) -> np.ndarray:
    """The 1-d grid of ``p_t`` in (0, 1): ``p``, or ``sigmoid(margin)``, or 199 points from 0.005 to 0.995."""
    if p is not None and margin is not None:
        raise InputValueError("give `p` or `margin`, not both")
    if margin is not None:
        m = np.asarray(margin, dtype=np.float64)
        if m.ndim != 1 or not np.isfinite(m).all():
            raise InputValueError("`margin` must be a 1-d array of finite numbers")
        return _probabilities(1.0 / (1.0 + np.exp(-m)), "margin (as p_t)", include_one=False)
    grid = np.atleast_1d(np.linspace(0.005, 0.995, 199) if p is None else _probabilities(p, "p", include_one=False))
    if grid.ndim != 1:
        raise InputValueError(f"`p` must be 1-d; got shape {grid.shape}")
    return grid


def loss_curves(names, p=None, *, margin=None, **params) -> LossCurves:
    """Registered losses as functions of ``p_t``, with ``|dL/dp_t|`` from autograd.

    A softmax loss gets two-class logits ``(logit(p_t), 0)`` with target class 0; a
    sigmoid loss one logit ``logit(p_t)`` with target 1 (a positive; for QFL and VFL a
    quality target of 1). Computed in float64.

    Args:
        names: a loss name or a sequence of them (aliases allowed), from :data:`CURVE_LOSSES`.
        p: the grid of ``p_t`` in (0, 1); default 199 points from 0.005 to 0.995.
        margin: alternatively a grid of logit margins (not both).
        **params: per-loss keyword arguments, keyed by the name as given:
            ``loss_curves(["focal", "poly1"], focal={"gamma": 1.0}, poly1={"epsilon": 2.0})``.

    Returns:
        A :class:`LossCurves`.

    Raises:
        ValueError: an unknown name or one without a curve, ``p`` outside (0, 1), both
            grids given, params for a loss not in ``names``, or the loss's own errors.

    Example:
        >>> from polyfocal.analysis import loss_curves
        >>> c = loss_curves(["ce"], p=[0.5])
        >>> round(float(c.loss["cross_entropy"][0]), 4), round(float(c.grad_p["cross_entropy"][0]), 4)
        (0.6931, 2.0)
    """
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, Sequence) or len(names) == 0:
        raise InputValueError("`names` must be a loss name or a non-empty sequence of loss names")
    given = list(names)
    canonical = [resolve_loss_name(n, "names") for n in given]
    for name in canonical:
        if name not in CURVE_LOSSES:
            raise InputValueError(f"`names`: {name!r} is not a function of one example's p_t; "
                                  f"supported: {', '.join(CURVE_LOSSES)}")
    if len(set(canonical)) != len(canonical):
        raise InputValueError(f"`names` lists a loss twice: {given}")
    extra = sorted(set(params) - set(given) - set(canonical))
    if extra:
        raise InputValueError(f"parameters given for {', '.join(extra)}, which {'is' if len(extra) == 1 else 'are'} "
                              f"not in `names` {given}")
    grid = _curve_grid(p, margin)
    p_t = torch.as_tensor(grid, dtype=torch.float64)
    losses, grad_p, grad_m, used = {}, {}, {}, {}
    for alias, name in zip(given, canonical):
        kwargs = loss_parameters(name, params.get(alias, params.get(name, {})))
        loss, grad = _curve(name, p_t, kwargs)
        losses[name] = loss.numpy()
        grad_p[name] = grad.abs().numpy()
        grad_m[name] = (grad * p_t * (1 - p_t)).abs().numpy()
        used[name] = kwargs
    margins = np.log(grid) - np.log1p(-grid)
    return LossCurves(p_t=grid, margin=margins, loss=losses, grad_p=grad_p, grad_margin=grad_m, params=used)


# --- GHM: the gradient-norm density ---------------------------------------------------------------

@dataclass(frozen=True)
class GradientNormHistogram:
    """The histogram of ``g = |sigmoid(x) - y|`` before and after GHM's harmonizing weights.

    Attributes:
        edges: bin edges on [0, 1], shape ``(bins + 1,)``.
        counts: examples per bin (element weights summed), shape ``(bins,)``.
        harmonized: GHM weights ``beta_i = N / GD(g_i)`` summed per bin; with
            ``ghm_bins == bins`` every non-empty bin holds ``N / (non-empty bins)``.
        gradient: ``sum g`` per bin, the gradient norm each bin contributes to BCE.
        harmonized_gradient: ``sum beta_i g_i`` per bin, the same under GHM-C.
        log10_counts, log10_harmonized: ``log10`` of the two histograms, NaN for empty bins.
        n: the (weighted) number of examples N.
        ghm_bins: the number of unit regions the GHM weights used.
    """

    edges: np.ndarray
    counts: np.ndarray
    harmonized: np.ndarray
    gradient: np.ndarray
    harmonized_gradient: np.ndarray
    log10_counts: np.ndarray
    log10_harmonized: np.ndarray
    n: float
    ghm_bins: int


def _log10(values: np.ndarray) -> np.ndarray:
    out = np.full_like(values, np.nan)
    np.log10(values, out=out, where=values > 0)
    return out


@torch.no_grad()
def gradient_norm_histogram(logits: Tensor, target, bins: int = 30, *, ghm_bins: int | None = None,
                            ignore_index: int = -100) -> GradientNormHistogram:
    """GHM's view of a sigmoid batch: how many examples sit at each gradient norm, before and after harmonizing.

    ``g = |sigmoid(x) - y|`` is the gradient norm of BCE w.r.t. the logit (GHM,
    arXiv:1811.05181). The harmonizing weights come from :func:`polyfocal.ghm.harmonizing_weights`
    (the stateless GHM-C of this batch), rescaled to ``beta_i = N / GD(g_i)``.

    Args:
        logits: any shape; ``(N, C, *)`` with class-index targets.
        target: as the sigmoid family: floats in [0, 1] the shape of ``logits``, or class
            indices ``(N, *)`` with C as background.
        bins: histogram bins on [0, 1], >= 1.
        ghm_bins: GHM's unit regions (default: ``bins``).
        ignore_index: with class indices, the label to skip.

    Returns:
        A :class:`GradientNormHistogram`.

    Raises:
        ValueError, TypeError: malformed inputs, ``bins`` or ``ghm_bins`` < 1.
    """
    _checks.float_tensor(logits, "logits")
    bins = _integer(bins, "bins", 1)
    ghm_bins = bins if ghm_bins is None else _integer(ghm_bins, "ghm_bins", 1)
    x = logits.detach().double()
    y, valid, _ = dense_target(x, target, ignore_index, None, torch.float64)
    w = torch.ones_like(x) if valid is None else valid.expand_as(x).double()
    g = sigmoid_target_gap(sigmoid_probability(x), y)
    beta_over_n, n = harmonizing_weights(g, w, ghm_bins, distributed=False)
    beta = beta_over_n * n
    index = bin_index(g, unit_edges(bins, g)).flatten()  # GHM's own rule, so the two agree at the edges

    def per_bin(values: Tensor) -> np.ndarray:
        return torch.zeros(bins, dtype=torch.float64).index_add_(0, index, values.flatten()).numpy()

    counts, harmonized = per_bin(w), per_bin(beta)
    return GradientNormHistogram(
        edges=np.linspace(0.0, 1.0, bins + 1), counts=counts, harmonized=harmonized,
        gradient=per_bin(w * g), harmonized_gradient=per_bin(beta * g),
        log10_counts=_log10(counts), log10_harmonized=_log10(harmonized), n=float(n), ghm_bins=ghm_bins)


def synthetic_imbalanced_batch(n: int = 100_000, *, positive_fraction: float = 0.01,
                               outlier_fraction: float = 0.002, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A detector-like batch of sigmoid logits: many easy negatives, few positives, some outliers.

    Negatives have logits around -4.5 (``p ~ 0.01``), positives around +0.5 with a wide
    spread, and a small fraction of examples is mislabelled (``g`` near 1), so the
    gradient-norm density has GHM's shape: a huge peak at ``g ~ 0`` and a bump near 1.

    Args:
        n: number of examples, >= 1.
        positive_fraction: share of positives, in [0, 1].
        outlier_fraction: share of labels flipped, in [0, 1].
        seed: the generator's seed.

    Returns:
        ``(logits, target)``, float32 tensors of shape ``(n,)``, targets 0 or 1.
    """
    n = _integer(n, "n", 1)
    positive_fraction = _checks.number(positive_fraction, "positive_fraction", low=0.0, high=1.0)
    outlier_fraction = _checks.number(outlier_fraction, "outlier_fraction", low=0.0, high=1.0)
    gen = torch.Generator().manual_seed(int(seed))
    target = (torch.rand(n, generator=gen) < positive_fraction).float()
    logits = torch.where(target > 0, 0.5 + 2.0 * torch.randn(n, generator=gen),
                         -4.5 + 1.5 * torch.randn(n, generator=gen))
    flip = torch.rand(n, generator=gen) < outlier_fraction
    confident = torch.where(target > 0, torch.full_like(logits, -6.0), torch.full_like(logits, 6.0))
    logits = torch.where(flip, confident + torch.randn(n, generator=gen), logits)
    return logits, target
