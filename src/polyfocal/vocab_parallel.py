"""The fused linear head with the vocabulary sharded over ranks (tensor parallelism, as Megatron-LM and
torchtitan shard the output layer): each rank holds ``head_weight[V_r]``, the logits of its own
classes for one chunk of rows at a time, and nothing else of size V.

A softmax-family loss with class indices is ``phi(p_t)``, and ``p_t`` depends on the logits through
the target's margin ``z = x_t - logsumexp_(k != t) x_k`` alone (``p_t = sigmoid(z)``). So each rank
reduces its chunk to three numbers per row (the max and shifted exp-sum of its non-target logits,
and the target's logit where it holds the target class), they are all-reduced, and every rank then
evaluates the loss on the N margins: the named polyfocal loss on two-class logits ``(z, 0)``, whose
``p_t`` is exactly ``sigmoid(z)`` and whose ``log(1 - p_t)`` is exact. Its derivative ``g = dL/dz``
gives each rank its own classes' gradient: ``g`` at the target, ``-g exp(x_k - m) / s`` elsewhere.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from . import _checks
from ._errors import InputValueError
from ._reduce import reduction_scale
from ._softmax_engine import _count
from .linear import (ChunkedFunction, _check_head, chunk_rows, hand_out, no_second_derivatives, rows_that_count,
                     spread_rows)
from .registry import declaration, softmax_loss_function

__all__ = ["vocab_parallel_linear_loss"]


@dataclass(frozen=True)
class _Shard:
    loss: object
    params: dict
    target: Tensor  # (N,) global class indices
    factor: Tensor  # (N,) weight[t] * alpha[t], 0 where ignored
    start: int  # this rank's first class
    scale: Tensor
    reduction: str
    chunk: int
    group: object

    def statistics(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(m, s, z, local)``: the all-reduced max and shifted exp-sum of the non-target logits, the
        target's margin, and the target's column in this shard (-1 where another rank holds it)."""
        local = t - self.start
        here = (local >= 0) & (local < x.shape[1])
        local = torch.where(here, local, -1)
        at = local.clamp_min(0)[:, None]
        others = x.scatter(1, at, torch.where(here[:, None], float("-inf"), x.gather(1, at)))
        m = others.amax(1)
        dist.all_reduce(m, dist.ReduceOp.MAX, group=self.group)
        safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        s = torch.exp(others - safe[:, None]).sum(1)
        x_t = torch.where(here, x.gather(1, at).squeeze(1), torch.zeros_like(m))
        dist.all_reduce(s, group=self.group)
        dist.all_reduce(x_t, group=self.group)
        return safe, s, x_t - safe - torch.log(s), local

    def margin_loss(self, z: Tensor, rows: slice) -> tuple[Tensor, Tensor]:
        """The loss of each row from its margin (times the row's factor) and its derivative in the margin."""
        z = z.detach().requires_grad_()
        with torch.enable_grad():
            pair = torch.stack([z, torch.zeros_like(z)], 1)
            loss = self.loss(pair, torch.zeros_like(z, dtype=torch.long), reduction="none", **self.params)
            loss = loss * self.factor[rows]
            (g,) = torch.autograd.grad(loss.sum(), z)
        return loss.detach(), g


def _shard_chunks(shard: _Shard, hidden: Tensor, weight: Tensor, bias: Tensor | None, upstream: Tensor | None,
                  needs: tuple[bool, bool, bool]):
    """Per-row losses, and this rank's gradients (hidden's all-reduced), chunk by chunk."""
    n = hidden.shape[0]
    losses = []
    grads = [torch.zeros_like(hidden, dtype=torch.float32) if needs[0] else None,
             torch.zeros_like(weight, dtype=torch.float32) if needs[1] else None,
             torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if needs[2] else None]
    kept = rows_that_count(shard.factor)  # a factor of 0: ignored, or a class weighted 0
    count = n if kept is None else kept.numel()
    for start in range(0, count, shard.chunk):
        stop = min(start + shard.chunk, count)
        rows = slice(start, stop) if kept is None else kept[start:stop]
        h = hidden[rows]
        x = (h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)).float()
        m, s, z, local = shard.statistics(x, shard.target[rows])
        loss, g = shard.margin_loss(z, rows)
        losses.append(loss)
        if not any(needs):
            continue
        g = g * (upstream[rows] if shard.reduction == "none" else shard.scale * (1 if upstream is None else upstream))
        grad = torch.exp(x - m[:, None]) * (-g / s)[:, None]
        here = local >= 0
        grad[here, local[here]] = g[here]
        if needs[0]:
            grads[0][rows] = grad @ weight.float()
        if needs[1]:
            grads[1].addmm_(grad.T, h.float())
        if needs[2]:
            grads[2] += grad.sum(0)
    if needs[0]:
        dist.all_reduce(grads[0], group=shard.group)
    loss = spread_rows(torch.cat(losses) if losses else hidden.new_zeros(0, dtype=torch.float32), kept, n)
    return loss, [None if g is None else g.to(t.dtype) for g, t in zip(grads, (hidden, weight, weight))]


