"""Softmax (multi-class) losses: cross-entropy and its polynomial family."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from . import _checks, _math, _modulator
from ._arguments import bound_value_pairs
from ._declare import Hyperparameter, declare, public_names
from ._errors import InputValueError
from ._softmax_engine import softmax_loss

TAILS = ("ce", "drop")


# --- the series in (1 - p_t): each loss's hyperparameters -> _math.poly_series' arguments ----------
# (the losses call these, and so does polyfocal.analysis.poly_coefficients: one source for each series)

def cross_entropy_series() -> dict:
    return {}


def focal_series(gamma) -> dict:
    return dict(gamma=_checks.number(gamma, "gamma", low=0.0))


def poly1_series(epsilon) -> dict:
    return dict(coefficients=(1.0 + _checks.number(epsilon, "epsilon"),))


def polyn_series(epsilons) -> dict:
    epsilons = _checks.numbers(epsilons, "epsilons")
    return dict(coefficients=tuple(1.0 / j + e for j, e in enumerate(epsilons, start=1)))


def general_series(coefficients, gamma, tail) -> dict:
    coefficients = _checks.numbers(coefficients, "coefficients")
    gamma = _checks.number(gamma, "gamma", low=0.0)
    if tail not in TAILS:
        raise InputValueError(f"`tail` must be one of {TAILS}; got {tail!r}")
    return dict(coefficients=coefficients, gamma=gamma, keep_tail=tail == "ce")


def truncated_series(n_terms) -> dict:
    n_terms = _checks.integer(n_terms, "n_terms", low=1)
    return dict(coefficients=tuple(1.0 / j for j in range(1, n_terms + 1)), keep_tail=False)


@declare("softmax", "CrossEntropyLoss", aliases=("ce",), series=cross_entropy_series)
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
    return softmax_loss(_math.poly_series, cross_entropy_series(), logits, target, weight=weight,
                        ignore_index=ignore_index, label_smoothing=label_smoothing,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@declare("softmax", "FocalLoss", aliases=("focal",), hyperparameters=("alpha",), series=focal_series)
def focal_loss(logits: Tensor, target: Tensor, *, gamma: float = 2.0, alpha=None, normalized: bool = False,
               weight=None, ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean",
               normalizer=None, validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Softmax focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (Lin et al., arXiv:1708.02002).

    The modulator is computed as ``exp(gamma * log(1 - p_t))`` with an exact ``log(1 - p_t)``,
    so saturated logits and ``gamma < 1`` stay finite. In the polynomial view every power of
    cross-entropy's series moves right by gamma. The paper uses gamma = 2.

    Args:
        gamma: focusing parameter, >= 0; 0 gives cross-entropy.
        alpha: ``None`` (off), a number (scales every class) or a ``(C,)`` per-class factor
            ``alpha_t``. Unlike ``weight`` it is not part of the mean's denominator.
        normalized: divide the sum by the modulators' sum ``sum w_t (1 - p_t)^gamma`` (differentiated) in
            place of the mean's count (segmentation_models_pytorch's ``normalized=True`` with its sum);
            ``reduction="mean"`` only.
        {softmax_args}

    {returns}

    Example:
        >>> import torch, polyfocal as pf
        >>> logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
        >>> bool(pf.focal_loss(logits, target, gamma=0.0).isclose(pf.cross_entropy(logits, target)))
        True
    """
    params = focal_series(gamma)
    contract = dict(weight=weight, alpha=alpha, ignore_index=ignore_index, label_smoothing=label_smoothing,
                    validate=validate, backend=backend)
    if not _modulator.check_normalized(normalized, reduction, normalizer):
        return softmax_loss(_math.poly_series, params, logits, target, reduction=reduction, normalizer=normalizer,
                            **contract)
    total = softmax_loss(_math.poly_series, params, logits, target, reduction="sum", **contract)
    return _modulator.divided(total, _modulator.softmax_modulator_sum(
        logits, target, params["gamma"], weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing))


