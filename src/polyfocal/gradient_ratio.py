"""EQLv2 (Tan et al., CVPR 2021) and the equalized focal loss, EFL (Li et al., CVPR 2022): sigmoid losses that
equalize the classes by each one's accumulated gradient ratio.

Per class ``j`` the Modules add up, over every batch seen, the gradient magnitudes ``|sigmoid(x) - y|`` of its
positive elements and of its negative elements (each times the element's weight in the loss), and read
``g_j = positive_j / (negative_j + 1e-10)``: near 0 for a rare class, whose few positives are swamped by the
negatives that every other class's examples give it, about 1 for a balanced one. The functions take ``g``
as ``gradient_ratio=`` (None: before any statistics, the plain loss); the Modules keep the sums as float64
buffers (in ``state_dict``), update them after each loss without a host synchronisation and, under
``torch.distributed``, all-reduce each batch's sums so that every rank weights alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _checks, _math
from ._declare import Hyperparameter, declare, public_names
from ._errors import InputValueError
from ._loss_module import PerClassStatistics
from ._numerics import compute_dtype
from ._sigmoid_engine import dense_target, sigmoid_loss
from .sigmoid import binary_cross_entropy, sigmoid_alpha

#: added to the negatives' sum before dividing, as the authors' code does
RATIO_EPSILON = 1e-10


def _ratio(gradient_ratio, logits: Tensor, validate, high: float | None = None) -> Tensor:
    """``gradient_ratio`` as a ``(1, C, 1, ...)`` tensor in the logits' compute dtype, values checked."""
    if logits.ndim < 2:
        raise InputValueError(f"`logits` must have shape (N, C, *); got {tuple(logits.shape)}")
    like = torch.empty((), dtype=compute_dtype(logits), device=logits.device)
    ratio = _checks.class_vector(gradient_ratio, "gradient_ratio", logits.shape[1], like)
    if _checks.should_validate(validate, ratio):
        bad = ~((ratio >= 0) & (ratio <= (float("inf") if high is None else high)))
        if bool(bad.any()):
            limits = "[0, inf)" if high is None else f"[0, {high:g}]"
            raise InputValueError(f"`gradient_ratio` must lie in {limits}; got {float(ratio[bad][0])}")
    return ratio.view((1, -1) + (1,) * (logits.ndim - 2))


def eqlv2_weights(ratio: Tensor, gamma: float, mu: float, alpha: float) -> tuple[Tensor, Tensor]:
    """EQLv2's per-class weights of the positives and the negatives: ``q = 1 + alpha (1 - f(g))`` and
    ``r = f(g)``, ``f(g) = sigmoid(gamma (g - mu))``."""
    negative = torch.sigmoid(gamma * (ratio - mu))
    return 1 + alpha * (1 - negative), negative


def _eqlv2(logits: Tensor, target, positive: Tensor, negative: Tensor, weight, **contract) -> Tensor:
    """BCE times ``y positive + (1 - y) negative``, the two per-class weights broadcast along dim 1."""
    params = dict(positive=positive, negative=negative)
    return sigmoid_loss(_math.SIDE_WEIGHTED_BCE, params, logits, target, weight=weight, **contract)


def _eqlv2_options(gamma, mu, alpha) -> dict:
    return dict(gamma=_checks.number(gamma, "gamma", low=0.0), mu=_checks.number(mu, "mu"),
                alpha=_checks.number(alpha, "alpha", low=0.0))


