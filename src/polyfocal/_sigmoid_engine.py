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
from . import _fused
from ._backend import wants_fused
from ._math import SigmoidMath
from ._numerics import compute_dtype, is_class, output_dtype
from ._reduce import reduce_loss, reduction_scale

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


def prepare_target(logits: Tensor, target, ignore_index: int, validate, dtype: torch.dtype):
    """``(labels, None, count)`` for class indices, else ``(None, (y, valid), count)`` with ``y``
    float the shape of ``logits`` and ``valid`` a location mask (or None)."""
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
        return None, (target.to(dtype), None), target.numel()
    _check_labels(logits, target, ignore_index, validate)
    valid = target != ignore_index
    if scores is None:
        return target, None, valid.sum()
    if scores.shape != target.shape:
        raise ValueError(f"`target` scores must have the labels' shape {tuple(target.shape)}; got {tuple(scores.shape)}")
    if _checks.should_validate(validate, scores):
        _checks.check_unit_interval(scores, "target scores")
    y = is_class(logits, target).to(dtype) * scores.to(dtype).unsqueeze(1)
    return None, (y, valid.unsqueeze(1)), valid.sum()


def dense_target(logits: Tensor, target, ignore_index: int, validate, dtype: torch.dtype):
    """The target as floats the shape of ``logits``, the valid-location mask (or None) and the count."""
    labels, dense, count = prepare_target(logits, target, ignore_index, validate, dtype)
    if labels is None:
        return (*dense, count)
    return is_class(logits, labels).to(dtype), (labels != ignore_index).unsqueeze(1), count


def index_elements(x: Tensor, labels: Tensor, ignore_index: int, weight, binary: Callable, **params) -> Tensor:
    """A loss's hard-target form at every element, from class labels (C = background)."""
    y = is_class(x, labels).to(x.dtype)
    z = torch.where(y > 0, x, -x)
    loss = binary(F.logsigmoid(z), F.logsigmoid(-z), y, **params)
    loss = torch.where((labels != ignore_index).unsqueeze(1), loss, torch.zeros_like(loss))
    return loss if weight is None else loss * weight


def soft_elements(x: Tensor, y: Tensor, valid, weight, soft: Callable, **params) -> Tensor:
    """A loss's soft-target form at every element."""
    loss = soft(x, y, **params)
    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros_like(loss))
    return loss if weight is None else loss * weight


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


def sigmoid_loss(math: SigmoidMath, params: dict, logits: Tensor, target, *, weight=None,
                 ignore_index: int = -100, reduction: str = "mean", normalizer=None,
                 validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Evaluate a sigmoid-family loss with the library's contract (module docstring)."""
    _checks.float_tensor(logits, "logits")
    _checks.check_reduction(reduction, normalizer)
    _checks.integer(ignore_index, "ignore_index", low=-(2**63))
    weight = check_weight(weight, logits)
    dtype, out_dtype = compute_dtype(logits), output_dtype(logits)
    with torch.autocast(logits.device.type, enabled=False):
        labels, dense, count = prepare_target(logits, target, ignore_index, validate, dtype)
        weight = None if weight is None else weight.to(dtype)
        if labels is not None:
            f, args = index_elements, (labels, ignore_index, weight, math.binary)
        else:
            f, args = soft_elements, (*dense, weight, math.soft)
        scale = reduction_scale(reduction, count, normalizer, torch.empty((), dtype=dtype, device=logits.device))
        if wants_fused(backend, logits):
            try:
                shape = logits.shape
                if labels is not None:
                    args = (_fused.rows_3d(labels, shape), ignore_index, _fused.full_3d(weight, shape), math.binary)
                else:
                    y, valid = dense
                    args = (_fused.full_3d(y, shape), _fused.full_3d(valid, shape), _fused.full_3d(weight, shape),
                            math.soft)
                params = {k: _fused.full_3d(v, shape) for k, v in params.items()}
                return _fused.value_and_grad(f, logits, args, params, dtype=dtype, scale=scale, loss_shape=shape,
                                             summed=reduction != "none").to(out_dtype)
            except _fused.FusedUnavailable:
                pass
        return reduce_loss(f(logits.to(dtype), *args, **params), reduction, scale).to(out_dtype)
