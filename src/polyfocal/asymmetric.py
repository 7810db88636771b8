"""The asymmetric loss, ASL (Ben-Baruch et al., ICCV 2021): its multi-label (sigmoid) form and timm's single-label
(softmax) form."""

from __future__ import annotations

from torch import Tensor

from . import _checks, _math
from ._declare import Hyperparameter, declare, public_names
from ._errors import InputTypeError
from ._sigmoid_engine import sigmoid_loss
from ._softmax_engine import check_logits, check_target, softmax_loss

GAMMA_POS = Hyperparameter("gamma_pos", "ASL's focusing parameter of the positives", flag="--gamma-pos")
GAMMA_NEG = Hyperparameter("gamma_neg", "ASL's focusing parameter of the negatives", flag="--gamma-neg")
CLIP = Hyperparameter("clip", "ASL's probability margin m of the negatives")


def _gammas(gamma_pos, gamma_neg) -> dict:
    return dict(gamma_pos=_checks.number(gamma_pos, "gamma_pos", low=0.0),
                gamma_neg=_checks.number(gamma_neg, "gamma_neg", low=0.0))


@declare("sigmoid", "AsymmetricLoss", aliases=("asl",), hyperparameters=(GAMMA_POS, GAMMA_NEG, CLIP))
def asymmetric_loss(logits: Tensor, target, *, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05,
                    weight=None, ignore_index: int = -100, reduction: str = "mean", normalizer=None,
                    validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Asymmetric loss, ASL (Ben-Baruch et al., ICCV 2021), for multi-label classification:
    ``-y (1-p)^gamma_pos log p - (1-y) p_m^gamma_neg log(1 - p_m)``, ``p_m = max(p - clip, 0)``.

    The many easy negatives of a multi-label image are down-weighted twice: focused harder than the
    positives (``gamma_neg > gamma_pos``) and, below ``p = clip``, discarded (which also ignores
    negatives that are probably mislabelled positives less than hard thresholding would). The paper's
    defaults are gamma_pos = 0, gamma_neg = 4, clip = 0.05. timm's ``AsymmetricLossMultiLabel`` is the
    same loss for 0/1 targets, summed (``reduction="sum"``); for soft targets this form is linear in
    ``y`` (timm mixes the modulator's exponent and base by ``y``).

    Args:
        gamma_pos: >= 0.
        gamma_neg: >= 0.
        clip: the probability margin ``m`` in [0, 1); 0 turns it off.
        {sigmoid_args}

    {returns}
    """
    params = dict(_gammas(gamma_pos, gamma_neg), clip=_checks.number(clip, "clip", low=0.0, high=1.0, high_open=True))
    return sigmoid_loss(_math.ASYMMETRIC, params, logits, target, weight=weight, ignore_index=ignore_index,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


@declare("softmax", "AsymmetricSingleLabelLoss", aliases=("asl_single",), hyperparameters=(GAMMA_POS, GAMMA_NEG),
         curve=False)
def asymmetric_single_label_loss(logits: Tensor, target: Tensor, *, gamma_pos: float = 1.0, gamma_neg: float = 4.0,
                                 weight=None, ignore_index: int = -100, label_smoothing: float = 0.0,
                                 reduction: str = "mean", normalizer=None, validate: bool | None = None,
                                 backend: str | None = None) -> Tensor:
    """ASL's single-label form, as timm's ``AsymmetricLossSingleLabel``: with the label-smoothed target
    ``y``, ``-y_t (1 - p_t)^gamma_pos log p_t - sum_(j != t) y_j p_j^gamma_neg log p_j``.

    The target's term is focal loss with ``gamma_pos``; each other class's smoothing share is weighted by its
    own probability to ``gamma_neg``, so label smoothing spends less on the classes the model already rules
    out. Without label smoothing (the contract's default) it is focal loss with ``gamma_pos``; timm's defaults
    are gamma_pos = 1, gamma_neg = 4 (these) and ``eps = 0.1``, this ``label_smoothing``: pass it. Class-index
    targets only (the asymmetry needs the one true class).

    Args:
        gamma_pos: >= 0, the target class's focusing parameter.
        gamma_neg: >= 0, the other classes'.
        {softmax_args}

    {returns}
    """
    params = _gammas(gamma_pos, gamma_neg)
    check_logits(logits)
    if not check_target(logits, target, ignore_index, validate)[0]:
        raise InputTypeError("`target` of asymmetric_single_label_loss must be class indices (N, *); got a float "
                             f"tensor of shape {tuple(target.shape)}")
    smoothing = _checks.number(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    contract = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, normalizer=normalizer,
                    validate=False, backend=backend)
    focal = dict(gamma=params["gamma_pos"])
    if not smoothing:
        return softmax_loss(_math.poly_series, focal, logits, target, **contract)
    # every class's smoothed share with the other classes' form, and the target's own share moved to its form
    others = softmax_loss(_math.power_weighted, dict(gamma=params["gamma_neg"]), logits, target,
                          label_smoothing=smoothing, **contract)
    target_term = softmax_loss(_math.target_minus_other, params, logits, target, **contract)
    return others + (1 - smoothing + smoothing / logits.shape[1]) * target_term


__all__ = public_names(__name__)
