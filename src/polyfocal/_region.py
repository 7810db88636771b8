"""The region family's pieces (:mod:`polyfocal.region` declares the losses): a segmentation input checked
once, the per-class sums of a batch (each one pass over the pixels, with no loop over classes or images),
all-reduced across ranks for whole-batch sums, and the overlap terms made from them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import _checks, _compat, _math, _rows
from ._backend import check_backend, get_backend
from ._errors import InputTypeError, InputValueError
from ._numerics import Probability, compute_dtype, from_logs, log_softmax_and_log1m, safe_pow
from ._fused import with_saved_gradient
from ._region_sums import activate, position_blocks, reference_sums, written_out_sums

#: the size of the logits from which ``backend="auto"`` writes the region gradients out (:func:`written_out`)
WRITTEN_OUT_MIN_ELEMENTS = 1 << 22

#: how the logits become probabilities; None: the input already is probabilities (MONAI's default)
ACTIVATIONS = ("softmax", "sigmoid", None)


class Pixels(NamedTuple):
    """A checked segmentation input, its pixels flattened: ``(N, C, S)`` logits in the compute dtype (the
    probabilities themselves for ``activation=None``), and the target as ``(N, S)`` class indices (an ignored
    pixel's at 0; ``C``: none of the classes, sigmoid only) or ``(N, C, S)`` probabilities; ``keep`` ``(N, S)``
    is True at the counted pixels (None: every pixel counts)."""

    logits: Tensor
    labels: Tensor | None
    dense: Tensor | None
    keep: Tensor | None
    activation: str | None

    @property
    def probability(self) -> Tensor:
        """The ``(N, C, S)`` probabilities, computed anew at each use (a region loss keeps none)."""
        return activate(self.logits, self.activation)


class Sums(NamedTuple):
    """Per image and class ``(N, C)``, or per class ``(C,)`` for the whole batch: ``sum p y``, ``sum p``
    and ``sum y`` over the counted pixels (``sum p^2`` and ``sum y^2`` with ``squared``)."""

    overlap: Tensor
    predicted: Tensor
    actual: Tensor

    def classes(self, first: int) -> "Sums":
        """The sums of the classes from ``first`` on (``include_background=False``: from 1)."""
        return Sums(*(s[..., first:] for s in self))


def check_logits(logits, activation) -> Tensor:
    if activation not in ACTIVATIONS:
        raise InputValueError(f"`activation` must be one of {ACTIVATIONS}; got {activation!r}")
    _checks.float_tensor(logits, "logits")
    if logits.dim() < 3:
        raise InputValueError(f"`logits` must have shape (N, C, *spatial), at least one spatial dimension; "
                              f"got {tuple(logits.shape)}")
    if activation == "softmax" and logits.shape[1] < 2:
        raise InputValueError(f"`logits` must have C >= 2 channels for activation='softmax' (one channel: "
                              f"activation='sigmoid'); got shape {tuple(logits.shape)}")
    return logits


def pixels(logits: Tensor, target, activation, ignore_index: int, validate, keep: Tensor | None = None) -> Pixels:
    """Check ``logits (N, C, *spatial)`` and ``target`` (class indices ``(N, *spatial)`` or probabilities
    of the logits' shape) and flatten both; ``keep`` ``(N, *spatial)``: a caller's own mask of counted
    pixels (MONAI's ``ignore_index`` on one-hot targets)."""
    check_logits(logits, activation)
    _checks.integer(ignore_index, "ignore_index", low=-(2**63))
    if not isinstance(target, Tensor):
        raise InputTypeError(f"`target` must be a torch.Tensor; got {type(target).__name__}")
    n, c, spatial = logits.shape[0], logits.shape[1], tuple(logits.shape[2:])
    x = logits.to(compute_dtype(logits)).flatten(2)
    keep = None if keep is None else _mask(keep, (n, *spatial))
    if _checks.is_index(target):
        if tuple(target.shape) != (n, *spatial):
            raise InputValueError(f"`target` must have shape (N, *spatial) = {(n, *spatial)} for class indices, or "
                                  f"(N, C, *spatial) = {tuple(logits.shape)} for probabilities; "
                                  f"got {tuple(target.shape)}")
        labels = target.flatten(1)
        every = _checks.should_validate(validate, logits) and _checks.check_index_range(
            target, c, ignore_index, allow_background=activation != "softmax")
        if not every or 0 <= ignore_index <= c:
            counted = labels != ignore_index
            keep, labels = (counted if keep is None else keep & counted), labels.masked_fill(~counted, 0)
        return Pixels(x, labels, None, keep, activation)
    _checks.float_tensor(target, "target")
    if target.shape != logits.shape:
        raise InputValueError(f"`target` must have the shape of `logits` {tuple(logits.shape)} for probabilities "
                              f"(or (N, *spatial) = {(n, *spatial)} for class indices); got {tuple(target.shape)}")
    if _checks.should_validate(validate, target):
        _checks.check_unit_interval(target, "target")
    return Pixels(x, None, target.to(x.dtype).flatten(2), keep, activation)


def _mask(mask, shape: tuple) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise InputTypeError(f"`mask` must be a bool tensor; got {getattr(mask, 'dtype', type(mask).__name__)}")
    if tuple(mask.shape) != shape:
        raise InputValueError(f"`mask` must have shape (N, *spatial) = {shape}; got {tuple(mask.shape)}")
    return mask.flatten(1)


def written_out(backend: str | None, logits: Tensor | None) -> bool:
    """Whether the region sums take their written-out gradient, which holds no logits-sized tensor between
    forward and backward: with ``"auto"``, for ``logits`` of :data:`WRITTEN_OUT_MIN_ELEMENTS` or more, where
    memory counts and the two cost about the same time (below, autograd's is faster: 1.2-1.4x at 2M
    elements), or whatever their size for ``logits=None`` (the unified focal part's, faster everywhere);
    ``"reference"`` never (autograd), nor inside a ``torch.func`` transform (whose wrapped tensors its
    autograd Function cannot serve); every other engine always."""
    name = check_backend(backend if backend is not None else get_backend())
    small = logits is not None and logits.numel() < WRITTEN_OUT_MIN_ELEMENTS
    return name != "reference" and not (name == "auto" and small) and not _compat.in_functorch_transform()


def class_sums(pix: Pixels, *, squared: bool = False, batch: bool = False, distributed=None,
               written_out: bool = True) -> Sums:
    """The :class:`Sums` of every image and class, or (``batch``) of every class over the batch, all-reduced
    across ranks where a process group of 2+ ranks runs (``distributed=None``) or when asked. Their gradient
    is written out (:mod:`polyfocal._region_sums`) unless ``written_out`` is False, under ``torch.compile``
    (which fuses autograd's own), or where a probability target needs a gradient too."""
    dense_grad = pix.dense is not None and pix.dense.requires_grad
    sums_by = (written_out_sums if written_out and not dense_grad and not torch.compiler.is_compiling()
               else reference_sums)
    sums = Sums(*sums_by(pix.logits, pix.labels, pix.dense, pix.keep, pix.activation, squared))
    if not batch:
        return sums
    sums = Sums(*(s.sum(0) for s in sums))
    if not _checks.is_distributed(distributed):
        return sums
    # an all-reduce whose backward all-reduces the gradients: under DDP's average every rank's parameters
    # get the gradient of the loss of the whole batch's sums
    from torch.distributed.nn.functional import all_reduce

    return Sums(*all_reduce(torch.stack(sums)).unbind(0))


def ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, and 1 where the denominator is 0 (a class with no counted pixel and no
    smoothing: a loss of 0 with no gradient, never a NaN)."""
    empty = denominator == 0
    return torch.where(empty, 1.0, numerator / torch.where(empty, 1.0, denominator))


def dice_terms(sums: Sums, *, jaccard: bool, smooth_nr: float, smooth_dr: float) -> Tensor:
    """``1 - (2 tp + smooth_nr) / (sum p + sum y + smooth_dr)``; Jaccard's denominator is twice the union."""
    both = sums.predicted + sums.actual
    denominator = 2 * (both - sums.overlap) if jaccard else both
    return 1 - ratio(2 * sums.overlap + smooth_nr, denominator + smooth_dr)


def tversky_terms(sums: Sums, *, alpha, beta, smooth_nr: float, smooth_dr: float) -> Tensor:
    """``1 - TI``, ``TI = (tp + smooth_nr) / (tp + alpha fp + beta fn + smooth_dr)``: alpha weighs the false
    positives ``sum p - tp``, beta the false negatives ``sum y - tp`` (a number or a per-class vector each)."""
    false_positives, false_negatives = sums.predicted - sums.overlap, sums.actual - sums.overlap
    denominator = sums.overlap + alpha * false_positives + beta * false_negatives
    return 1 - ratio(sums.overlap + smooth_nr, denominator + smooth_dr)


def focal(terms: Tensor, exponent) -> Tensor:
    """``terms ** exponent`` (a number or per-class vector), 0 with a zero gradient at a perfect overlap,
    where the derivative of a power below 1 has no bound."""
    return safe_pow(terms.clamp_min(0), exponent)


def class_focal_terms(pix: Pixels, gammas: Tensor) -> Tensor:
    """``(N, C, S)``: each class's focal term ``-(1 - p_c)^gamma_c log p_c`` (polyfocal's focal math,
    :func:`polyfocal._math.poly_series`), ``gammas`` ``(C,)``: of the softmax, with an exact ``log(1 - p_c)``,
    or of the given probabilities (``activation=None``; the caller keeps them off 0 and 1)."""
    if pix.activation == "softmax":
        prob = from_logs(*log_softmax_and_log1m(pix.logits, 1))
    elif pix.activation is None:
        p = pix.probability
        prob = Probability(torch.log(p), torch.log1p(-p), p, 1 - p)
    else:
        raise InputValueError("the per-class focal terms are a softmax's (or given probabilities'); "
                              "got activation='sigmoid'")
    return _math.poly_series(prob, gamma=gammas.view(1, -1, 1))


def focal_at_labels(pix: Pixels, gammas: Tensor, weights: Tensor) -> Tensor:
    """``(N, S)``: ``w_t (1 - p_t)^gamma_t (-log p_t)`` at each pixel's label (0 where not counted), reading
    the label's class only: ``log p_t`` and an exact ``log(1 - p_t)`` from the log-sum-exp of all classes
    and of the others (one copy of the logits), or from given probabilities (``activation=None``)."""
    c = pix.logits.shape[1]
    index = pix.labels.clamp_max(c - 1)
    if pix.activation == "softmax":
        x, at = pix.logits, index.unsqueeze(1)
        total = x.logsumexp(1)
        prob = from_logs(x.gather(1, at).squeeze(1) - total, x.scatter(1, at, float("-inf")).logsumexp(1) - total)
    else:
        p = pix.probability.gather(1, index.unsqueeze(1)).squeeze(1)
        prob = Probability(torch.log(p), torch.log1p(-p), p, 1 - p)
    term = _math.poly_series(prob, gamma=gammas[index]) * weights[index] * (pix.labels < c)
    return term if pix.keep is None else term * pix.keep


def focal_sum_at_labels(pix: Pixels, gammas: Tensor, weights: Tensor, scale, written_out: bool) -> Tensor:
    """``scale`` times the sum of :func:`focal_at_labels`; for softmax logits with the written-out gradient of
    the softmax row engine (:func:`polyfocal._rows.eager_rows`), run on blocks of positions that write into
    the buffer that becomes the logits' gradient; :func:`focal_at_labels` by autograd is its reference."""
    def reference(x: Tensor) -> Tensor:
        return focal_at_labels(pix._replace(logits=x), gammas, weights).sum() * scale

    x = pix.logits
    if pix.activation != "softmax" or not written_out or torch.compiler.is_compiling():
        return reference(x)
    gradient = x.requires_grad and torch.is_grad_enabled()
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    total, grad = x.new_zeros(()), torch.empty_like(x) if gradient else None
    with torch.no_grad():
        for cols in position_blocks(x):
            labels = pix.labels[:, cols]
            factor = weights[labels] if pix.keep is None else weights[labels] * pix.keep[:, cols]
            rows, block_grad = _rows.eager_rows(_math.poly_series, {"gamma": gammas[labels]}, x[..., cols], labels,
                                                factor, x.dtype, scale, gradient)
            total += rows.sum()
            if gradient:
                grad[..., cols] = block_grad
    return with_saved_gradient(x, total * scale, grad, reference) if gradient else total * scale


def at_target(per_class: Tensor, pix: Pixels) -> Tensor:
    """``(N, S)``: a per-class ``(N, C, S)`` term at each pixel's label (0 where it has none), or its
    expectation over a probability target ``sum_c y_c term_c``; 0 at the pixels not counted."""
    if pix.labels is None:
        value = (per_class * pix.dense).sum(1)
    else:
        index = pix.labels.clamp_max(per_class.shape[1] - 1)
        value = per_class.gather(1, index.unsqueeze(1)).squeeze(1) * (pix.labels < per_class.shape[1])
    return value if pix.keep is None else value * pix.keep


def counted(pix: Pixels) -> Tensor | int:
    """The number of counted pixels (the per-pixel mean's denominator), at least 1 (a tensor of the logits'
    dtype where a mask counts them)."""
    if pix.keep is None:
        return max(pix.logits.shape[0] * pix.logits.shape[2], 1)
    return pix.keep.sum().clamp_min(1).to(pix.logits.dtype)


def reduce_terms(terms: Tensor, reduction: str) -> Tensor:
    """A region loss's ``(N, C)`` or ``(C,)`` terms reduced: their mean (0 for none), sum, or themselves."""
    if reduction == "none":
        return terms
    total = terms.sum()
    return total if reduction == "sum" else total / max(terms.numel(), 1)
