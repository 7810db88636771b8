"""The region family's per-class sums over the pixels, and their gradient written out.

Autograd would keep the probabilities for backward and build the gradient in probability space before the
softmax's backward: two more logits-sized buffers. The written-out backward recomputes the activation in the
buffer that becomes the logits' gradient, and finishes it in place block by block of positions (each block's
temporaries a small share of the logits), so that a region loss holds no logits-sized tensor from its forward
to its backward. Where a second derivative is asked for, backward differentiates the same sums by autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: a block of positions holds about this share of the logits (and at least ``_MIN_BLOCK`` elements)
_BLOCKS = 8
_MIN_BLOCK = 1 << 18


def activate(x: Tensor, activation: str | None) -> Tensor:
    """The probabilities of ``(N, C, S)`` logits (``x`` itself for ``activation=None``: probabilities in)."""
    if activation == "softmax":
        return x.softmax(1)
    return x.sigmoid() if activation == "sigmoid" else x


def sums_of(p: Tensor, labels: Tensor | None, dense: Tensor | None, keep: Tensor | None, squared: bool,
            activation: str | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per image and class ``(N, C)``: ``sum p y``, ``sum p`` and ``sum y`` over the counted pixels (``keep``
    True; ``sum p^2`` and ``sum y^2`` with ``squared``), for ``labels`` ``(N, S)``, class indices (``C``: none
    of the classes, but for a softmax), or ``dense`` ``(N, C, S)`` probabilities."""
    kept = None if keep is None else keep.to(p.dtype)
    power = p * p if squared else p
    predicted = power.sum(-1) if kept is None else _position_dot(power, kept.unsqueeze(1))
    if labels is None:
        y = dense if kept is None else dense * kept.unsqueeze(1)
        return _position_dot(p, y), predicted, (y * y if squared else y).sum(-1)
    c = p.shape[1]
    if activation != "softmax":
        hit = labels < c
        kept, labels = (hit if keep is None else hit & keep).to(p.dtype), labels.clamp_max(c - 1)
    at_label = p.gather(1, labels.unsqueeze(1)).squeeze(1)
    flat = _flat_classes(labels, c)
    if kept is None:
        return _per_class(at_label, flat, p), predicted, _per_class(None, flat, p)
    return _per_class(at_label * kept, flat, p), predicted, _per_class(kept, flat, p)


def _position_dot(values: Tensor, weights: Tensor) -> Tensor:
    """``(N, C)``: ``sum_s values * weights`` for ``(N, C, S)`` values and ``(N, C, S)`` or ``(N, 1, S)``
    weights, a block of positions at a time (:func:`position_blocks`: the product's temporary a share of the
    logits' size; torch's ``bmm``/``einsum`` as one-column products took 9x longer at ``(2, 4, 96^3)``); in one
    product where autograd records it (its backward of a block would fill a logits-sized gradient each)."""
    if torch.is_grad_enabled() and (values.requires_grad or weights.requires_grad):
        return (values * weights).sum(-1)
    total = values.new_zeros(values.shape[:2])
    for cols in position_blocks(values):
        total = total + (values[..., cols] * weights[..., cols]).sum(-1)
    return total


def _flat_classes(labels: Tensor, c: int) -> Tensor:
    """Each pixel's image and class as one index ``n C + label`` into the ``N C`` sums, flattened."""
    return (labels + torch.arange(0, labels.shape[0] * c, c, device=labels.device).unsqueeze(1)).reshape(-1)


def _per_class(values: Tensor | None, flat: Tensor, like: Tensor) -> Tensor:
    """``(N, C)``: the sums of ``values`` ``(N, S)`` (1 each for None) over each image's pixels of each class."""
    n = like.shape[0]
    source = like.new_ones(()).expand(flat.shape) if values is None else values.reshape(-1)
    return like.new_zeros(n * like.shape[1]).index_add(0, flat, source).view(n, like.shape[1])


