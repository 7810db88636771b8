"""Focal loss's normalised form (segmentation_models_pytorch's ``normalized=True``): the mean's denominator is the
sum of the modulators ``(1 - p_t)^gamma`` over the counted elements, differentiated as part of the loss, in place of
their count. Each family's sum reads the same ``p_t`` (and counts the same way) as its loss."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _checks
from ._errors import InputTypeError, InputValueError
from ._numerics import (compute_dtype, is_class, log_softmax_and_log1m, no_autocast, power,
                        sigmoid_complement_of_target, sigmoid_probability)
from ._sigmoid_engine import dense_target


def check_normalized(normalized, reduction: str, normalizer) -> bool:
    if not isinstance(normalized, bool):
        raise InputTypeError(f"`normalized` must be True or False; got {type(normalized).__name__} {normalized!r}")
    if normalized and (reduction != "mean" or normalizer is not None):
        raise InputValueError(f"`normalized=True` divides the sum by the modulators' sum in place of the mean's count: "
                              f"it takes reduction='mean' and no normalizer; got reduction={reduction!r}, "
                              f"normalizer={normalizer!r}")
    return normalized


def divided(total: Tensor, modulators: Tensor) -> Tensor:
    """The summed loss over the modulators' sum (an all-easy batch, whose sum is 0, gives 0)."""
    return (total / modulators.clamp_min(torch.finfo(modulators.dtype).tiny)).to(total.dtype)


def softmax_modulator_sum(logits: Tensor, target: Tensor, gamma: float, *, weight, ignore_index: int,
                          label_smoothing: float) -> Tensor:
    """``sum_c y_c w_c (1 - p_c)^gamma`` over the rows, ``y`` the (smoothed) target, ignored rows left out:
    what the softmax mean counts (``w_t`` per row), each count times its modulator."""
    dtype = compute_dtype(logits)
    with no_autocast(logits):
        x = logits.to(dtype)
        _, log1m = log_softmax_and_log1m(x)
        modulator = power(torch.exp(log1m), log1m, gamma)
        if _checks.is_index(target):
            valid = (target != ignore_index).unsqueeze(1)
            y = is_class(x, torch.where(target != ignore_index, target, torch.zeros_like(target))).to(dtype)
            y = (y * (1 - label_smoothing) + label_smoothing / x.shape[1]) * valid
        else:
            y = target.to(dtype) * (1 - label_smoothing) + label_smoothing / x.shape[1]
        if weight is not None:
            y = y * torch.as_tensor(weight, dtype=dtype, device=x.device).view((1, -1) + (1,) * (x.ndim - 2))
        return (y * modulator).sum()


def sigmoid_modulator_sum(logits: Tensor, target, gamma: float, *, ignore_index: int) -> Tensor:
    """``sum (1 - p_t)^gamma`` over the counted elements (every element of a float target; the non-ignored
    locations' elements of class labels), ``p_t`` of the target's side."""
    dtype = compute_dtype(logits)
    with no_autocast(logits):
        x = logits.to(dtype)
        y, valid, _ = dense_target(x, target, ignore_index, False, dtype)
        one_minus_pt, log1m = sigmoid_complement_of_target(sigmoid_probability(x), y)
        modulator = power(one_minus_pt, log1m, gamma)
        return (modulator if valid is None else modulator * valid).sum()