@declare("sigmoid", "EQLv2Loss", aliases=("eqlv2",))
def eqlv2_loss(logits: Tensor, target, *, gradient_ratio=None, gamma: float = 12.0, mu: float = 0.8,
               alpha: float = 4.0, weight=None, ignore_index: int = -100, reduction: str = "mean", normalizer=None,
               validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Equalization loss v2 (Tan et al., CVPR 2021): BCE whose positives of class ``j`` weigh
    ``1 + alpha (1 - f(g_j))`` and whose negatives weigh ``f(g_j) = sigmoid(gamma (g_j - mu))``.

    A rare class (small gradient ratio ``g_j``) gets its negatives' gradient suppressed and its positives'
    raised. The statistics live in :class:`EQLv2Loss`; here ``gradient_ratio`` is given (None: every
    weight 1, plain BCE, as the Module's first step). The paper's defaults: gamma = 12, mu = 0.8, alpha = 4.

    Args:
        gradient_ratio: ``(C,)`` accumulated positive-to-negative gradient ratios, each >= 0, or None.
        gamma: >= 0, the steepness of the mapping ``f``.
        mu: the ratio where ``f`` is 1/2.
        alpha: >= 0, how much the positives of a rare class gain.
        {sigmoid_args}

    {returns}
    """
    options = _eqlv2_options(gamma, mu, alpha)
    contract = dict(ignore_index=ignore_index, reduction=reduction, normalizer=normalizer, validate=validate,
                    backend=backend)
    if gradient_ratio is None:
        return binary_cross_entropy(logits, target, weight=weight, **contract)
    positive, negative = eqlv2_weights(_ratio(gradient_ratio, logits, validate), **options)
    return _eqlv2(logits, target, positive, negative, weight, **contract)


SCALE_FACTOR = Hyperparameter("scale_factor", "EFL's scale s of the class-specific focusing", flag="--scale-factor")


def _focusing(ratio: Tensor | None, gamma: float, scale_factor: float):
    """EFL's ``gamma_j = gamma + s (1 - g_j)`` and its weighting factor ``gamma_j / gamma``."""
    if ratio is None:
        return gamma, None
    gamma_j = gamma + scale_factor * (1 - ratio)
    return gamma_j, gamma_j / gamma


@declare("sigmoid", "EqualizedFocalLoss", aliases=("efl",), hyperparameters=("gamma", "alpha", SCALE_FACTOR))
def equalized_focal_loss(logits: Tensor, target, *, gradient_ratio=None, gamma: float = 2.0,
                         scale_factor: float = 8.0, alpha: float | None = 0.25, weight=None, ignore_index: int = -100,
                         reduction: str = "mean", normalizer=None, validate: bool | None = None,
                         backend: str | None = None) -> Tensor:
    """Equalized focal loss (Li et al., CVPR 2022): sigmoid focal loss with a focusing parameter per class,
    ``gamma_j = gamma + s (1 - g_j)``, each class's loss weighted by ``gamma_j / gamma``.

    A rare class (small gradient ratio ``g_j`` in [0, 1]) is focused harder, which down-weights its many
    easy negatives, and the weighting factor keeps its few hard positives from losing their share. The
    statistics live in :class:`EqualizedFocalLoss`; here ``gradient_ratio`` is given (None: ``g = 1``,
    RetinaNet's focal loss). The paper's defaults: gamma = 2, s = 8, alpha = 0.25.

    Args:
        gradient_ratio: ``(C,)`` accumulated positive-to-negative gradient ratios in [0, 1], or None.
        gamma: > 0, the focusing parameter of a balanced class.
        scale_factor: >= 0, ``s``.
        alpha: in [0, 1], or None, as in :func:`sigmoid_focal_loss`.
        {sigmoid_args}

    {returns}
    """
    gamma = _checks.number(gamma, "gamma", low=0.0, low_open=True)
    scale_factor = _checks.number(scale_factor, "scale_factor", low=0.0)
    ratio = None if gradient_ratio is None else _ratio(gradient_ratio, logits, validate, high=1.0)
    gamma_j, factor = _focusing(ratio, gamma, scale_factor)
    if factor is not None:
        weight = factor if weight is None else factor * weight
    return sigmoid_loss(_math.FOCAL, dict(gamma=gamma_j, alpha=sigmoid_alpha(alpha)), logits, target, weight=weight,
                        ignore_index=ignore_index, reduction=reduction, normalizer=normalizer, validate=validate,
                        backend=backend)


class _GradientRatioModule(PerClassStatistics):
    """The statistics of EQLv2 and EFL: per class, the summed gradient magnitudes of its positive and its
    negative elements (``positive_gradient``, ``negative_gradient``) and the number of batches (``steps``)."""

    per_class = ("positive_gradient", "negative_gradient")
    statistics = per_class + ("steps",)

    def gradient_ratio(self) -> Tensor:
        """``g_j = positive_j / (negative_j + 1e-10)`` (float64)."""
        return self.positive_gradient / (self.negative_gradient + RATIO_EPSILON)

    @torch.no_grad()
    def _collect(self, logits: Tensor, target, weight, positive=None, negative=None) -> None:
        """Add this batch's gradient magnitudes ``|sigmoid(x) - y|``, times each element's weight in the loss
        (the user's ``weight``, and EQLv2's ``positive`` / ``negative`` class weights), all ranks' together."""
        x = logits.detach().to(compute_dtype(logits))
        y, valid, _ = dense_target(x, target, self.options.get("ignore_index", -100), False, x.dtype)
        magnitude = (torch.sigmoid(x) - y).abs()
        for factor in (weight, valid):
            if factor is not None:
                magnitude = magnitude * factor
        on_positives, on_negatives = magnitude * y, magnitude * (1 - y)
        if positive is not None:
            on_positives, on_negatives = on_positives * positive, on_negatives * negative
        dims = [d for d in range(x.ndim) if d != 1]
        sums = self._all_ranks(torch.stack([on_positives.sum(dims, dtype=torch.float64),
                                            on_negatives.sum(dims, dtype=torch.float64)]))
        self.positive_gradient += sums[0]
        self.negative_gradient += sums[1]
        self.steps += 1


class EQLv2Loss(_GradientRatioModule):
    """:func:`eqlv2_loss` with its gradient statistics: each call's loss uses the statistics of the batches
    before it (the first call: every weight 1), then adds its own.

    Args:
        num_classes: C, or None to size the statistics from the first batch.
        distributed: all-reduce each batch's statistics across ranks (None: when a process group of 2+ ranks
            exists).
        gamma, mu, alpha, weight, ignore_index, reduction, normalizer, validate, backend: as :func:`eqlv2_loss`.
    """

    def __init__(self, num_classes: int | None = None, *, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0,
                 weight=None, ignore_index: int = -100, reduction: str = "mean", normalizer=None,
                 validate: bool | None = None, distributed: bool | None = None, backend: str | None = None):
        options = dict(_eqlv2_options(gamma, mu, alpha), weight=weight, ignore_index=ignore_index,
                       reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)
        super().__init__(num_classes, distributed, options)

    def forward(self, logits: Tensor, target, weight: Tensor | None = None, normalizer=None) -> Tensor:
        self._sized(logits)
        weight, (gamma, mu, alpha) = self._weight(weight), (self.options[k] for k in ("gamma", "mu", "alpha"))
        ratio = self.gradient_ratio().to(compute_dtype(logits)).view((1, -1) + (1,) * (logits.ndim - 2))
        positive, negative = eqlv2_weights(ratio, gamma, mu, alpha)
        seen = self.steps > 0  # before any statistics, every weight is 1
        positive, negative = (torch.where(seen, w, torch.ones_like(w)) for w in (positive, negative))
        contract = {k: v for k, v in self.options.items() if k not in ("gamma", "mu", "alpha")}
        contract["normalizer"] = contract["normalizer"] if normalizer is None else normalizer
        loss = _eqlv2(logits, target, positive, negative, weight, **contract)
        self._collect(logits, target, weight, positive, negative)
        return loss


class EqualizedFocalLoss(_GradientRatioModule):
    """:func:`equalized_focal_loss` with its gradient statistics: each call's loss uses the ratios of the
    batches before it, clamped to [0, 1] (the first call: 1 for every class), then adds its own.

    Args:
        num_classes: C, or None to size the statistics from the first batch.
        distributed: as :class:`EQLv2Loss`.
        gamma, scale_factor, alpha, weight, ignore_index, reduction, normalizer, validate, backend: as
            :func:`equalized_focal_loss`.
    """

    def __init__(self, num_classes: int | None = None, *, gamma: float = 2.0, scale_factor: float = 8.0,
                 alpha: float | None = 0.25, weight=None, ignore_index: int = -100, reduction: str = "mean",
                 normalizer=None, validate: bool | None = None, distributed: bool | None = None,
                 backend: str | None = None):
        options = dict(gamma=_checks.number(gamma, "gamma", low=0.0, low_open=True),
                       scale_factor=_checks.number(scale_factor, "scale_factor", low=0.0), alpha=sigmoid_alpha(alpha),
                       weight=weight, ignore_index=ignore_index, reduction=reduction, normalizer=normalizer,
                       validate=validate, backend=backend)
        super().__init__(num_classes, distributed, options)

    def gradient_ratio(self) -> Tensor:
        """The ratios in [0, 1] (1 before any statistics: the plain focal loss)."""
        ratio = super().gradient_ratio().clamp(0, 1)
        return torch.where(self.steps > 0, ratio, torch.ones_like(ratio))

    def forward(self, logits: Tensor, target, weight: Tensor | None = None, normalizer=None) -> Tensor:
        self._sized(logits)
        weight = self._weight(weight)
        options = {**self.options, "weight": weight}
        options["normalizer"] = options["normalizer"] if normalizer is None else normalizer
        loss = equalized_focal_loss(logits, target, gradient_ratio=self.gradient_ratio(), **options)
        self._collect(logits, target, weight)
        return loss


__all__ = public_names(__name__)
