"""MONAI's segmentation losses with MONAI's names, signatures and meaning, on polyfocal's region family: a
MONAI training script swaps ``from monai.losses import DiceLoss`` for
``from polyfocal.integrations.monai import DiceLoss``. MONAI itself is not needed.

Kept as MONAI has them (and matched against MONAI in the tests): no activation unless ``sigmoid`` or
``softmax`` (the input is then probabilities); the target one channel of labels (``to_onehot_y``) or
one-hot; ``ignore_index`` masks the pixels of that label (one-hot targets: its channel, or the all-zero
pixels for an index outside the channels); ``weight`` of the classes kept; a one-channel input warns and
ignores ``softmax``, ``to_onehot_y`` and ``include_background=False``; ``FocalLoss`` drops the background
channel before its softmax, and its mean divides by the elements, or, with ``ignore_index``, by the kept
pixels; ``DiceFocalLoss``'s focal part is the sigmoid one, as MONAI's; ``AsymmetricUnifiedFocalLoss`` takes
probabilities, clamped to ``[1e-7, 1 - 1e-7]``, and averages its focal part over the two channels too.
MONAI's ``soft_label=True`` (another formula for soft targets) is not offered.
The one multi-class form MONAI lacks: :class:`UnifiedFocalLoss`.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks, _region
from .._numerics import compute_dtype
from .._errors import InputValueError
from ..region import dice_loss, tversky_loss
from ..region_focal import unified_focal_loss, unified_parts
from ..sigmoid import sigmoid_focal_loss

__all__ = ["DiceLoss", "TverskyLoss", "FocalLoss", "DiceFocalLoss", "AsymmetricUnifiedFocalLoss", "UnifiedFocalLoss"]

_EPSILON = 1e-7  # MONAI's clamp of the unified focal loss's probabilities


def _single_channel(option: str) -> None:
    warnings.warn(f"single channel prediction, `{option}=True` ignored.", stacklevel=3)


def _activation(input: Tensor, sigmoid: bool, softmax: bool, other_act) -> tuple[Tensor, str | None]:
    if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
        raise InputValueError("Incompatible values: more than 1 of [sigmoid=True, softmax=True, other_act is not "
                              "None].")
    if softmax and input.shape[1] == 1:
        _single_channel("softmax")
        return input, None
    if other_act is not None:
        return other_act(input), None
    return input, "sigmoid" if sigmoid else "softmax" if softmax else None


def ignore_mask(target: Tensor, ignore_index: int | None) -> Tensor | None:
    """MONAI's kept pixels ``(N, *spatial)``: labels other than ``ignore_index`` (one channel), else the
    pixels outside its channel, or (an index outside the channels) those with a positive channel."""
    if ignore_index is None:
        return None
    if target.shape[1] == 1:
        return target[:, 0] != ignore_index
    if 0 <= ignore_index < target.shape[1]:
        return target[:, ignore_index] == 0
    return target.sum(1) > 0


def _labels(target: Tensor, classes: int, ignore_index: int | None) -> Tensor:
    """A one-channel label target as ``(N, *spatial)`` indices; an ignore_index outside the classes is 0."""
    labels = target[:, 0].long()
    if ignore_index is not None and not 0 <= ignore_index < classes:
        labels = labels.masked_fill(labels == ignore_index, 0)
    return labels


class _Region(nn.Module):
    """What MONAI's DiceLoss and TverskyLoss share: activation, target, mask, background."""

    def __init__(self, include_background=True, to_onehot_y=False, sigmoid=False, softmax=False, other_act=None,
                 reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5, batch=False, soft_label=False, ignore_index=None):
        super().__init__()
        _checks.check_reduction(str(getattr(reduction, "value", reduction)), None)
        if soft_label:
            raise InputValueError("`soft_label=True` (MONAI's formula for soft labels) is not offered by polyfocal; "
                                  "got True")
        self.include_background, self.to_onehot_y, self.ignore_index = include_background, to_onehot_y, ignore_index
        self.sigmoid, self.softmax, self.other_act, self.batch = sigmoid, softmax, other_act, batch
        self.reduction = str(getattr(reduction, "value", reduction))
        self.smooth_nr, self.smooth_dr = smooth_nr, smooth_dr

    def _inputs(self, input: Tensor, target: Tensor) -> dict:
        """The region loss's arguments for MONAI's input and target."""
        keep = ignore_mask(target, self.ignore_index)
        input, activation = _activation(input, self.sigmoid, self.softmax, self.other_act)
        classes = input.shape[1]
        if self.to_onehot_y and classes == 1:
            _single_channel("to_onehot_y")
        elif self.to_onehot_y:
            target = _labels(target, classes, self.ignore_index)
        if not target.is_floating_point() and target.dim() == input.dim():  # a one-hot of integers
            target = target.to(input.dtype)
        include_background = self.include_background
        if not include_background and classes == 1:
            _single_channel("include_background")
            include_background = True
        if target.dim() == input.dim() and target.shape != input.shape:
            raise InputValueError(f"ground truth has different shape ({target.shape}) from input ({input.shape})")
        return dict(logits=input, target=target, activation=activation, include_background=include_background,
                    keep=keep, batch=self.batch, smooth_nr=self.smooth_nr, smooth_dr=self.smooth_dr)


