"""The reference engine of the sigmoid family: targets, element weights, ignore mask, reduction.

Targets come in three forms:

* a float tensor the shape of ``logits``, values in [0, 1] (binary or soft);
* class indices ``(N, *)`` for ``logits (N, C, *)``, where the value ``C`` is background
  (every class negative) and ``ignore_index`` marks locations to skip, as detection heads produce;
* a pair ``(labels, scores)`` of such indices and a float ``(N, *)`` quality per location
  (QFL/VFL's detection form): the label's class gets the score, the others 0.

Mean: for float targets, the sum over elements divided by their number (as
``binary_cross_entropy_with_logits``); for index targets, the sum divided by the number
of non-ignored *locations* ``(N, *)``, never by the ``C`` one-hot slots. ``weight``
rescales elements and is not part of the count. ``reduction="none"`` returns the
per-element loss, shape ``(N, C, *)``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks
from ._numerics import compute_dtype, output_dtype
from ._reduce import reduce_loss

PerElement = Callable[[Tensor, Tensor], Tensor]


def _check_labels(logits: Tensor, labels: Tensor, ignore_index: int, validate) -> None:
    if logits.ndim < 2:
        raise ValueError(f"class-index targets need `logits` of shape (N, C, *); got {tuple(logits.shape)}")
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"`target` must have shape (N, *) = {expected} for class indices; got {tuple(labels.shape)}"
        )
    if _checks.should_validate(validate, labels):
        _checks.check_index_range(labels, logits.shape[1], ignore_index, allow_background=True)


def dense_target(logits: Tensor, target, ignore_index: int, validate, dtype: torch.dtype):
    """The target as floats the shape of ``logits``, the valid-location mask (or None) and the count."""
    scores = None
    if isinstance(target, tuple):
        if len(target) != 2:
            raise ValueError(f"a tuple `target` must be (labels, scores); got {len(target)} items")
        target, scores = target
        if not isinstance(scores, Tensor) or not scores.is_floating_point():
            raise TypeError("`target` scores must be a float tensor of shape (N, *)")
    if not isinstance(target, Tensor):
        raise TypeError(f"`target` must be a torch.Tensor; got {type(target).__name__}")
    if not _checks.is_index(target):
        if scores is not None:
            raise TypeError(f"`target` labels must be integer class indices; got dtype {target.dtype}")
        if not target.is_floating_point():
            raise TypeError(f"`target` must be float in [0, 1] or integer class indices; got dtype {target.dtype}")
        if target.shape != logits.shape:
            raise ValueError(f"`target` must have the shape of `logits` {tuple(logits.shape)}; got {tuple(target.shape)}")
        if _checks.should_validate(validate, target):
            _checks.check_unit_interval(target, "target")
        return target.to(dtype), None, target.numel()
    _check_labels(logits, target, ignore_index, validate)
    num_classes = logits.shape[1]
    valid = target != ignore_index
    labels = torch.where(valid, target, torch.full_like(target, num_classes)).long()
    y = F.one_hot(labels, num_classes + 1)[..., :num_classes].movedim(-1, 1).to(dtype)
    if scores is not None:
        if scores.shape != target.shape:
            raise ValueError(f"`target` scores must have the labels' shape {tuple(target.shape)}; got {tuple(scores.shape)}")
        if _checks.should_validate(validate, scores):
            _checks.check_unit_interval(scores, "target scores")
        y = y * scores.to(dtype).unsqueeze(1)
    return y, valid.unsqueeze(1), valid.sum().to(dtype)


def check_weight(weight, logits: Tensor, name: str = "weight"):
    """``weight`` must be None or a tensor that broadcasts to the shape of ``logits``."""
    if weight is None:
        return None
    if not isinstance(weight, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor or None; got {type(weight).__name__}")
    try:
        shape = torch.broadcast_shapes(weight.shape, logits.shape)
    except RuntimeError:
        shape = None
    if shape != logits.shape:
        raise ValueError(
            f"`{name}` must broadcast to the shape {tuple(logits.shape)}; got {tuple(weight.shape)}"
        )
    return weight


def sigmoid_loss(f: PerElement, logits: Tensor, target, *, weight=None, ignore_index: int = -100,
                 reduction: str = "mean", normalizer=None, validate: bool | None = None) -> Tensor:
    """Evaluate a sigmoid-family loss ``f(x, y)`` with the library's contract (module docstring)."""
    _checks.float_tensor(logits, "logits")
    _checks.check_reduction(reduction, normalizer)
    _checks.integer(ignore_index, "ignore_index", low=-(2**63))
    weight = check_weight(weight, logits)
    dtype, out_dtype = compute_dtype(logits), output_dtype(logits)
    with torch.autocast(logits.device.type, enabled=False):
        y, valid, count = dense_target(logits, target, ignore_index, validate, dtype)
        loss = f(logits.to(dtype), y)
        if valid is not None:
            loss = torch.where(valid, loss, torch.zeros_like(loss))
        if weight is not None:
            loss = loss * weight.to(dtype)
        return reduce_loss(loss, reduction, count, normalizer).to(out_dtype)
