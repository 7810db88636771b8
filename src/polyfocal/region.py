"""Region losses for segmentation: Dice, Tversky and focal Tversky over each class's pixels, their sums with
a per-pixel polyfocal loss (Dice-focal, Tversky-focal), and the unified focal loss. The sums and terms are
:mod:`polyfocal._region`'s; MONAI's and segmentation_models_pytorch's conventions are in the README.
"""

from __future__ import annotations


from torch import Tensor

from . import _checks, _region
from ._declare import declare, public_names
from ._errors import InputTypeError, InputValueError
from ._numerics import no_autocast, output_dtype


def _region_options(pix: _region.Pixels, weight, include_background: bool, smooth_nr, smooth_dr, reduction: str):
    """Check the options every region loss shares; the class weight as a tensor (or None)."""
    _checks.check_reduction(reduction, None)
    for value, name in ((smooth_nr, "smooth_nr"), (smooth_dr, "smooth_dr")):
        _checks.number(value, name, low=0.0)
    if not isinstance(include_background, bool):
        raise InputTypeError(f"`include_background` must be True or False; got {include_background!r}")
    if not include_background and pix.logits.shape[1] == 1:
        raise InputValueError("`include_background=False` leaves out channel 0, the only one of these logits "
                              "(one channel is the foreground); got shape with C=1")
    weight = _checks.class_vector(weight, "weight", pix.logits.shape[1], pix.logits)
    if weight is not None and bool(_checks.should_validate(None, weight)) and bool((weight < 0).any()):
        raise InputValueError(f"`weight` must be >= 0; got {weight.tolist()}")
    return weight


def _region_loss(terms_of, logits, target, *, activation, weight, ignore_index, include_background, batch,
                 smooth_nr, smooth_dr, reduction, validate, distributed, mask, backend, squared=False) -> Tensor:
    """The loss of a region term ``terms_of(sums)`` (per image and class, or per class): weighted, the
    background left out where asked, reduced; the sums' gradient autograd's or written out
    (:func:`polyfocal._region.written_out`)."""
    out_dtype = output_dtype(logits)
    with no_autocast(logits):
        pix = _region.pixels(logits, target, activation, ignore_index, validate, mask)
        weight = _region_options(pix, weight, include_background, smooth_nr, smooth_dr, reduction)
        written_out = _region.written_out(backend, pix.logits)
        sums = _region.class_sums(pix, squared=squared, batch=batch, distributed=distributed,
                                  written_out=written_out)
        first = 0 if include_background else 1
        terms = terms_of(sums.classes(first))
        if weight is not None:
            terms = terms * weight[first:]
        return _region.reduce_terms(terms, reduction).to(out_dtype)


