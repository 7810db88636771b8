"""Region losses with focal terms: a region term plus any per-pixel polyfocal loss (Dice-focal,
Tversky-focal), and the unified focal loss (Yeung et al.), symmetric and asymmetric, binary and multi-class.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from . import _checks, _region
from ._declare import declare, public_names
from ._errors import InputTypeError, InputValueError
from ._numerics import no_autocast, output_dtype
from .region import dice_loss, tversky_loss

#: the per-pixel loss's options that the region loss sets for both of its terms
_SHARED = ("ignore_index", "reduction", "validate", "backend", "normalizer")


def _lambdas(**lambdas) -> list[float]:
    return [_checks.number(value, name, low=0.0) for name, value in lambdas.items()]


def pixel_term(logits: Tensor, target, *, activation, pixel_loss, pixel_params, ignore_index, reduction, validate,
               backend) -> Tensor:
    """The per-pixel loss ``pixel_loss`` (a softmax-family loss for ``activation="softmax"``, a sigmoid one
    for ``"sigmoid"``; focal loss by default) of the logits, with ``pixel_params``."""
    from . import registry  # every family is declared by the time a loss is called

    if activation not in ("softmax", "sigmoid"):
        raise InputValueError(f"`activation` must be 'softmax' or 'sigmoid' for a loss with a per-pixel term "
                              f"(it reads the logits); got {activation!r}")
    if reduction == "none":
        raise InputValueError("`reduction='none'` would give a region term per image and class and a pixel term per "
                              "pixel: call the two losses apart, or take 'mean' or 'sum'")
    name = pixel_loss or ("focal_loss" if activation == "softmax" else "sigmoid_focal_loss")
    if not isinstance(name, str):
        raise InputTypeError(f"`pixel_loss` must be a loss name; got {type(name).__name__}")
    declared = registry.declaration(registry.canonical_name(name, "pixel_loss"))
    if declared.family != activation:
        raise InputValueError(f"`pixel_loss` must name a {activation}-family loss for activation={activation!r}; "
                              f"{name!r} is {declared.family}")
    if pixel_params is not None and not isinstance(pixel_params, Mapping):
        raise InputTypeError(f"`pixel_params` must be a mapping of the pixel loss's options; got "
                             f"{type(pixel_params).__name__}")
    params = dict(pixel_params or {})
    shared = sorted(set(params) & set(_SHARED))
    if shared:
        raise InputValueError(f"`pixel_params` must not set {shared}: the region loss sets them for both terms")
    engine = {} if backend is None else {"backend": backend}
    return declared.function(logits, target, ignore_index=ignore_index, reduction=reduction, validate=validate,
                             **engine, **params)


@declare("region", "DiceFocalLoss", aliases=("dice_focal",))
def dice_focal_loss(logits: Tensor, target: Tensor, *, pixel_loss: str | None = None, pixel_params=None,
                    lambda_region: float = 1.0, lambda_pixel: float = 1.0, activation: str = "softmax",
                    squared_pred: bool = False, jaccard: bool = False, weight=None, ignore_index: int = -100,
                    include_background: bool = True, batch: bool = False, smooth_nr: float = 1e-5,
                    smooth_dr: float = 1e-5, reduction: str = "mean", distributed: bool | None = None,
                    validate: bool | None = None, backend: str | None = None) -> Tensor:
    """``lambda_region * dice_loss + lambda_pixel * pixel_loss``: the Dice loss of :func:`dice_loss` and a
    per-pixel polyfocal loss (focal loss by default) of the same logits, as MONAI's ``DiceFocalLoss``.

    Args:
        pixel_loss: the per-pixel loss's name: a softmax-family loss (``"focal_loss"``, the default,
            ``"cross_entropy"``, ``"poly1_cross_entropy"``...) with ``activation="softmax"``, a
            sigmoid-family one (``"sigmoid_focal_loss"``, the default) with ``"sigmoid"``.
        pixel_params: its options (``{{"gamma": 2.0, "alpha": ...}}``); ``ignore_index``, ``reduction``,
            ``validate`` and ``backend`` are the region loss's, for both terms. ``weight`` and
            ``include_background`` are the region term's only.
        lambda_region, lambda_pixel: the two terms' weights, >= 0.
        squared_pred, jaccard: as :func:`dice_loss`.
        {region_args}
        reduction: ``"mean"`` (the region terms' mean plus the per-pixel loss's mean over the counted
            pixels) or ``"sum"`` (each term's sum).
        backend: the engine of both terms (``"reference"``: autograd's gradient of the region sums).

    Returns:
        A scalar.

    Example:
        >>> import torch, polyfocal as pf
        >>> logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = pf.dice_focal_loss(logits, target, pixel_params={{"gamma": 2.0}})
    """
    lambda_region, lambda_pixel = _lambdas(lambda_region=lambda_region, lambda_pixel=lambda_pixel)
    pixel = pixel_term(logits, target, activation=activation, pixel_loss=pixel_loss, pixel_params=pixel_params,
                       ignore_index=ignore_index, reduction=reduction, validate=validate, backend=backend)
    region = dice_loss(logits, target, activation=activation, squared_pred=squared_pred, jaccard=jaccard,
                       weight=weight, ignore_index=ignore_index, include_background=include_background, batch=batch,
                       smooth_nr=smooth_nr, smooth_dr=smooth_dr, reduction=reduction, distributed=distributed,
                       validate=validate, backend=backend)
    return lambda_region * region + lambda_pixel * pixel


@declare("region", "TverskyFocalLoss", aliases=("tversky_focal",))
def tversky_focal_loss(logits: Tensor, target: Tensor, *, alpha: float = 0.5, beta: float = 0.5,
                       pixel_loss: str | None = None, pixel_params=None, lambda_region: float = 1.0,
                       lambda_pixel: float = 1.0, activation: str = "softmax", weight=None, ignore_index: int = -100,
                       include_background: bool = True, batch: bool = False, smooth_nr: float = 1e-5,
                       smooth_dr: float = 1e-5, reduction: str = "mean", distributed: bool | None = None,
                       validate: bool | None = None, backend: str | None = None) -> Tensor:
    """``lambda_region * tversky_loss + lambda_pixel * pixel_loss``: :func:`tversky_loss` (alpha weighs the
    false positives, beta the false negatives) and a per-pixel polyfocal loss, as :func:`dice_focal_loss`.

    Args:
        alpha, beta: as :func:`tversky_loss`.
        pixel_loss, pixel_params, lambda_region, lambda_pixel: as :func:`dice_focal_loss`.
        {region_args}
        reduction: ``"mean"`` or ``"sum"``, as :func:`dice_focal_loss`.
        backend: the engine of both terms (``"reference"``: autograd's gradient of the region sums).

    Returns:
        A scalar.
    """
    lambda_region, lambda_pixel = _lambdas(lambda_region=lambda_region, lambda_pixel=lambda_pixel)
    pixel = pixel_term(logits, target, activation=activation, pixel_loss=pixel_loss, pixel_params=pixel_params,
                       ignore_index=ignore_index, reduction=reduction, validate=validate, backend=backend)
    region = tversky_loss(logits, target, alpha=alpha, beta=beta, activation=activation, weight=weight,
                          ignore_index=ignore_index, include_background=include_background, batch=batch,
                          smooth_nr=smooth_nr, smooth_dr=smooth_dr, reduction=reduction, distributed=distributed,
                          validate=validate, backend=backend)
    return lambda_region * region + lambda_pixel * pixel


UNIFIED_FORMS = ("asymmetric", "symmetric")


def _two_classes(logits: Tensor, target, activation):
    """A binary input (one channel, sigmoid or probabilities) as two classes, background first."""
    if activation == "softmax" or not isinstance(logits, Tensor) or logits.dim() < 3 or logits.shape[1] != 1:
        if activation == "sigmoid":
            raise InputValueError(f"the unified focal loss takes activation='sigmoid' with one channel (binary); "
                                  f"got logits of shape {tuple(logits.shape)}: use activation='softmax'")
        return logits, target, activation
    if isinstance(target, Tensor) and not target.is_floating_point() and target.dim() == logits.dim():
        target = target[:, 0]  # one channel of labels
    pair = (torch.cat([torch.zeros_like(logits), logits], 1) if activation == "sigmoid"
            else torch.cat([1 - logits, logits], 1))
    if isinstance(target, Tensor) and target.is_floating_point() and target.shape == logits.shape:
        target = torch.cat([1 - target, target], 1)
    return pair, target, "softmax" if activation == "sigmoid" else None


def unified_parts(logits: Tensor, target, *, form, delta, gamma, activation, ignore_index, batch, smooth_nr,
                  smooth_dr, distributed, validate, focal_weight, per_pixel_mean: bool, keep=None,
                  backend=None) -> tuple[Tensor, Tensor]:
    """The unified focal loss's parts: ``focal_weight`` times the per-pixel focal terms' sum (their mean over
    the counted pixels with ``per_pixel_mean``), and the focal Tversky terms per image (or batch) and class."""
    if form not in UNIFIED_FORMS:
        raise InputValueError(f"`form` must be one of {UNIFIED_FORMS}; got {form!r}")
    delta = _checks.number(delta, "delta", low=0.0, high=1.0)
    gamma = _checks.number(gamma, "gamma", low=0.0, high=1.0)
    for value, name in ((smooth_nr, "smooth_nr"), (smooth_dr, "smooth_dr")):
        _checks.number(value, name, low=0.0)
    logits, target, activation = _two_classes(logits, target, activation)
    pix = _region.pixels(logits, target, activation, ignore_index, validate, keep)
    x, written_out = pix.logits, _region.written_out(backend, pix.logits)
    weights = torch.full((x.shape[1],), delta, dtype=x.dtype, device=x.device)
    weights[0] = 1 - delta  # the background's weight; delta the rare classes'
    gammas, exponents = torch.full_like(weights, gamma), torch.full_like(weights, 1 - gamma)
    if form == "asymmetric":  # suppress the background's focal term, enhance the rare classes' region terms
        gammas[1:], exponents[0] = 0.0, 1.0
    scale = focal_weight / _region.counted(pix) if per_pixel_mean else focal_weight
    labels = pix.labels if pix.dense is None else _checks.one_hot_labels(pix.dense, validate)
    if labels is None:  # a probability target weighs every class's focal term
        per_class = _region.class_focal_terms(pix, gammas) * weights.view(1, -1, 1)
        focal = _region.at_target(per_class, pix).sum() * scale
    else:  # class indices, or a one-hot target's (the same terms; the region sums keep the dense target)
        focal = _region.focal_sum_at_labels(pix._replace(labels=labels), gammas, weights, scale,
                                            _region.written_out(backend, None))
    sums = _region.class_sums(pix, batch=batch, distributed=distributed, written_out=written_out)
    tversky = _region.tversky_terms(sums, alpha=1 - delta, beta=delta, smooth_nr=smooth_nr, smooth_dr=smooth_dr)
    return focal, _region.focal(tversky, exponents)


@declare("region", "UnifiedFocalLoss", aliases=("unified_focal",))
def unified_focal_loss(logits: Tensor, target: Tensor, *, form: str = "asymmetric", lambda_focal: float = 0.5,
                       delta: float = 0.6, gamma: float = 0.5, activation: str | None = "softmax",
                       ignore_index: int = -100, mask=None, batch: bool = False, smooth_nr: float = 1e-5,
                       smooth_dr: float = 1e-5, reduction: str = "mean", distributed: bool | None = None,
                       validate: bool | None = None, backend: str | None = None) -> Tensor:
    """The unified focal loss ``lambda_focal * L_F + (1 - lambda_focal) * L_FT`` (Yeung et al., Computerized
    Medical Imaging and Graphics 2022, arXiv:2102.04525), binary and multi-class; class 0 is the background.

    ``L_F``, per pixel: ``-sum_c w_c (1 - p_c)^gamma_c y_c log p_c``, ``w_0 = 1 - delta`` and ``w_c = delta``
    for the other (rare) classes, averaged over the counted pixels. ``L_FT``, per image (or batch) and class:
    ``(1 - mTI_c)^(1 - gamma_c)`` with the Tversky index ``mTI = (tp + smooth_nr) / (tp + delta fn +
    (1 - delta) fp + smooth_dr)``, averaged. ``"symmetric"``: every class's ``gamma_c = gamma``.
    ``"asymmetric"`` (the paper's recommendation): the focal modulation only on the background's focal
    term and only on the rare classes' region terms (``gamma_c = 0``, resp. an exponent 1, elsewhere).
    The paper's defaults: ``lambda_focal = 0.5``, ``delta = 0.6``, ``gamma = 0.5``. MONAI's
    ``AsymmetricUnifiedFocalLoss`` (binary, probabilities in) averages ``L_F`` over its two channels too:
    ``polyfocal.integrations.monai`` has its form.

    Args:
        form: ``"asymmetric"`` or ``"symmetric"``.
        lambda_focal: in [0, 1], the weight of the focal part (the paper's lambda, MONAI's ``weight``).
        delta: in [0, 1], the rare classes' weight (and the false negatives' in ``mTI``).
        gamma: in [0, 1], the focusing parameter of both parts.
        logits: ``(N, C, *spatial)``; with ``activation="sigmoid"`` or probabilities, one channel
            (the foreground) is a binary problem.
        target, activation, ignore_index, mask, batch, smooth_nr, smooth_dr, distributed, validate, backend:
            as :func:`dice_loss`; the focal part of class-index targets takes the softmax row engine's
            written-out gradient (``backend="reference"``: autograd).
        reduction: ``"mean"`` or ``"sum"`` (each part's sum).

    Returns:
        A scalar.
    """
    lambda_focal = _checks.number(lambda_focal, "lambda_focal", low=0.0, high=1.0)
    _checks.check_reduction(reduction, None)
    if reduction == "none":
        raise InputValueError("`reduction='none'`: the unified focal loss's parts have different shapes; "
                              "take 'mean' or 'sum'")
    out_dtype = output_dtype(logits)
    with no_autocast(logits):
        focal, terms = unified_parts(
            logits, target, form=form, delta=delta, gamma=gamma, activation=activation, ignore_index=ignore_index,
            batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr, distributed=distributed, validate=validate,
            focal_weight=lambda_focal, per_pixel_mean=reduction == "mean", keep=mask, backend=backend)
        # the focal part comes weighted and averaged, so that its saved gradient is the logits' own
        return (focal + (1 - lambda_focal) * _region.reduce_terms(terms, reduction)).to(out_dtype)


__all__ = public_names(__name__)