class DiceLoss(_Region):
    """MONAI's ``DiceLoss`` (its arguments and meaning), computed by :func:`polyfocal.dice_loss`."""

    def __init__(self, include_background=True, to_onehot_y=False, sigmoid=False, softmax=False, other_act=None,
                 squared_pred=False, jaccard=False, reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5, batch=False,
                 weight=None, soft_label=False, ignore_index=None):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, smooth_nr,
                         smooth_dr, batch, soft_label, ignore_index)
        self.squared_pred, self.jaccard = squared_pred, jaccard
        self.register_buffer("class_weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        args = self._inputs(input, target)
        weight = _class_weight(self.class_weight, args["logits"].shape[1], args["include_background"])
        loss = _with_keep(dice_loss, args, squared_pred=self.squared_pred, jaccard=self.jaccard, weight=weight,
                          reduction=self.reduction)
        if self.reduction == "none":  # MONAI's broadcastable shape
            loss = loss.view(list(loss.shape[:2]) + [1] * (input.dim() - 2))
        return loss


class TverskyLoss(_Region):
    """MONAI's ``TverskyLoss`` (alpha weighs the false positives, beta the false negatives), computed by
    :func:`polyfocal.tversky_loss`."""

    def __init__(self, include_background=True, to_onehot_y=False, sigmoid=False, softmax=False, other_act=None,
                 alpha=0.5, beta=0.5, reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5, batch=False, soft_label=False,
                 ignore_index=None):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, smooth_nr,
                         smooth_dr, batch, soft_label, ignore_index)
        self.alpha, self.beta = alpha, beta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        args = self._inputs(input, target)
        return _with_keep(tversky_loss, args, alpha=self.alpha, beta=self.beta, reduction=self.reduction)


def _class_weight(weight: Tensor | None, classes: int, include_background: bool) -> Tensor | None:
    """MONAI's weight (a number, or one per class kept) as polyfocal's ``(C,)``; none for one channel."""
    if weight is None or classes == 1:
        return None
    kept = classes - (0 if include_background else 1)
    if weight.dim() == 0:
        weight = weight.expand(kept)
    if weight.shape != (kept,):
        raise InputValueError(f"The length of the `weight` sequence should be the same as the number of classes "
                              f"({kept}, the background left out where include_background=False); got {weight.numel()}")
    if bool((weight < 0).any()):
        raise InputValueError("the value/values of the `weight` should be no less than 0.")
    return weight if include_background else torch.cat([weight.new_zeros(1), weight])


def _with_keep(loss, args: dict, **options) -> Tensor:
    """Call a region loss on MONAI's arguments, its ignore mask as the pixels counted."""
    args = dict(args)
    mask = args.pop("keep")
    return loss(**args, mask=mask, **options)


def _focal_alpha(alpha, target: Tensor, use_softmax: bool, include_background: bool):
    """MONAI's alpha as a per-element factor (None: off): with softmax, a number a is ``1 - a`` for the
    background and ``a`` for the rest (ignored, with a warning, without the background), a vector one per
    class; with sigmoid, a number is RetinaNet's ``alpha_t`` (polyfocal's own), a vector weighs the
    positives of each class."""
    if alpha is None:
        return None
    alpha = torch.as_tensor(alpha, dtype=target.dtype, device=target.device)
    classes = target.shape[1]
    if alpha.dim() and alpha.shape[0] != classes:
        raise InputValueError(f"The length of alpha ({alpha.shape[0]}) must match the number of classes ({classes}).")
    shape = (1, classes) + (1,) * (target.dim() - 2)
    if use_softmax:
        if alpha.dim() == 0 and not include_background:
            warnings.warn("`include_background=False`, scalar `alpha` ignored when using softmax.", stacklevel=3)
            return None
        vector = torch.cat([1 - alpha.view(1), alpha.expand(classes - 1)]) if alpha.dim() == 0 else alpha
        return vector.view(shape)
    if alpha.dim() == 0:
        return target * alpha + (1 - target) * (1 - alpha)
    return torch.where(target == 1, alpha.view(shape), torch.ones_like(target))


