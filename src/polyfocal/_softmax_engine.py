"""The softmax family's engine: targets, weights, ignore mask, reduction, dispatch.

Every softmax loss is ``phi(p_c)`` of one class's probability (in log and linear space). For class-index
targets it is taken at the target class; for probability targets (and label
smoothing) it is the expectation over the target distribution,
``sum_c y_c phi(p_c)``, which for Poly-1 equals the paper's ``p_t = sum_c y_c p_c``.

Mean, as ``torch.nn.functional.cross_entropy``: for class indices, the sum divided
by the sum of ``weight[target]`` over non-ignored examples (their count when
``weight`` is None); for probabilities, the number of examples ``N * prod(*)``.
``alpha`` scales the loss per class but is not part of that count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _backend, _checks, _compat, _fused, _math, _rows
from ._backend import engine_for, get_backend
from ._errors import InputTypeError, InputValueError
from ._numerics import (Probability, class_sum, compute_dtype, from_logs, is_class, log_probability_below,
                        log_probability_below_target, log_softmax_and_log1m, no_autocast, optional_product,
                        output_dtype, shared_like)
from ._reduce import reduce_loss, reduction_scale

PerClass = Callable[[Probability], Tensor]


def check_logits(logits, name: str = "logits") -> int:
    _checks.float_tensor(logits, name)
    if logits.ndim < 2:
        raise InputValueError(f"`{name}` must have shape (N, C, *); got {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise InputValueError(f"`{name}` must have C >= 2 classes along dim 1; got shape {tuple(logits.shape)}")
    return num_classes


def check_target(logits: Tensor, target, ignore_index: int, validate) -> tuple[bool, bool]:
    """Check a class-index or class-probability target; return whether it holds indices, and whether
    the check found every index a class (so none is ignored where ``ignore_index`` is not one)."""
    if not isinstance(target, Tensor):
        raise InputTypeError(f"`target` must be a torch.Tensor; got {type(target).__name__}")
    if _checks.is_index(target):
        expected = (logits.shape[0],) + tuple(logits.shape[2:])
        if tuple(target.shape) != expected:
            raise InputValueError(
                f"`target` must have shape (N, *) = {expected} for class indices; got {tuple(target.shape)}"
            )
        in_range = _checks.should_validate(validate, target) and _checks.check_index_range(
            target, logits.shape[1], ignore_index)
        return True, in_range
    if not target.is_floating_point():
        raise InputTypeError(f"`target` must be integer class indices or float class probabilities; got {target.dtype}")
    if tuple(target.shape) == (logits.shape[0],) + tuple(logits.shape[2:]):
        raise InputTypeError(f"`target` of shape (N, *) holds class indices, which must be an integer tensor; "
                             f"got dtype {target.dtype} (use target.long())")
    if target.shape != logits.shape:
        raise InputValueError(
            f"`target` must have shape (N, C, *) = {tuple(logits.shape)} for class probabilities; "
            f"got {tuple(target.shape)}"
        )
    if _checks.should_validate(validate, target):
        _checks.check_unit_interval(target, "target")
    return False, False


def one_hot_as_indices(target: Tensor, index: bool, weight, validate) -> tuple[Tensor, bool]:
    """``(target, True)`` with an exactly one-hot probability target's class indices in its place
    (:func:`polyfocal._checks.one_hot_labels`): the same loss on the row engine, in less memory and time;
    else ``(target, False)``. Not with ``weight``, whose mean divides a probability target's loss by the
    rows and a class-index target's by the labels' weights (torch's rule for each)."""
    labels = None if index or weight is not None else _checks.one_hot_labels(target, validate)
    return (target, False) if labels is None else (labels, True)


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
        return None
    if not isinstance(vector, Tensor):
        return vector
    return vector[index]


# --- dense targets, built where they are used: inside a fused kernel, never materialised ----------

@dataclass(frozen=True)
class DenseTarget:
    """A target over every class: probabilities ``y``, or ``labels`` to smooth (label smoothing's
    ``(1 - s) onehot + s / C``), times the class factors ``w``, ``a`` and the per-row ``row_factor``.
    Kernels call :meth:`build`, so the ``(N, C)`` target is made where it is used."""

    y: Tensor | None
    labels: Tensor | None
    smoothing: float
    w: Tensor | None
    a: object
    row_factor: Tensor | None

    def build(self, x: Tensor, classes: Tensor | None = None) -> Tensor:
        y = self.y if self.labels is None else is_class(x, self.labels, classes).to(x.dtype)
        if self.smoothing:
            y = y * (1 - self.smoothing) + self.smoothing / y.shape[1]
        for vector in (self.w, self.a):
            if vector is not None:
                y = y * _per_class_view(vector, y.ndim)
        return y if self.row_factor is None else y * self.row_factor.unsqueeze(1)

    def in_3d(self, logits: Tensor) -> "DenseTarget":
        """The same target on the fused engine's ``(N, C, L)`` view of ``logits``."""
        shape = logits.shape
        return replace(self, y=_fused.full_3d(self.y, logits), labels=_fused.rows_3d(self.labels, shape),
                       row_factor=_fused.rows_3d(self.row_factor, shape))


def soft_rows(x: Tensor, target: DenseTarget, phi: PerClass, classes=None, **params) -> Tensor:
    """``sum_c y_c phi(p_c)`` per row, with ``y = target.build(x)`` (class factors included)."""
    y = target.build(x, classes)
    logp, log1m = log_softmax_and_log1m(x)
    if phi in _math.READS_BELOW:
        params = {**params, "log_below": log_probability_below(x, logp)}
    return class_sum(y * phi(from_logs(logp, log1m), **params))


def index_rows(x: Tensor, t: Tensor, factor, phi: PerClass, **params) -> Tensor:
    """``factor * phi(p_t)`` per row, at the target class ``t`` (``factor`` None: 1)."""
    all_logp, all_log1m = log_softmax_and_log1m(x)
    if phi in _math.READS_BELOW:
        params = {**params, "log_below": log_probability_below_target(x, all_logp, t)}
    logp, log1m = (v.gather(1, t.unsqueeze(1)).squeeze(1) for v in (all_logp, all_log1m))
    rows = phi(from_logs(logp, log1m), **params)
    return rows if factor is None else rows * factor


def _is_torch_cross_entropy(phi: PerClass, params: dict, logits: Tensor, alpha, row_weight) -> bool:
    """Plain (weighted, label-smoothed) cross-entropy on class indices: ``F.cross_entropy``, torch's
    own fused kernel, is the exact eager engine for ``(N, C)`` rows (its sum, times the contract's
    scale); not for ``(N, C, *)``, whose softmax along an inner dimension torch sums sequentially
    in fp32 (16x its rows' gradient error with label smoothing at C = 1,000)."""
    return (phi is _math.poly_series and not params and alpha is None and row_weight is None
            and logits.dtype == compute_dtype(logits) and logits.ndim == 2)


def _uses_torch_kernel(engine: str, backend, logits: Tensor) -> bool:
    """Plain CE is torch's own kernel where "auto" takes the eager engine; on CUDA where it takes the row
    kernels too (on an H200 they ran at 0.84x of F.cross_entropy's speed at 16384 x 32768, and 1/8 of it
    at 1024 x 1000); and for the values alone, where the fused kernel's gradient is work thrown away."""
    values_only = not (logits.requires_grad and torch.is_grad_enabled())
    return engine == "eager" or ((backend or get_backend()) == "auto" and (engine == "triton" or values_only))


def _torch_cross_entropy(logits: Tensor, target: Tensor, w, ignore_index: int, smoothing: float, reduction: str,
                         normalizer, every_row: bool) -> Tensor:
    if every_row and w is None and reduction == "mean" and normalizer is None:  # its count is N * prod(*) > 0
        return F.cross_entropy(logits, target, ignore_index=ignore_index, label_smoothing=smoothing)
    summed = reduction != "none"
    loss = F.cross_entropy(logits, target, w, ignore_index=ignore_index, label_smoothing=smoothing,
                           reduction="sum" if summed else "none")
    if reduction != "mean":
        return loss
    if normalizer is not None:
        return loss * reduction_scale(reduction, None, normalizer, loss)
    valid = target != ignore_index  # torch's own count; but an all-ignored batch gives 0, not 0 / 0
    if w is None:
        return loss / valid.sum().clamp(min=1)
    return loss * reduction_scale(reduction, _count(valid, target.masked_fill(~valid, 0), w), None, loss)


def _count(valid: Tensor, labels: Tensor, w) -> Tensor:
    """The mean's count of class-index targets: the non-ignored rows, weighted by ``w`` at their
    ``labels`` (ignored rows at any in-range label)."""
    return valid.sum() if w is None else (w[labels] * valid).sum()


def _index_target(target: Tensor, ignore_index: int, w, a, row_weight, smoothing: float, dtype: torch.dtype,
                  every_row: bool = False):
    """Class indices: ``(t, row_factor, count, dense)`` with ``t`` the labels (ignored ones at 0),
    the rows' factor (0 where ignored; None where it is 1 on every row, which ``every_row``, known
    to hold no ignored row, allows), the mean's count and, with label smoothing, the dense target
    (None without)."""
    if every_row:  # no mask to build: the count is the number of rows (an int) or their weights' sum
        t, mask = target.long(), None
        count = t.numel() if w is None else w[t].sum()
    else:
        valid = target != ignore_index
        t, mask = torch.where(valid, target, 0).long(), valid.to(dtype)
        count = _count(valid, t, w)
    row_factor = optional_product(mask, _at(w, t), _at(a, t), row_weight)
    dense = None
    if smoothing:  # the class factors apply per class of the smoothed target, not at t
        dense = DenseTarget(None, t, smoothing, w, a, optional_product(mask, row_weight))
    return t, row_factor, count, dense


def _default_call(logits, target, ignore_index, options: tuple) -> bool:
    """Whether a call is the commonest one, on which the contract's checks reduce to O(1) host work: ``(N, C)``
    fp32 or fp64 logits on CPU, int64 class indices ``(N,)``, the mean, every other option at its default
    (``options`` all None), ``"auto"``, outside autocast, ``torch.compile`` and ``torch.func``. Anything else, a wrong input
    too, takes the full contract, which words the errors."""
    return (type(logits) is Tensor and type(target) is Tensor and logits.is_cpu and logits.ndim == 2
            and logits.dtype in _DEFAULT_DTYPES and target.dtype == torch.int64 and target.ndim == 1
            and type(ignore_index) is int and all(v is None for v in options) and logits.shape[1] >= 2
            and get_backend() == "auto" and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and not _compat.in_functorch_transform())


_DEFAULT_DTYPES = (torch.float32, torch.float64)


def _plain_torch_cross_entropy(logits, target, ignore_index) -> Tensor | None:
    """Plain cross-entropy on a :func:`_default_call` where ``"auto"`` takes torch's own kernel:
    ``F.cross_entropy`` and one read of its value, which is the whole contract there (torch's kernel checks
    every label on CPU; its mean is the contract's but for an all-ignored batch, which reads NaN). The full
    contract's host work cost 1.7x ``F.cross_entropy``'s time at 32 x 10 (forward and backward, one
    thread), this 1.15x. None where the full contract must run: torch's error (the contract words its own)
    or a NaN (0 where every label is ignored)."""
    if (logits.requires_grad and torch.is_grad_enabled()
            and logits.numel() >= _backend.EAGER_MAX_ELEMENTS["cross_entropy"]):
        return None
    try:
        loss = F.cross_entropy(logits, target, ignore_index=ignore_index)
        value = loss.item()
    except (IndexError, ValueError, RuntimeError):  # a label out of range, a shape; .item() under vmap
        return None
    return loss if value == value else None


def _default_rows(phi: PerClass, params: dict, logits: Tensor, target: Tensor, ignore_index: int) -> Tensor | None:
    """A loss of ``p_t`` on a :func:`_default_call` below the row engine's crossover: the eager row engine, whose
    first op on the labels (a ``scatter`` along the classes) checks on the CPU that every one is a class, so that
    no row is ignored and the count is N (the index check's own pass and two reads cost as much as three ops of
    the kernel). None where the full contract must run (a label out of range, which it words; a parameter that
    needs a gradient)."""
    num_rows, num_classes = logits.shape
    if (phi in _math.READS_BELOW or target.shape[0] != num_rows or not num_rows or 0 <= ignore_index < num_classes
            or logits.numel() >= _backend.EAGER_MAX_ELEMENTS["softmax"] or _backend.requires_grad((params,))):
        return None
    scale = reduction_scale("mean", num_rows, None, logits)
    reference = partial(_reference, phi=phi, params=params, dtype=logits.dtype, rows=RowTarget(target, None, None),
                        reduction="mean", scale=scale)
    try:
        return _rows.softmax_rows(_rows.eager_rows, phi, params, logits, target, None, dtype=logits.dtype, scale=scale,
                                  summed=True, reference=reference)
    except RuntimeError:  # "index -100 is out of bounds for dimension 1": an ignored or a wrong label
        return None


def _reference(x: Tensor, *, phi: PerClass, params: dict, dtype: torch.dtype, rows: "RowTarget", reduction: str,
               scale: Tensor) -> Tensor:
    """The loss by autograd through the math (the reference engine; second derivatives of the others)."""
    x = x.to(dtype)
    if rows.dense is None:
        per_row = index_rows(x, rows.t, rows.factor, phi, **params)
    else:
        per_row = soft_rows(x, rows.dense, phi, **params)
    return reduce_loss(per_row, reduction, scale)


def _is_zero(value) -> bool:
    """``value`` is the number 0 (not a bool or a tensor equal to it, which the contract's checks refuse)."""
    return type(value) in (float, int) and value == 0


def softmax_loss(phi: PerClass, params: dict, logits: Tensor, target: Tensor, *, weight=None, alpha=None,
                 ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean",
                 normalizer=None, validate: bool | None = None, sample_weight: Tensor | None = None,
                 backend: str | None = None) -> Tensor:
    """Evaluate the softmax-family loss ``phi(**params)`` with the library's contract (module docstring)."""
    if reduction == "mean" and _is_zero(label_smoothing) and _default_call(
            logits, target, ignore_index, (weight, alpha, normalizer, validate, sample_weight, backend)):
        plain = phi is _math.poly_series and not params
        loss = (_plain_torch_cross_entropy(logits, target, ignore_index) if plain
                else _default_rows(phi, params, logits, target, ignore_index))
        if loss is not None:
            return loss
    num_classes = check_logits(logits)
    _checks.check_reduction(reduction, normalizer)
    smoothing = _checks.number(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    _checks.integer(ignore_index, "ignore_index", low=-(2**63))
    index, in_range = check_target(logits, target, ignore_index, validate)
    target, one_hot = one_hot_as_indices(target, index, weight, validate)
    if one_hot:
        index, in_range, ignore_index = True, True, -1  # argmax's labels: no row is ignored
    every_row = in_range and not 0 <= ignore_index < num_classes  # no row is ignored

    dtype, out_dtype = compute_dtype(logits), output_dtype(logits)
    with no_autocast(logits):
        like = shared_like(dtype, logits.device)
        w = _checks.class_vector(weight, "weight", num_classes, like)
        a = class_factor(alpha, num_classes, like)
        # (logits given up to the row kernel take it: torch's kernel would hold its own buffers beside them)
        plain = (index and _is_torch_cross_entropy(phi, params, logits, a, sample_weight)
                 and not _rows.is_given_up(logits))
        engine = engine_for(backend, logits, (target, weight, alpha, sample_weight, params),
                            eager="cross_entropy" if plain else "softmax" if index else None)
        if plain and _uses_torch_kernel(engine, backend, logits):
            return _torch_cross_entropy(logits, target, w, ignore_index, smoothing, reduction, normalizer, every_row)
        row_weight = None if sample_weight is None else sample_weight.to(dtype).expand(_rows_shape(logits))
        if index:
            # unmasked on the eager engine only: a compiled kernel would specialise on a number-valued factor
            t, row_factor, count, dense = _index_target(target, ignore_index, w, a, row_weight, smoothing, dtype,
                                                        every_row and engine == "eager")
        else:
            t = row_factor = None
            count = target.numel() // num_classes
            dense = DenseTarget(target.to(dtype), None, smoothing, w, a, row_weight)
        scale = reduction_scale(reduction, count, normalizer, like)
        by_index = index and not smoothing
        rows = RowTarget(t, row_factor, dense)
        reference = partial(_reference, phi=phi, params=params, dtype=dtype, rows=rows, reduction=reduction,
                            scale=scale)

        # the one decision: which kernel computes this call; the eager one while the fused one compiles
        # in the background or where it cannot run
        for path in (_path(engine, phi, by_index), _path("eager", phi, by_index)):
            if path is None:
                break
            try:
                return path(phi, params, logits, rows, dtype=dtype, scale=scale, summed=reduction != "none",
                            reference=reference).to(out_dtype)
            except _fused.FusedUnavailable:
                continue
        return reference(logits).to(out_dtype)


class RowTarget(NamedTuple):
    """The target per row of ``(N, C, *)`` logits: class indices ``t`` with their factor, and (label
    smoothing, probabilities) the ``dense`` target."""

    t: Tensor | None
    factor: Tensor | float | None
    dense: DenseTarget | None


def _path(engine: str, phi: PerClass, by_index: bool) -> Callable | None:
    """The kernel that computes a call, given its engine (None: the reference, autograd through the math).

    Class indices take the row engine's kernel of that engine (a loss of ``p_t`` alone); a loss that reads
    more of the row (:data:`polyfocal._math.READS_BELOW`) compiled autograd of the reference rows; dense
    targets the compiled soft rows. The eager engine has the row form only."""
    if engine == "reference" or (engine == "eager" and (not by_index or phi in _math.READS_BELOW)):
        return None
    if phi in _math.READS_BELOW:
        return _wide_rows
    return _ROW_PATHS[engine] if by_index else _fused_soft_rows


def _row_path(kernel: Callable, phi: PerClass, params: dict, logits: Tensor, rows: RowTarget, **kwargs) -> Tensor:
    return _rows.softmax_rows(kernel, phi, params, logits, rows.t, rows.factor, **kwargs)


_ROW_PATHS = {engine: partial(_row_path, kernel) for engine, kernel in _rows.ROW_KERNELS.items()}


def _rows_shape(logits: Tensor) -> tuple[int, ...]:
    return (logits.shape[0],) + tuple(logits.shape[2:])


def _wide_rows(phi: PerClass, params: dict, logits: Tensor, rows: RowTarget, **kwargs) -> Tensor:
    """A function that reads the whole row (:data:`polyfocal._math.READS_BELOW`) on the fused engine:
    compiled autograd of the reference's own rows, on the 3-d view."""
    if rows.dense is None:
        shape = logits.shape
        f, args = index_rows, (_fused.rows_3d(rows.t, shape), _fused.rows_3d(rows.factor, shape), phi)
    else:
        f, args = soft_rows, _soft_args(logits, rows.dense, phi)
    return _fused.value_and_grad(f, logits, args, params, loss_shape=_rows_shape(logits), **kwargs)


def _soft_args(logits: Tensor, dense: DenseTarget, phi: PerClass) -> tuple:
    """:func:`soft_rows`' arguments after the logits, on the 3-d view of the fused engine."""
    return dense.in_3d(logits), phi, _fused.class_indices(logits.shape[1], logits.device)


def _fused_soft_rows(phi: PerClass, params: dict, logits: Tensor, rows: RowTarget, **kwargs) -> Tensor:
    """Dense targets on the fused engine: the written-out gradient of
    :func:`polyfocal._rows.soft_rows_and_gradient`, or autograd for a function of ``log p`` alone."""
    args, kwargs = _soft_args(logits, rows.dense, phi), dict(kwargs, loss_shape=_rows_shape(logits))
    read = _rows.parts_read(phi, params)
    if not any(read[1:]):
        return _fused.value_and_grad(soft_rows, logits, args, params, **kwargs)
    return _fused.value_and_grad(_rows.soft_rows_and_gradient, logits, (*args, read), params,
                                 with_gradient=True, **kwargs)
