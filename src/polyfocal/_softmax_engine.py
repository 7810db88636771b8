"""The reference engine of the softmax family: targets, weights, ignore mask, reduction.

Every softmax loss is ``phi(log p_c, log(1 - p_c))`` of one class. For class-index
targets it is taken at the target class; for probability targets (and label
smoothing) it is the expectation over the target distribution,
``sum_c y_c phi(p_c)``, which for Poly-1 equals the paper's ``p_t = sum_c y_c p_c``.

Mean, as ``torch.nn.functional.cross_entropy``: for class indices, the sum divided
by the sum of ``weight[target]`` over non-ignored examples (their count when
``weight`` is None); for probabilities, the number of examples ``N * prod(*)``.
``alpha`` scales the loss per class but is not part of that count.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks
from ._numerics import compute_dtype, log_softmax_and_log1m, output_dtype
from ._reduce import reduce_loss

PerClass = Callable[[Tensor, Tensor], Tensor]


def check_logits(logits, name: str = "logits") -> int:
    _checks.float_tensor(logits, name)
    if logits.ndim < 2:
        raise ValueError(f"`{name}` must have shape (N, C, *); got {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"`{name}` must have C >= 2 classes along dim 1; got shape {tuple(logits.shape)}")
    return num_classes


def check_target(logits: Tensor, target, ignore_index: int, validate) -> bool:
    """Check a class-index or class-probability target; return True for indices."""
    if not isinstance(target, Tensor):
        raise TypeError(f"`target` must be a torch.Tensor; got {type(target).__name__}")
    if _checks.is_index(target):
        expected = (logits.shape[0],) + tuple(logits.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(
                f"`target` must have shape (N, *) = {expected} for class indices; got {tuple(target.shape)}"
            )
        if _checks.should_validate(validate, target):
            _checks.check_index_range(target, logits.shape[1], ignore_index)
        return True
    if not target.is_floating_point():
        raise TypeError(f"`target` must be integer class indices or float class probabilities; got {target.dtype}")
    if target.shape != logits.shape:
        raise ValueError(
            f"`target` must have shape (N, C, *) = {tuple(logits.shape)} for class probabilities; "
            f"got {tuple(target.shape)}"
        )
    if _checks.should_validate(validate, target):
        _checks.check_unit_interval(target, "target")
    return False


def class_factor(alpha, num_classes: int, like: Tensor):
    """``alpha`` as a number or a per-class tensor (None means 1)."""
    if alpha is None:
        return None
    if isinstance(alpha, Tensor) or isinstance(alpha, (list, tuple)):
        return _checks.class_vector(alpha, "alpha", num_classes, like)
    return _checks.number(alpha, "alpha", low=0.0)


def _per_class_view(vector, ndim: int):
    if not isinstance(vector, Tensor):
        return vector
    return vector.view((1, -1) + (1,) * (ndim - 2))


def _at(vector, index: Tensor):
    """A per-class factor at the target class (None or a number: the same for every class)."""
    if vector is None:
        return 1.0
    if not isinstance(vector, Tensor):
        return vector
    return vector[index]


def softmax_loss(phi: PerClass, logits: Tensor, target: Tensor, *, weight=None, alpha=None,
                 ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean",
                 normalizer=None, validate: bool | None = None, sample_weight: Tensor | None = None) -> Tensor:
    """Evaluate a softmax-family loss ``phi`` with the library's contract (see the module docstring)."""
    num_classes = check_logits(logits)
    _checks.check_reduction(reduction, normalizer)
    smoothing = _checks.number(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    _checks.integer(ignore_index, "ignore_index", low=-(2**63))
    index = check_target(logits, target, ignore_index, validate)

    dtype, out_dtype = compute_dtype(logits), output_dtype(logits)
    with torch.autocast(logits.device.type, enabled=False):
        x = logits.to(dtype)
        w = _checks.class_vector(weight, "weight", num_classes, x)
        a = class_factor(alpha, num_classes, x)
        logp, log1m = log_softmax_and_log1m(x)
        if index:
            valid = target != ignore_index
            t = torch.where(valid, target, torch.zeros_like(target)).long()
            count = valid.sum().to(dtype) if w is None else (w[t] * valid).sum()
            if smoothing == 0:
                loss = phi(logp.gather(1, t.unsqueeze(1)), log1m.gather(1, t.unsqueeze(1))).squeeze(1)
                loss = loss * _at(w, t) * _at(a, t)
            else:
                y = F.one_hot(t, num_classes).movedim(-1, 1).to(dtype) * (1 - smoothing) + smoothing / num_classes
                loss = _expectation(phi(logp, log1m), y, w, a)
            loss = torch.where(valid, loss, torch.zeros_like(loss))
        else:
            y = target.to(dtype)
            if smoothing:
                y = y * (1 - smoothing) + smoothing / num_classes
            loss = _expectation(phi(logp, log1m), y, w, a)
            count = loss.numel()
        if sample_weight is not None:
            loss = loss * sample_weight.to(dtype)
        return reduce_loss(loss, reduction, count, normalizer).to(out_dtype)


def _expectation(per_class: Tensor, y: Tensor, w, a) -> Tensor:
    factor = y
    for vector in (w, a):
        if vector is not None:
            factor = factor * _per_class_view(vector, y.ndim)
    return (factor * per_class).sum(1)