class FocalLoss(nn.Module):
    """MONAI's ``FocalLoss`` on logits (sigmoid per channel, or softmax with ``use_softmax``): the per-element
    focal terms of :func:`polyfocal.sigmoid_focal_loss`, or polyfocal's softmax focal term per channel."""

    def __init__(self, include_background=True, to_onehot_y=False, gamma=2.0, alpha=None, weight=None,
                 reduction="mean", use_softmax=False, ignore_index=None):
        super().__init__()
        self.reduction = str(getattr(reduction, "value", reduction))
        _checks.check_reduction(self.reduction, None)
        self.include_background, self.to_onehot_y = include_background, to_onehot_y
        self.gamma, self.alpha = gamma, alpha
        self.use_softmax, self.ignore_index = use_softmax, ignore_index
        self.register_buffer("class_weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        mask = ignore_mask(target, self.ignore_index)
        classes = input.shape[1]
        if self.to_onehot_y and classes == 1:
            _single_channel("to_onehot_y")
        elif self.to_onehot_y:
            target = F.one_hot(_labels(target, classes, self.ignore_index).clamp_min(0), classes).movedim(-1, 1)
        if not self.include_background and classes == 1:
            _single_channel("include_background")
        elif not self.include_background:
            input, target = input[:, 1:], target[:, 1:]
        if target.shape != input.shape:
            raise InputValueError(f"ground truth has different shape ({target.shape}) from input ({input.shape})")
        x = input.to(compute_dtype(input)) if input.is_floating_point() else input.float()
        y = target.to(x.dtype)
        loss = self._elements(x, y)
        if mask is not None:
            loss = loss * mask.unsqueeze(1)
        if self.class_weight is not None:
            loss = loss * _element_weight(self.class_weight.to(loss), loss)
        return _monai_mean(loss, mask, self.reduction)

    def _elements(self, x: Tensor, y: Tensor) -> Tensor:
        alpha = _focal_alpha(self.alpha, y, self.use_softmax, self.include_background)
        if not self.use_softmax:
            scalar = alpha is not None and torch.as_tensor(self.alpha).dim() == 0
            loss = sigmoid_focal_loss(x, y, gamma=self.gamma, alpha=float(self.alpha) if scalar else None,
                                      reduction="none", validate=False)
            return loss if alpha is None or scalar else loss * alpha
        pix = _region.pixels(x, y, "softmax", -100, False)
        gammas = torch.full((x.shape[1],), float(self.gamma), dtype=x.dtype)
        loss = (_region.class_focal_terms(pix, gammas) * pix.dense).view(x.shape)
        return loss if alpha is None else loss * alpha


def _element_weight(weight: Tensor, loss: Tensor) -> Tensor:
    if weight.dim() == 0:
        return weight
    if loss.shape[1] == 1:
        raise InputValueError("Per-class class_weight is not supported for single-channel outputs.")
    if weight.numel() != loss.shape[1]:
        raise InputValueError(f"The number of class_weight ({weight.numel()}) must match the number of output "
                              f"channels ({loss.shape[1]}).")
    return weight.view((1, -1) + (1,) * (loss.dim() - 2))


def _monai_mean(loss: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    """MONAI's focal reductions: the mean over the elements (with a mask: the sum over the kept pixels'
    count), or the sum of each image and channel's spatial mean."""
    spatial = list(range(2, loss.dim()))
    if reduction == "sum":
        if mask is None:
            return loss.mean(spatial).sum()
        kept = mask.unsqueeze(1).float().sum(spatial, keepdim=True).clamp_min(torch.finfo(torch.float).eps)
        return (loss.sum(spatial, keepdim=True) / kept).sum()
    if reduction == "mean":
        return loss.mean() if mask is None else loss.sum() / mask.float().sum().clamp_min(torch.finfo(torch.float).eps)
    return loss


class DiceFocalLoss(nn.Module):
    """MONAI's ``DiceFocalLoss``: ``lambda_dice`` times :class:`DiceLoss` plus ``lambda_focal`` times the
    sigmoid :class:`FocalLoss` (as MONAI's, whatever the Dice part's activation), ``weight`` in both."""

    def __init__(self, include_background=True, to_onehot_y=False, sigmoid=False, softmax=False, other_act=None,
                 squared_pred=False, jaccard=False, reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5, batch=False,
                 gamma=2.0, weight=None, lambda_dice=1.0, lambda_focal=1.0, alpha=None):
        super().__init__()
        self.dice = DiceLoss(include_background, False, sigmoid, softmax, other_act, squared_pred, jaccard, reduction,
                             smooth_nr, smooth_dr, batch, weight)
        self.focal = FocalLoss(include_background, False, gamma, alpha, weight, reduction)
        self.lambda_dice = _checks.number(lambda_dice, "lambda_dice", low=0.0)
        self.lambda_focal = _checks.number(lambda_focal, "lambda_focal", low=0.0)
        self.to_onehot_y = to_onehot_y

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if input.dim() != target.dim() or target.shape[1] not in (1, input.shape[1]):
            raise InputValueError(f"the target must have shape (N, 1, *spatial) or that of the input "
                                  f"{tuple(input.shape)}; got {tuple(target.shape)}")
        if self.to_onehot_y and input.shape[1] == 1:
            _single_channel("to_onehot_y")
        elif self.to_onehot_y:
            target = F.one_hot(target[:, 0].long(), input.shape[1]).movedim(-1, 1).to(input.dtype)
        return self.lambda_dice * self.dice(input, target) + self.lambda_focal * self.focal(input, target)


class UnifiedFocalLoss(nn.Module):
    """The multi-class unified focal loss MONAI lacks, with MONAI's unified loss's arguments: the paper's
    :func:`polyfocal.unified_focal_loss` on logits (``sigmoid`` for one channel, else softmax)."""

    def __init__(self, to_onehot_y=False, num_classes=2, weight=0.5, gamma=0.5, delta=0.6, reduction="mean",
                 ignore_index=None, form="asymmetric", sigmoid=False):
        super().__init__()
        self.options = dict(form=form, lambda_focal=weight, delta=delta, gamma=gamma, reduction=str(reduction))
        self.to_onehot_y, self.num_classes = to_onehot_y, num_classes
        self.ignore_index, self.sigmoid = ignore_index, sigmoid

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        labelled = target.shape[1] == 1  # labels, made one-hot (to_onehot_y) or binary
        mask = None if labelled else ignore_mask(target, self.ignore_index)
        ignore = -100 if self.ignore_index is None or not labelled else self.ignore_index
        return unified_focal_loss(input, target[:, 0].long() if labelled else target, mask=mask, ignore_index=ignore,
                                  activation="sigmoid" if self.sigmoid else "softmax", **self.options)


class AsymmetricUnifiedFocalLoss(nn.Module):
    """MONAI's ``AsymmetricUnifiedFocalLoss`` (binary; probabilities in, clamped to ``[1e-7, 1 - 1e-7]``):
    ``weight`` times the asymmetric focal part averaged over pixels and both channels, plus ``1 - weight``
    times the asymmetric focal Tversky part (``delta`` 0.7 and ``gamma`` 0.5, MONAI's defaults)."""

    def __init__(self, to_onehot_y=False, num_classes=2, weight=0.5, gamma=0.5, delta=0.7, reduction="mean",
                 ignore_index=None):
        super().__init__()
        if num_classes != 2:
            raise InputValueError(f"`num_classes` must be 2 (MONAI's unified focal loss is binary; polyfocal's "
                                  f"UnifiedFocalLoss is multi-class); got {num_classes}")
        self.to_onehot_y, self.weight, self.gamma, self.delta = to_onehot_y, weight, gamma, delta
        self.reduction, self.ignore_index = str(getattr(reduction, "value", reduction)), ignore_index

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        if y_pred.dim() not in (4, 5):
            raise InputValueError(f"input shape must be 4 or 5, but got {tuple(y_pred.shape)}")
        keep = ignore_mask(y_true, self.ignore_index)
        if self.to_onehot_y and y_pred.shape[1] == 1:
            warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=2)
        if y_pred.shape[1] == 1 and self.ignore_index is not None:
            warnings.warn("single channel prediction, `ignore_index` is applied to label-encoded targets.",
                          stacklevel=2)
        if y_true.shape[1] == 1 and (self.to_onehot_y or y_pred.shape[1] == 1):
            y_true = _labels(y_true, 2, self.ignore_index)
        p = y_pred.clamp(_EPSILON, 1 - _EPSILON)
        # MONAI's parts are means whatever the reduction: the focal part's over every pixel and both channels
        focal, terms = unified_parts(p, y_true, form="asymmetric", delta=self.delta, gamma=self.gamma,
                                     activation=None, ignore_index=-100, batch=False, smooth_nr=_EPSILON,
                                     smooth_dr=_EPSILON, distributed=False, validate=None, keep=keep,
                                     focal_weight=self.weight / (y_pred.shape[0] * 2 * y_pred[0, 0].numel()),
                                     per_pixel_mean=False)
        return focal + (1 - self.weight) * _region.reduce_terms(terms, "mean")
