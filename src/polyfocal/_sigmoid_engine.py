"""The sigmoid family's engine: targets, element weights, ignore mask, reduction, dispatch.

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

from typing import NamedTuple

import torch
from torch import Tensor

from . import _checks, _fused
from ._backend import engine_for
from ._errors import InputTypeError, InputValueError
from ._math import SigmoidMath
from ._numerics import compute_dtype, in_dtype, is_class, no_autocast, output_dtype, shared_like, sigmoid_probability
from ._reduce import reduce_loss, reduction_scale


class Target(NamedTuple):
    """A checked target: class ``labels`` ``(N, *)`` with optional float ``scores``, or (labels None) a
    float target ``y`` the shape of the logits; the mean's ``count``; and ``every_row``, whether the
    range check found every label a class or background (so, with ``ignore_index`` neither, no row
    is ignored and no mask is needed)."""

    labels: Tensor | None
    scores: Tensor | None
    y: Tensor | None
    count: Tensor | int
    every_row: bool = False


def _check_labels(logits: Tensor, labels: Tensor, ignore_index: int, validate) -> bool:
    if logits.ndim < 2:
        raise InputValueError(f"class-index targets need `logits` of shape (N, C, *); got {tuple(logits.shape)}")
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if labels.shape == logits.shape:
        raise InputTypeError(f"`target` of the logits' shape is a 0/1 or soft target, which must be a float tensor; "
                             f"got dtype {labels.dtype} (use target.float(); class indices have shape (N, *))")
    if tuple(labels.shape) != expected:
        raise InputValueError(
            f"`target` must have shape (N, *) = {expected} for class indices; got {tuple(labels.shape)}"
        )
    in_range = _checks.should_validate(validate, labels) and _checks.check_index_range(
        labels, logits.shape[1], ignore_index, allow_background=True)
    return in_range and not 0 <= ignore_index <= logits.shape[1]


def prepare_target(logits: Tensor, target, ignore_index: int, validate, dtype: torch.dtype) -> Target:
    """The target checked, in a :class:`Target`."""
    scores = None
    if isinstance(target, tuple):
        if len(target) != 2:
            raise InputValueError(f"a tuple `target` must be (labels, scores); got {len(target)} items")
        target, scores = target
        if not isinstance(scores, Tensor) or not scores.is_floating_point():
            raise InputTypeError("`target` scores must be a float tensor of shape (N, *)")
    if not isinstance(target, Tensor):
        raise InputTypeError(f"`target` must be a torch.Tensor; got {type(target).__name__}")
    if not _checks.is_index(target):
        if scores is not None:
            raise InputTypeError(f"`target` labels must be integer class indices; got dtype {target.dtype}")
        if not target.is_floating_point():
            raise InputTypeError(f"`target` must be float in [0, 1] or integer class indices; got dtype {target.dtype}")
        if target.shape != logits.shape:
            raise InputValueError(f"`target` must have the shape of `logits` {tuple(logits.shape)}; "
                                  f"got {tuple(target.shape)}")
        if _checks.should_validate(validate, target):
            _checks.check_unit_interval(target, "target")
        return Target(None, None, target.to(dtype), target.numel())
    every_row = _check_labels(logits, target, ignore_index, validate)
    if scores is not None:
        if scores.shape != target.shape:
            raise InputValueError(f"`target` scores must have the labels' shape {tuple(target.shape)}; "
                                  f"got {tuple(scores.shape)}")
        if _checks.should_validate(validate, scores):
            _checks.check_unit_interval(scores, "target scores")
        scores = scores.to(dtype)
    count = target.numel() if every_row else (target != ignore_index).sum()
    return Target(target, scores, None, count, every_row)


def dense_target(logits: Tensor, target, ignore_index: int, validate, dtype: torch.dtype):
    """The target as floats the shape of ``logits``, the valid-location mask (or None) and the count."""
    labels, scores, y, count, _ = prepare_target(logits, target, ignore_index, validate, dtype)
    if labels is None:
        return y, None, count
    y = is_class(logits, labels).to(dtype)
    return (y if scores is None else y * scores.unsqueeze(1)), (labels != ignore_index).unsqueeze(1), count


def element_inputs(x: Tensor, labels, scores, y, ignore_index: int | None, math: SigmoidMath, classes=None):
    """``(z, flipped, y, form, valid)``: the loss at every element is ``form(sigmoid(z), y)``
    where ``valid`` (None: everywhere), with ``z = x``, or ``z = -x`` where ``flipped`` for a hard target
    built from class labels (C = background; the target is built in place, never materialised).
    ``ignore_index`` None: no label is ignored."""
    if labels is None:
        return x, None, y, math.soft, None
    hot = is_class(x, labels, classes)
    valid = None if ignore_index is None else (labels != ignore_index).unsqueeze(1)
    if scores is None:
        return torch.where(hot, x, -x), ~hot, hot.to(x.dtype), math.binary, valid
    # ignored elements are evaluated at 0 (and then masked): the same loss, and in a compiled kernel
    # every element's math then follows the labels' indexing, so the compiler makes one loop of it
    z = x if valid is None else torch.where(valid, x, torch.zeros_like(x))
    return z, None, hot.to(x.dtype) * scores.unsqueeze(1), math.soft, valid


def _masked(loss: Tensor, valid, weight) -> Tensor:
    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros_like(loss))
    return loss if weight is None else loss * weight


def elements(x: Tensor, labels, scores, y, ignore_index: int, weight, math: SigmoidMath, **params) -> Tensor:
    """The loss at every element (the reference engine: autograd through all of it)."""
    z, _, y, form, valid = element_inputs(x, labels, scores, y, ignore_index, math)
    return _masked(form(sigmoid_probability(z), y, **params), valid, weight)


def elements_and_gradient(x: Tensor, scale: Tensor, labels, scores, y, ignore_index: int, weight,
                          math: SigmoidMath, classes: Tensor, **params) -> tuple[Tensor, Tensor]:
    """The loss at every element and the gradient of their sum times ``scale`` (the fused engine):
    autograd of ``form`` alone, carried to the logits by :func:`polyfocal._fused.log_sigmoid_slope`."""
    z, flipped, y, form, valid = element_inputs(x, labels, scores, y, ignore_index, math, classes)
    loss, slope = _fused.log_sigmoid_slope(lambda prob: _masked(form(prob, y, **params), valid, weight), z,
                                           scale.expand_as(z))
    return loss, slope if flipped is None else torch.where(flipped, -slope, slope)


def _hard_inputs(x: Tensor, labels, y, ignore_index: int | None, math: SigmoidMath):
    """:func:`element_inputs` for a hard target: class ``labels``, or (labels None) a float target ``y``
    that holds only 0 and 1, which takes the same binary form (no log of the target, no mixing)."""
    if labels is not None:
        return element_inputs(x, labels, None, None, ignore_index, math, _fused.class_indices(x.shape[1], x.device))
    hot = y.bool()
    return torch.where(hot, x, -x), ~hot, y, math.binary, None


def _eager_elements(math: SigmoidMath, params: dict, logits: Tensor, labels, y, ignore_index: int | None, weight, *,
                    dtype: torch.dtype, scale: Tensor, summed: bool, reference) -> Tensor:
    """A hard target (class labels without scores, or a float 0/1 target ``y``) on the eager engine:
    the binary form and its written-out slope in a few eager ops per element, the gradient saved (no
    autograd graph through the elements)."""
    gradient = logits.requires_grad and torch.is_grad_enabled()
    with torch.no_grad():
        z, flipped, y_hard, form, valid = _hard_inputs(in_dtype(logits, dtype), labels, y, ignore_index, math)
        prob = sigmoid_probability(z)
        if gradient and math.binary_and_slope is not None:
            loss, slope = math.binary_and_slope(prob, y_hard, **params)
        else:
            loss = form(prob, y_hard, **params)
            slope = math.binary_slope(prob, y_hard, **params) if gradient else None
        loss = _masked(loss, valid, weight)
        loss = loss.sum() * scale if summed else loss
        if not gradient:  # the values alone
            return loss
        slope = _masked(slope, valid, weight) * scale
        grad = in_dtype(torch.where(flipped, -slope, slope), logits.dtype)
    return _fused.with_saved_gradient(logits, loss, grad, reference)


def check_weight(weight, logits: Tensor, name: str = "weight"):
    """``weight`` must be None or a tensor that broadcasts to the shape of ``logits``."""
    if weight is None:
        return None
    if not isinstance(weight, Tensor):
        raise InputTypeError(f"`{name}` must be a torch.Tensor or None; got {type(weight).__name__}")
    try:
        shape = torch.broadcast_shapes(weight.shape, logits.shape)
    except RuntimeError:
        shape = None
    if shape != logits.shape:
        raise InputValueError(
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
    with no_autocast(logits):
        labels, scores, y, count, every_row = prepare_target(logits, target, ignore_index, validate, dtype)
        if every_row:  # no label is ignored: no mask on any engine
            ignore_index = None
        weight = None if weight is None else weight.to(dtype)
        scale = reduction_scale(reduction, count, normalizer, shared_like(dtype, logits.device))

        def reference(x: Tensor) -> Tensor:
            return reduce_loss(elements(x.to(dtype), labels, scores, y, ignore_index, weight, math, **params),
                               reduction, scale)

        # a float target read by the value check (CPU) may turn out to be 0/1 (a one-hot): the labels' engine
        read = labels is None and _checks.should_validate(validate, y)
        has_eager = (labels is not None and scores is None) or read
        engine = engine_for(backend, logits, (target, weight, params), eager="sigmoid" if has_eager else None)
        if engine not in ("eager", "reference"):
            try:
                shape = logits.shape
                args = (_fused.rows_3d(labels, shape), _fused.rows_3d(scores, shape), _fused.full_3d(y, logits),
                        ignore_index, _fused.full_3d(weight, logits), math,
                        None if labels is None else _fused.class_indices(shape[1], logits.device))
                params_3d = {k: _fused.full_3d(v, logits) for k, v in params.items()}
                return _fused.value_and_grad(elements_and_gradient, logits, args, params_3d, dtype=dtype, scale=scale,
                                             loss_shape=shape, summed=reduction != "none", reference=reference,
                                             with_gradient=True).to(out_dtype)
            except _fused.FusedUnavailable:  # compiling in the background, or unable to: the eager engine
                engine = "eager" if has_eager else "reference"
        if engine == "eager" and labels is None and not _checks.is_binary(y):
            engine = "reference"
        if engine == "eager":
            return _eager_elements(math, params, logits, labels, y, ignore_index, weight, dtype=dtype, scale=scale,
                                   summed=reduction != "none", reference=reference).to(out_dtype)
        return reference(logits).to(out_dtype)
