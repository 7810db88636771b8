"""Input checks shared by every loss.

Shape, dtype and hyperparameter checks are free (no device work) and always run.
Checks of tensor *values* (class indices in range, targets inside [0, 1]) need a
host-device sync, so they run only when ``validate`` asks for them: ``None``
(the default) checks on CPU tensors outside ``torch.compile`` and ``torch.func`` transforms; ``True`` always
checks; ``False`` never does.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from . import _compat
from ._errors import InputTypeError, InputValueError

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str, normalizer) -> None:
    if reduction not in REDUCTIONS:
        raise InputValueError(f"`reduction` must be one of {REDUCTIONS}; got {reduction!r}")
    if normalizer is None:
        return
    if reduction != "mean":
        raise InputValueError(
            f"`normalizer` replaces the denominator of reduction='mean'; got reduction={reduction!r}"
        )
    if isinstance(normalizer, Tensor):
        if normalizer.numel() != 1:
            raise InputValueError(f"`normalizer` must be a scalar tensor; got shape {tuple(normalizer.shape)}")
        return
    number(normalizer, "normalizer", low=0.0, low_open=True)


def number(value, name: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """Check a real hyperparameter: finite and inside the given bounds."""
    # float and int first: the abstract Real check costs a microsecond on every call
    if type(value) not in (float, int) and (isinstance(value, bool) or not isinstance(value, Real)):
        raise InputTypeError(f"`{name}` must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputValueError(f"`{name}` must be finite; got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        off = " (None turns it off)" if name == "alpha" else ""
        raise InputValueError(f"`{name}` must be in {left}{lo}, {hi}{right}{off}; got {value}")
    return value


def integer(value, name: str, *, low: int) -> int:
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, Integral)):
        raise InputTypeError(f"`{name}` must be an int; got {type(value).__name__} {value!r}")
    if value < low:
        raise InputValueError(f"`{name}` must be >= {low}; got {value}")
    return int(value)


def numbers(values: Sequence, name: str) -> tuple[float, ...]:
    """A non-empty sequence of finite reals (polynomial coefficients)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InputTypeError(f"`{name}` must be a sequence of numbers; got {type(values).__name__}")
    if len(values) == 0:
        raise InputValueError(f"`{name}` must hold at least one number; got an empty sequence")
    return tuple(number(v, f"{name}[{i}]") for i, v in enumerate(values))


def float_tensor(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputTypeError(f"`{name}` must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputTypeError(f"`{name}` must be a floating-point tensor; got dtype {x.dtype}")
    return x


def is_index(target: Tensor) -> bool:
    return not target.is_floating_point() and not target.is_complex() and target.dtype != torch.bool


def class_vector(value, name: str, num_classes: int, like: Tensor) -> Tensor | None:
    """A per-class vector of shape (C,) as a tensor on `like`'s device, or None."""
    if value is None:
        return None
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value, dtype=like.dtype)
    if value.shape != (num_classes,):
        raise InputValueError(f"`{name}` must have shape (C,) = ({num_classes},); got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise InputTypeError(f"`{name}` must be a floating-point tensor; got dtype {value.dtype}")
    return value.to(device=like.device, dtype=like.dtype)


def is_distributed(distributed: bool | None) -> bool:
    """Whether to all-reduce (or gather) across ranks: as given, or (``None``) when a process group of
    2+ ranks exists."""
    if distributed is not None:
        return bool(distributed)
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def should_validate(validate: bool | None, x: Tensor) -> bool:
    if validate is not None:
        return bool(validate)
    if torch.compiler.is_compiling() or _compat.in_functorch_transform():  # no host reads of traced values
        return False
    return x.device.type == "cpu"


def check_index_range(target: Tensor, num_classes: int, ignore_index: int, name: str = "target",
                      allow_background: bool = False) -> bool:
    """Class indices in [0, C) (or [0, C] with a background class C), or ignore_index. Returns whether
    the check found every index in range (the common case, from one pass), so that none is ignored
    when ``ignore_index`` lies outside the range: a caller may then skip the ignore mask."""
    high = num_classes + 1 if allow_background else num_classes
    if target.numel():
        low_high = torch.aminmax(target)  # the common case in one pass
        if int(low_high.min) >= 0 and int(low_high.max) < high:
            return True
    bad = ((target < 0) | (target >= high)) & (target != ignore_index)
    if bool(bad.any()):
        value = int(target[bad][0])
        allowed = f"[0, {high - 1}]" + (f" (C={num_classes} is background)" if allow_background else "")
        raise InputValueError(
            f"`{name}` holds class index {value}, outside {allowed} and not ignore_index={ignore_index}"
        )
    return False


def one_hot_labels(target: Tensor, validate: bool | None) -> Tensor | None:
    """The class indices ``(N, *)`` of a probability target ``(N, C, *)`` in [0, 1] (checked by the caller)
    that is exactly one-hot (in every row one 1 and ``C - 1`` zeros), or None. Read on the host, so only where
    value checks run (:func:`should_validate`) and for a target that needs no gradient: a loss may then take
    its class-index path, which gives the same loss (the other classes' terms are 0) in less memory and time."""
    if target.requires_grad or target.numel() == 0 or not should_validate(validate, target):
        return None
    # the caller's value check has read the target in [0, 1] under the same condition. No 1 anywhere (a soft,
    # smoothed or mixed target) ends it in one pass; binary, the rows' sums count their ones exactly
    if float(target.amax()) != 1 or not is_binary(target) or not bool((target.sum(1) == 1).all()):
        return None
    return _index_of_one(target)


def _index_of_one(one_hot: Tensor) -> Tensor:
    """The class of each row's 1, as a product with ``arange(C)`` over the class dimension in place (torch's
    ``argmax`` along an inner dimension is 70x slower), in a dtype that holds every class index exactly."""
    n, c = one_hot.shape[:2]
    dtype = torch.promote_types(one_hot.dtype, torch.float32)
    classes, values = torch.arange(c, dtype=dtype, device=one_hot.device), one_hot.to(dtype)
    if values.stride(1) == 1:  # classes last in memory, as (N, C) rows or a permuted F.one_hot
        return (values.movedim(1, -1) @ classes).long()
    return (classes @ values.reshape(n, c, -1)).reshape((n,) + one_hot.shape[2:]).long()


def is_binary(values: Tensor) -> bool:
    """Whether every value is 0 or 1 (read on the host: for values a check already read in [0, 1]): none has a
    fraction (a tiny one keeps it, where a sum would round it away; 3x faster than comparing with ``round``)."""
    return values.numel() == 0 or float(values.detach().frac().abs_().amax()) == 0


def check_unit_interval(values: Tensor, name: str) -> None:
    values = values.detach()  # a soft target may require a gradient (distillation); its values are what is checked
    if values.numel():
        low_high = torch.aminmax(values)  # one pass in the common case (NaN fails both compares)
        if float(low_high.min) >= 0 and float(low_high.max) <= 1:
            return
    bad = ~((values >= 0) & (values <= 1))
    if bool(bad.any()):
        value = float(values[bad][0])
        raise InputValueError(f"`{name}` must lie in [0, 1]; got a value {value}")