def reference_sums(x: Tensor, labels, dense, keep, activation, squared: bool) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`sums_of` of the activated logits by autograd (the written-out backward's reference)."""
    return sums_of(activate(x, activation), labels, dense, keep, squared, activation)


class _WrittenOutSums(torch.autograd.Function):
    """:func:`sums_of` of ``activate(x)``, differentiated in ``x`` by :func:`sums_gradient`."""

    @staticmethod
    def forward(ctx, x: Tensor, labels, dense, keep, activation, squared: bool):
        sums = sums_of(activate(x, activation), labels, dense, keep, squared, activation)  # the probabilities freed
        ctx.save_for_backward(x, labels, dense, keep)
        ctx.activation, ctx.squared = activation, squared
        ctx.mark_non_differentiable(sums[2])
        return sums

    @staticmethod
    def backward(ctx, d_overlap: Tensor, d_predicted: Tensor, _):
        x, labels, dense, keep = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the same sums by autograd, differentiable again
            overlap, predicted, _ = reference_sums(x, labels, dense, keep, ctx.activation, ctx.squared)
            (grad,) = torch.autograd.grad((overlap, predicted), x, (d_overlap, d_predicted), create_graph=True)
        else:
            grad = sums_gradient(x, labels, dense, keep, ctx.activation, ctx.squared, d_overlap, d_predicted)
        return grad, None, None, None, None, None


def written_out_sums(x: Tensor, labels, dense, keep, activation, squared: bool) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`sums_of` of ``activate(x)`` (``(N, C, S)`` logits), with the written-out gradient."""
    return _WrittenOutSums.apply(x, labels, dense, keep, activation, squared)


def _at(values: Tensor | None, cols: slice) -> Tensor | None:
    """A block of positions of ``(N, S)`` or ``(N, C, S)`` values (None stays None)."""
    return None if values is None else values[..., cols]


def _probability_gradient(p: Tensor, labels, dense, keep, squared: bool, d_overlap: Tensor,
                          d_predicted: Tensor) -> Tensor:
    """A block's ``d L / d p`` ``(N, C, B)``: ``d_predicted`` (times ``2 p`` with ``squared``) plus
    ``d_overlap`` at the target (``y`` times it for a probability target), 0 at the pixels not counted."""
    g = (2 * p).mul_(d_predicted.unsqueeze(-1)) if squared else d_predicted.unsqueeze(-1).expand_as(p).clone()
    if labels is None:
        g.addcmul_(d_overlap.unsqueeze(-1), dense)
    else:
        c = p.shape[1]
        index = labels.clamp_max(c - 1)
        at_label = d_overlap.gather(1, index) * (labels < c)
        g.scatter_add_(1, index.unsqueeze(1), at_label.unsqueeze(1))
    return g if keep is None else g.mul_(keep.unsqueeze(1))


def position_blocks(x: Tensor) -> list[slice]:
    """Blocks of the positions of ``(N, C, S)`` logits, each about ``1 / _BLOCKS`` of them (at least
    ``_MIN_BLOCK`` elements), so that a block's temporaries are a small share of the logits' size."""
    n, c, s = x.shape
    step = max(1, max(_MIN_BLOCK, n * c * s // _BLOCKS) // max(n * c, 1))
    return [slice(start, start + step) for start in range(0, s, step)]


def sums_gradient(x: Tensor, labels, dense, keep, activation, squared: bool, d_overlap: Tensor,
                  d_predicted: Tensor) -> Tensor:
    """The logits' gradient of the sums: the activation recomputed into the gradient's buffer, then, block by
    block of positions, the chain rule through it in place (softmax: ``p (g - sum_c p g)``; sigmoid:
    ``p (1 - p) g``; probabilities in: ``g``)."""
    grad = activate(x, activation) if activation is not None else torch.empty_like(x)
    if activation == "softmax" and labels is not None and not squared:
        return _softmax_at_labels(grad, labels, keep, d_overlap, d_predicted)
    for cols in position_blocks(x):
        out = grad[..., cols]
        p = out if activation is not None else x[..., cols]
        g = _probability_gradient(p, _at(labels, cols), _at(dense, cols), _at(keep, cols), squared, d_overlap,
                                  d_predicted)
        if activation == "softmax":
            out.mul_(g.sub_((p * g).sum(1, keepdim=True)))
        elif activation == "sigmoid":
            out.mul_(g.mul_(1 - p))
        else:
            out.copy_(g)
    return grad


def _softmax_at_labels(p: Tensor, labels: Tensor, keep: Tensor | None, d_overlap: Tensor,
                       d_predicted: Tensor) -> Tensor:
    """:func:`sums_gradient`'s commonest case, in place over the softmax ``p``: with ``a = d_predicted`` and
    ``b = d_overlap``, ``d L / d p_c = a_c + b_c [c = l]`` and the gradient is
    ``p_c (a_c - sum_k p_k a_k - p_l b_l) + [c = l] p_l b_l`` (times ``keep``); the ``(N, S)`` terms over
    the whole batch, the ``(N, C, S)`` factor a block of positions at a time."""
    at = labels.unsqueeze(1)
    target = p.gather(1, at).squeeze(1).mul_(d_overlap.gather(1, labels))
    if keep is not None:
        target.mul_(keep)
    dot = torch.bmm(d_predicted.unsqueeze(1).to(p.dtype), p).squeeze(1).add_(target)
    for cols in position_blocks(p):
        factor = d_predicted.unsqueeze(-1) - dot[:, None, cols]
        p[..., cols].mul_(factor if keep is None else factor.mul_(keep[:, None, cols]))
    return p.scatter_add_(1, at, target.unsqueeze(1))