class _VocabParallel(ChunkedFunction):
    heads = "vocab_parallel_linear_loss"

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, shard: _Shard):
        ctx.shard, ctx.grads = shard, None
        needs = (False, False, False) if shard.reduction == "none" else tuple(ctx.needs_input_grad[:3])
        loss, grads = _shard_chunks(shard, hidden, weight, bias, None, needs)
        if any(needs):
            ctx.grads = grads
        ctx.save_for_backward(hidden, weight, bias)
        return loss if shard.reduction == "none" else loss.sum() * shard.scale

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        no_second_derivatives("vocab_parallel_linear_loss")
        hidden, weight, bias = ctx.saved_tensors
        recompute = lambda: _shard_chunks(ctx.shard, hidden, weight, bias, grad_loss,  # noqa: E731
                                          tuple(ctx.needs_input_grad[:3]))[1]
        grads = recompute() if ctx.shard.reduction == "none" else hand_out(ctx, grad_loss, recompute)
        return (*grads, None)


def check_shard(vocab_start, num_classes, size: int) -> tuple[int, int]:
    """``vocab_start`` and ``num_classes`` checked, and the shard's ``size`` classes from ``vocab_start``
    within them."""
    num_classes = _checks.integer(num_classes, "num_classes", low=2)
    vocab_start = _checks.integer(vocab_start, "vocab_start", low=0)
    if vocab_start + size > num_classes:
        raise InputValueError(f"this shard (classes {vocab_start}..{vocab_start + size - 1}) must lie "
                              f"within `num_classes` = {num_classes}")
    return vocab_start, num_classes


def vocab_parallel_linear_loss(hidden: Tensor, head_weight: Tensor, target: Tensor, *, vocab_start: int,
                               num_classes: int, loss: str = "cross_entropy", head_bias: Tensor | None = None,
                               group=None, chunk_size: int | None = None, weight: Tensor | None = None,
                               alpha: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                               normalizer=None, **loss_params) -> Tensor:
    """:func:`polyfocal.linear_loss` with the head sharded over the vocabulary: this rank holds classes
    ``vocab_start .. vocab_start + V_r - 1`` (``head_weight (V_r, H)``, ``head_bias (V_r,)``) of
    ``num_classes``; ``hidden`` and ``target`` are the same on every rank of ``group``.

    Every rank returns the same loss; ``head_weight``'s gradient is its own shard's, ``hidden``'s is
    the full one (all-reduced over ``group``). ``weight`` and ``alpha`` are ``(num_classes,)`` vectors
    on every rank. The losses are those of class indices without label smoothing (each a function of
    ``p_t``); ``**loss_params`` are the loss's hyperparameters.

    Raises:
        ValueError: a loss or option this form cannot take (label smoothing), or a shard that does
            not fit ``num_classes``.
    """
    function = softmax_loss_function(loss)
    if not declaration(function.__name__).curve:
        raise InputValueError(f"`loss` {loss!r} reads more of a row than p_t (its runner-up), which no rank holds; "
                              "vocab_parallel_linear_loss takes losses of p_t alone (use linear_loss on one machine)")
    _check_head(hidden, head_weight, head_bias, target)
    if loss_params.get("label_smoothing"):
        raise InputValueError("`label_smoothing` needs every class's probability; vocab_parallel_linear_loss takes "
                              "losses of p_t alone (use linear_loss on one machine)")
    vocab_start, num_classes = check_shard(vocab_start, num_classes, head_weight.shape[0])
    _checks.check_reduction(reduction, normalizer)
    flat = target.reshape(-1)
    if _checks.should_validate(loss_params.pop("validate", None), hidden):  # no rank would hold a class >= C
        _checks.check_index_range(flat, num_classes, ignore_index)
    loss_params["validate"] = False
    valid = flat != ignore_index
    labels = flat.masked_fill(~valid, 0)
    like = torch.empty((), dtype=torch.float32, device=hidden.device)
    if alpha is not None and "alpha" not in inspect.signature(function).parameters:
        raise InputValueError(f"`alpha` is not an option of {loss!r}")
    w = _checks.class_vector(weight, "weight", num_classes, like)
    a = _checks.class_vector(alpha, "alpha", num_classes, like)
    count = _count(valid, labels, w)
    factor = valid.float() * (1 if w is None else w[labels]) * (1 if a is None else a[labels])
    scale = reduction_scale(reduction, count, normalizer, like)
    chunk = chunk_rows(chunk_size, hidden, head_weight)
    shard = _Shard(function, loss_params, flat, factor, vocab_start, scale, reduction, chunk, group)
    value = _VocabParallel.apply(hidden.reshape(-1, hidden.shape[-1]), head_weight, head_bias, shard)
    return (value.reshape(target.shape) if reduction == "none" else value).to(hidden.dtype)