@declare("region", "DiceLoss", aliases=("dice",))
def dice_loss(logits: Tensor, target: Tensor, *, activation: str | None = "softmax", squared_pred: bool = False,
              jaccard: bool = False, weight=None, ignore_index: int = -100, mask=None, include_background: bool = True,
              batch: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, reduction: str = "mean",
              distributed: bool | None = None, validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Dice loss ``1 - (2 sum p y + smooth_nr) / (sum p + sum y + smooth_dr)`` per image and class
    (Milletari et al., V-Net, arXiv:1606.04797), as MONAI's ``DiceLoss``.

    Args:
        squared_pred: sum ``p^2`` and ``y^2`` in the denominator (V-Net's form).
        jaccard: the Jaccard (IoU) loss, the denominator twice the union ``sum p + sum y - sum p y``.
        {region_args}

    Returns:
        A scalar (the mean over images and classes, or their sum), or ``(N, C)`` terms with
        ``reduction="none"`` (``(C,)`` with ``batch``; C counts the classes kept).

    Example:
        >>> import torch, polyfocal as pf
        >>> logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> pf.dice_loss(logits, target, reduction="none").shape
        torch.Size([2, 3])
    """
    def terms_of(sums):
        return _region.dice_terms(sums, jaccard=jaccard, smooth_nr=smooth_nr, smooth_dr=smooth_dr)

    return _region_loss(terms_of, logits, target, activation=activation, weight=weight, ignore_index=ignore_index,
                        include_background=include_background, batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                        reduction=reduction, validate=validate, distributed=distributed, mask=mask,
                        backend=backend, squared=squared_pred)


def _tversky_weights(alpha, beta) -> tuple[float, float]:
    alpha, beta = _checks.number(alpha, "alpha", low=0.0), _checks.number(beta, "beta", low=0.0)
    if alpha + beta == 0:
        raise InputValueError(f"`alpha + beta` must be > 0 (else the Tversky index is 1 whatever the prediction); "
                              f"got alpha={alpha}, beta={beta}")
    return alpha, beta


@declare("region", "TverskyLoss", aliases=("tversky",))
def tversky_loss(logits: Tensor, target: Tensor, *, alpha: float = 0.5, beta: float = 0.5,
                 activation: str | None = "softmax", weight=None, ignore_index: int = -100, mask=None,
                 include_background: bool = True, batch: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, reduction: str = "mean", distributed: bool | None = None,
                 validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Tversky loss ``1 - TI``, ``TI = (tp + smooth_nr) / (tp + alpha fp + beta fn + smooth_dr)`` per image
    and class (Salehi et al., arXiv:1706.05721), as MONAI's ``TverskyLoss``: ``tp = sum p y``, false
    positives ``sum p (1 - y)``, false negatives ``sum (1 - p) y``.

    Args:
        alpha: weight of the false positives (MONAI's, smp's and Salehi et al.'s alpha); 0.5 and 0.5 are Dice.
        beta: weight of the false negatives; beta > alpha favours recall (small structures).
        {region_args}

    Returns:
        As :func:`dice_loss`.
    """
    alpha, beta = _tversky_weights(alpha, beta)

    def terms_of(sums):
        return _region.tversky_terms(sums, alpha=alpha, beta=beta, smooth_nr=smooth_nr, smooth_dr=smooth_dr)

    return _region_loss(terms_of, logits, target, activation=activation, weight=weight, ignore_index=ignore_index,
                        include_background=include_background, batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                        reduction=reduction, validate=validate, distributed=distributed, mask=mask,
                        backend=backend)


@declare("region", "FocalTverskyLoss", aliases=("focal_tversky",))
def focal_tversky_loss(logits: Tensor, target: Tensor, *, alpha: float = 0.3, beta: float = 0.7,
                       gamma: float = 4.0 / 3.0, activation: str | None = "softmax", weight=None,
                       ignore_index: int = -100, mask=None, include_background: bool = True, batch: bool = False,
                       smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, reduction: str = "mean",
                       distributed: bool | None = None, validate: bool | None = None,
                       backend: str | None = None) -> Tensor:
    """Focal Tversky loss ``(1 - TI)^(1/gamma)`` per image and class (Abraham and Khan, arXiv:1810.07842),
    ``TI`` as in :func:`tversky_loss`.

    The exponent is the paper's ``1/gamma``, gamma = 4/3 there (a power 3/4: a class whose overlap is
    already good keeps a larger share of the loss). segmentation_models_pytorch's
    ``TverskyLoss(gamma=g)`` raises to ``g`` itself: its ``g`` is this ``1/gamma``. The paper writes alpha
    for the false negatives' weight (0.7); here, as in MONAI and smp, alpha weighs the false positives,
    so the paper's setting is ``alpha=0.3, beta=0.7``, the defaults. At a perfect overlap the loss is 0
    with a zero gradient (the power's derivative has no bound there).

    Args:
        alpha: weight of the false positives.
        beta: weight of the false negatives.
        gamma: > 0; the exponent is ``1/gamma`` (1: the Tversky loss).
        {region_args}

    Returns:
        As :func:`dice_loss`.
    """
    alpha, beta = _tversky_weights(alpha, beta)
    exponent = 1.0 / _checks.number(gamma, "gamma", low=0.0, low_open=True)

    def terms_of(sums):
        terms = _region.tversky_terms(sums, alpha=alpha, beta=beta, smooth_nr=smooth_nr, smooth_dr=smooth_dr)
        return _region.focal(terms, exponent)

    return _region_loss(terms_of, logits, target, activation=activation, weight=weight, ignore_index=ignore_index,
                        include_background=include_background, batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                        reduction=reduction, validate=validate, distributed=distributed, mask=mask,
                        backend=backend)


__all__ = public_names(__name__)
