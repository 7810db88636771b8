"""Sigmoid (multi-label, dense detection) losses: BCE, focal, Poly-1 and Su's truncations."""

from __future__ import annotations

from torch import Tensor

from . import _checks, _math, _modulator
from ._declare import declare, public_names
from ._sigmoid_engine import check_weight, sigmoid_loss



def sigmoid_alpha(alpha) -> float | None:
    """RetinaNet's alpha: None (off) or a number in [0, 1]."""
    if alpha is None:
        return None
    return _checks.number(alpha, "alpha", low=0.0, high=1.0)


@declare("sigmoid", "BinaryCrossEntropyLoss", aliases=("bce",))
def binary_cross_entropy(logits: Tensor, target, *, pos_weight: Tensor | None = None, weight=None,
                         ignore_index: int = -100, reduction: str = "mean", normalizer=None,
                         validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Binary cross-entropy on logits, matching ``torch.nn.functional.binary_cross_entropy_with_logits``.

    ``-(w_pos y log sigmoid(x) + (1 - y) log sigmoid(-x))``.

    Args:
        pos_weight: weight of positive examples, broadcastable to ``logits`` (as in torch).
        {sigmoid_args}

    {returns}
    """
    pos_weight = check_weight(pos_weight, logits, "pos_weight")
    return sigmoid_loss(_math.BCE, dict(pos_weight=pos_weight), logits,
                        target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                        normalizer=normalizer, validate=validate, backend=backend)


@declare("sigmoid", "SigmoidFocalLoss", aliases=("sigmoid_focal",), hyperparameters=("gamma", "alpha"))
def sigmoid_focal_loss(logits: Tensor, target, *, gamma: float = 2.0, alpha: float | None = 0.25,
                       normalized: bool = False, weight=None, ignore_index: int = -100, reduction: str = "mean",
                       normalizer=None, validate: bool | None = None, backend: str | None = None) -> Tensor:
    """RetinaNet's focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (Lin et al., arXiv:1708.02002).

    ``p_t = y p + (1 - y)(1 - p)``; ``alpha_t = alpha y + (1 - alpha)(1 - y)``: alpha weights
    the positives, ``1 - alpha`` the negatives. For soft targets the loss is
    ``alpha_t (1 - p_t)^gamma BCE(x, y)``, as torchvision's. The paper uses gamma = 2,
    alpha = 0.25 and divides the sum by the number of positive anchors (``normalizer=``).

    Args:
        gamma: focusing parameter, >= 0.
        alpha: in [0, 1], or None for no class balance.
        normalized: divide the sum by the modulators' sum ``sum (1 - p_t)^gamma`` over the counted elements
            (differentiated) in place of the mean's count: segmentation_models_pytorch's ``normalized=True``
            with its ``reduction="sum"``; ``reduction="mean"`` only.
        {sigmoid_args}

    {returns}

    Example:
        >>> import torch, polyfocal as pf
        >>> logits = torch.randn(4, 80, 16, 16)
        >>> labels = torch.randint(0, 81, (4, 16, 16))  # 80 = background
        >>> loss = pf.sigmoid_focal_loss(logits, labels, normalizer=(labels < 80).sum().clamp(min=1))
    """
    gamma = _checks.number(gamma, "gamma", low=0.0)
    f, params = _math.FOCAL, dict(gamma=gamma, alpha=sigmoid_alpha(alpha))
    contract = dict(weight=weight, ignore_index=ignore_index, validate=validate, backend=backend)
    if not _modulator.check_normalized(normalized, reduction, normalizer):
        return sigmoid_loss(f, params, logits, target, reduction=reduction, normalizer=normalizer, **contract)
    total = sigmoid_loss(f, params, logits, target, reduction="sum", **contract)
    return _modulator.divided(total, _modulator.sigmoid_modulator_sum(logits, target, gamma, ignore_index=ignore_index))


@declare("sigmoid", "Poly1FocalLoss", aliases=("poly1_focal",), hyperparameters=("epsilon", "gamma", "alpha"))
def poly1_focal_loss(logits: Tensor, target, *, epsilon: float = 1.0, gamma: float = 2.0,
                     alpha: float | None = 0.25, weight=None, ignore_index: int = -100,
                     reduction: str = "mean", normalizer=None, validate: bool | None = None,
                     backend: str | None = None) -> Tensor:
    """Poly-1 focal loss ``FL + epsilon (1 - p_t)^(gamma + 1)`` (Leng et al., arXiv:2204.12511).

    ``FL`` is :func:`sigmoid_focal_loss` with its ``alpha_t``; the Poly-1 term is *not*
    weighted by alpha, as in the paper's listing. The paper reports epsilon = -1 helping
    some detection settings.

    Args:
        epsilon: the first-term perturbation.
        gamma: focusing parameter, >= 0.
        alpha: in [0, 1], or None.
        {sigmoid_args}

    {returns}
    """
    epsilon = _checks.number(epsilon, "epsilon")
    gamma = _checks.number(gamma, "gamma", low=0.0)
    f, params = _math.FOCAL, dict(gamma=gamma, alpha=sigmoid_alpha(alpha), epsilon=epsilon)
    return sigmoid_loss(f, params, logits, target, weight=weight, ignore_index=ignore_index,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@declare("sigmoid", "Poly1BinaryCrossEntropyLoss", aliases=("poly1_bce",), hyperparameters=("epsilon",))
def poly1_binary_cross_entropy(logits: Tensor, target, *, epsilon: float = 1.0, weight=None,
                               ignore_index: int = -100, reduction: str = "mean", normalizer=None,
                               validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Poly-1 binary cross-entropy ``BCE + epsilon (1 - p_t)`` (arXiv:2204.12511).

    Args:
        epsilon: the first-term perturbation.
        {sigmoid_args}

    {returns}
    """
    epsilon = _checks.number(epsilon, "epsilon")
    f, params = _math.FOCAL, dict(gamma=0.0, epsilon=epsilon)
    return sigmoid_loss(f, params, logits, target, weight=weight, ignore_index=ignore_index,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@declare("sigmoid", "SigmoidSoftTruncatedLoss", hyperparameters=("k",))
def sigmoid_soft_truncated_loss(logits: Tensor, target, *, k: float = 1.0, weight=None,
                                ignore_index: int = -100, reduction: str = "mean", normalizer=None,
                                validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Su Jianlin's softened truncation, ``-y sigmoid(-k x) log sigmoid(x) - (1-y) sigmoid(k x) log sigmoid(-x)``.

    With k = 1 and binary targets this is focal loss with gamma = 1 and no alpha.

    Args:
        k: steepness of the soft step, > 0.
        {sigmoid_args}

    {returns}
    """
    k = _checks.number(k, "k", low=0.0, low_open=True)
    f, params = _math.SOFT_TRUNCATION, dict(k=k)
    return sigmoid_loss(f, params, logits, target, weight=weight, ignore_index=ignore_index,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@declare("sigmoid", "SigmoidHardTruncatedLoss", hyperparameters=("margin",))
def sigmoid_hard_truncated_loss(logits: Tensor, target, *, margin: float = 0.5, weight=None,
                                ignore_index: int = -100, reduction: str = "mean", normalizer=None,
                                validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Su Jianlin's hard-truncated BCE: no loss and no gradient once ``p_t > margin``.

    A positive stops counting once ``sigmoid(x) > margin``, a negative once
    ``sigmoid(x) < 1 - margin``; soft targets average the two cases.

    Args:
        margin: in (0, 1); the post uses 0.5.
        {sigmoid_args}

    {returns}
    """
    margin = _checks.number(margin, "margin", low=0.0, high=1.0, low_open=True, high_open=True)
    f, params = _math.HARD_TRUNCATION, dict(margin=margin)
    return sigmoid_loss(f, params, logits, target, weight=weight, ignore_index=ignore_index,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@declare("sigmoid", "SigmoidReducedFocalLoss", aliases=("sigmoid_reduced_focal",),
         hyperparameters=("gamma", "threshold"))
def sigmoid_reduced_focal_loss(logits: Tensor, target, *, gamma: float = 2.0, threshold: float = 0.5, weight=None,
                               ignore_index: int = -100, reduction: str = "mean", normalizer=None,
                               validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Reduced focal loss on sigmoids (Sergievskiy and Ponamarev, arXiv:1903.01347): BCE while
    ``p_t < threshold``, then ``((1 - p_t) / threshold)^gamma`` times it; ``p_t`` the probability of the
    target's side. segmentation_models_pytorch's ``FocalLoss(reduced_threshold=...)`` for 0/1 targets (with
    its ``alpha=None``); a soft target ``y`` averages the two sides' losses, ``y f(p) + (1-y) f(1-p)``.

    Args:
        gamma: >= 0.
        threshold: in (0, 1); the paper uses 0.5.
        {sigmoid_args}

    {returns}
    """
    params = dict(gamma=_checks.number(gamma, "gamma", low=0.0),
                  threshold=_checks.number(threshold, "threshold", low=0.0, high=1.0, low_open=True, high_open=True))
    return sigmoid_loss(_math.REDUCED_FOCAL, params, logits, target, weight=weight, ignore_index=ignore_index,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


__all__ = public_names(__name__)