@declare("softmax", "Poly1CrossEntropyLoss", aliases=("poly1",), series=poly1_series)
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
    return softmax_loss(_math.poly_series, poly1_series(epsilon), logits, target,
                        weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@declare("softmax", "PolyNCrossEntropyLoss", aliases=("polyn",), series=polyn_series)
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
    return softmax_loss(_math.poly_series, polyn_series(epsilons), logits, target,
                        weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@declare("softmax", "PolyLoss", aliases=("poly",), hyperparameters=("alpha",), series=general_series)
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
    params = general_series(coefficients, gamma, tail)
    return softmax_loss(_math.poly_series, params, logits, target, weight=weight, alpha=alpha,
                        ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
                        normalizer=normalizer, validate=validate, backend=backend)


@declare("softmax", "TruncatedCrossEntropyLoss", aliases=("truncated",), series=truncated_series)
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
    return softmax_loss(_math.poly_series, truncated_series(n_terms), logits, target, weight=weight,
                        ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
                        normalizer=normalizer, validate=validate, backend=backend)


@declare("softmax", "SoftTruncatedLoss", aliases=("soft_truncated",), hyperparameters=("k",))
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


@declare("softmax", "HardTruncatedLoss", aliases=("hard_truncated",), hyperparameters=("margin",))
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



@declare("softmax", "DFTCrossEntropyLoss", aliases=("dft",))
def dft_cross_entropy(logits: Tensor, target: Tensor, *, weight=None, ignore_index: int = -100,
                      label_smoothing: float = 0.0, reduction: str = "mean", normalizer=None,
                      validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Dynamic Fine-Tuning's cross-entropy ``-sg(p_t) log p_t`` (Wu et al., arXiv:2508.05629).

    Each example's cross-entropy weighted by its own probability, the weight held constant
    (``sg``: stop-gradient), so the gradient is ``p_t`` times cross-entropy's: examples the
    model finds unlikely count less. The paper uses it for supervised fine-tuning of language
    models in place of cross-entropy.

    Args:
        {softmax_args}

    {returns}

    Example:
        >>> import torch, polyfocal as pf
        >>> logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
        >>> p_t = logits.softmax(1).gather(1, target[:, None]).squeeze(1)
        >>> want = (p_t * pf.cross_entropy(logits, target, reduction="none")).mean()
        >>> bool(pf.dft_cross_entropy(logits, target).isclose(want))
        True
    """
    return softmax_loss(_math.probability_weighted, {}, logits, target, weight=weight,
                        ignore_index=ignore_index, label_smoothing=label_smoothing,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)



@declare("softmax", "InverseFocalLoss", aliases=("inverse_focal",), hyperparameters=("gamma",))
def inverse_focal_loss(logits: Tensor, target: Tensor, *, gamma: float = 1.0, weight=None,
                       ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean",
                       normalizer=None, validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Inverse focal loss ``-(1 + p_t)^gamma log p_t`` (Wang et al., NeurIPS 2021, "Rethinking
    Calibration of Deep Neural Networks: Do Not Be Afraid of Overconfidence").

    The modulator grows with ``p_t``: confident examples keep more of their gradient than under
    cross-entropy, the opposite of focal loss, for models that come out under-confident
    (AdaFocal switches to this form in such confidence bins).

    Args:
        gamma: >= 0; 0 gives cross-entropy.
        {softmax_args}

    {returns}
    """
    return _gamma_only(_math.inverse_focal, gamma, logits, target, weight=weight, ignore_index=ignore_index,
                       label_smoothing=label_smoothing, reduction=reduction, normalizer=normalizer,
                       validate=validate, backend=backend)


#: FLSD-53 (Mukhoti et al. 2020): gamma = 5 while p_t < 0.2, then 3
FLSD_53 = ((0.2, 5.0), (1.0, 3.0))


GAMMA_SCHEDULE = Hyperparameter("gamma_schedule", "sample-dependent focal loss's steps, BOUND:GAMMA pairs (FLSD-53: "
                                "0.2:5,1:3)", parse=bound_value_pairs, flag="--gamma-schedule")


def check_schedule(schedule, name: str = "gamma_schedule") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``((bound, gamma), ...)`` as ``(bounds, gammas)``: bounds increasing in (0, 1], the last 1, gammas >= 0."""
    try:
        pairs = [(float(bound), float(gamma)) for bound, gamma in schedule]
    except (TypeError, ValueError):
        raise InputValueError(f"`{name}` must be a sequence of (bound, gamma) pairs, e.g. {FLSD_53}; "
                              f"got {schedule!r}") from None
    bounds = tuple(_checks.number(b, f"{name}'s bound", low=0.0, high=1.0, low_open=True) for b, _ in pairs)
    gammas = tuple(_checks.number(g, f"{name}'s gamma", low=0.0) for _, g in pairs)
    if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:])) or bounds[-1] != 1.0:
        raise InputValueError(f"`{name}`'s bounds must increase in p_t and end at 1.0; got {bounds}")
    return bounds, gammas


@declare("softmax", "SampleDependentFocalLoss", aliases=("flsd",), hyperparameters=(GAMMA_SCHEDULE,))
def sample_dependent_focal_loss(logits: Tensor, target: Tensor, *, gamma_schedule=FLSD_53, weight=None,
                                ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean",
                                normalizer=None, validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Sample-dependent focal loss ``-(1 - p_t)^gamma(p_t) log p_t`` (Mukhoti et al., NeurIPS 2020,
    arXiv:2002.09437, "Calibrating Deep Neural Networks using Focal Loss").

    ``gamma`` is a step function of the example's own ``p_t`` (held constant on each step, as in the
    paper): FLSD-53, the default, takes gamma = 5 while ``p_t < 0.2`` and 3 above, for better
    calibrated probabilities than cross-entropy at equal accuracy.

    Args:
        gamma_schedule: ``((bound_1, gamma_1), ..., (1.0, gamma_K))``: ``gamma_i`` for ``p_t`` below
            ``bound_i`` (and at or above the previous bound); bounds increasing, the last 1.0, gammas >= 0.
        {softmax_args}

    {returns}
    """
    bounds, gammas = check_schedule(gamma_schedule)
    return softmax_loss(_math.sample_dependent_focal, dict(bounds=bounds, gammas=gammas), logits, target,
                        weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@declare("softmax", "DualFocalLoss", aliases=("dual_focal",), hyperparameters=("gamma",), curve=False)
def dual_focal_loss(logits: Tensor, target: Tensor, *, gamma: float = 2.0, weight=None, ignore_index: int = -100,
                    label_smoothing: float = 0.0, reduction: str = "mean", normalizer=None,
                    validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Dual focal loss ``-(1 - p_t + p_j)^gamma log p_t`` (Tao, Dong and Xu, ICML 2023, "Dual Focal
    Loss for Calibration").

    ``p_j`` is the largest probability of the row below ``p_t`` (0 where ``p_t`` is the smallest),
    as in the authors' code: not the largest other probability, which for a misclassified example
    exceeds ``p_t``. The gap ``p_t - p_j`` to the runner-up, not ``p_t`` alone, sets the modulator,
    so it is not a function of ``p_t``: it runs on the reference engine or compiled autograd of it,
    not the row engine, and the lens draws no curve of it. ``p_j`` is differentiated, as in the
    paper. For probability targets (and label smoothing) each class ``c`` takes the largest
    probability below its own.

    Args:
        gamma: >= 0, the exponent of the modulator ``1 - p_t + p_j``; 0 gives cross-entropy.
        {softmax_args}

    {returns}
    """
    return _gamma_only(_math.dual_focal, gamma, logits, target, weight=weight, ignore_index=ignore_index,
                       label_smoothing=label_smoothing, reduction=reduction, normalizer=normalizer,
                       validate=validate, backend=backend)


def _gamma_only(phi, gamma, logits: Tensor, target: Tensor, **contract) -> Tensor:
    """A loss whose one hyperparameter is ``gamma >= 0``, under the contract's keywords."""
    return softmax_loss(phi, dict(gamma=_checks.number(gamma, "gamma", low=0.0)), logits, target, **contract)


__all__ = public_names(__name__)
