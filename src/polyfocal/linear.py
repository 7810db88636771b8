"""A fused linear head: any softmax-family loss over ``hidden @ head_weight.T (+ head_bias)`` without the
logits ever existing for more than one chunk of rows.

Every softmax-family loss is a function of the logits of one row, so its gradient in the logits of a
chunk of rows needs only that chunk: :func:`linear_loss` computes a chunk's logits (one matmul),
runs the named polyfocal loss on them (its own engine: eager, fused or Triton, with the whole
contract: ``weight``, ``alpha``, ``ignore_index``, ``label_smoothing``, reductions, ``normalizer``),
turns the chunk's logit gradient into the gradients of ``hidden``, ``head_weight`` and
``head_bias`` (three matmuls), and drops the chunk. Peak extra memory is about two chunks of
logits, however many rows there are.

* ``reduction="mean"`` or ``"sum"``: the upstream gradient is one number, so the input gradients
  are computed in the forward pass and scaled in backward (no second pass over the head).
* ``reduction="none"``: the upstream gradient differs per token, so backward recomputes each
  chunk's logits and applies it (the per-token weights reach ``head_weight`` exactly).

The mean's denominator is the whole batch's (the sum of ``weight[target]`` over non-ignored rows,
or ``normalizer``), so chunking never changes the result.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from . import _checks, _compat, _rows
from ._errors import InputTypeError, InputValueError
from ._reduce import reduction_scale
from ._softmax_engine import _count
from .registry import softmax_loss_function

__all__ = ["linear_loss", "LinearLoss"]

#: the fewest rows of a default chunk: a matrix product of fewer rows runs slower per row (one thread at
#: (4096, 512, 32000), forward + backward as a ratio to the unfused path: 64 rows 0.85x, 128 rows 0.78x)
MIN_CHUNK_ROWS = 128
#: and the fewest logits (16 MiB of fp32): below that a chunk's fixed work shows (1024 x 512 x 8000 as 8
#: chunks of 128 rows took 1.18x the unfused time, one thread)
MIN_CHUNK_ELEMENTS = 1 << 22


def default_chunk_rows(rows: int, hidden: int, vocabulary: int) -> int:
    """Rows per chunk when ``chunk_size`` is not given: a chunk's logits about as large as the hidden input
    (``N H`` values), and never more than an eighth of the inputs' values (``(N + V) H / 8``, so that the
    chunk's logits and their gradient, the head's extra memory, are at most a quarter of the bytes of the
    inputs and their gradients); at least :data:`MIN_CHUNK_ROWS` rows and :data:`MIN_CHUNK_ELEMENTS`
    logits. Sized to the problem, not a fixed budget: the extra memory is then flat in N once N H exceeds
    128 V. Where the row engine writes the gradient over the logits, one buffer holds a chunk, and the chunks
    after the first take twice these rows (:func:`_grows`)."""
    floor = max(MIN_CHUNK_ROWS, MIN_CHUNK_ELEMENTS // vocabulary)
    return max(floor, min(rows, (rows + vocabulary) // 8) * hidden // vocabulary)


def head_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor | None = None) -> Tensor:
    """A chunk's logits ``hidden @ weight.T + bias``, in fp32 for fp16/bf16 heads; written into the first rows
    of ``out`` (a :func:`logits_buffer`) where one is given."""
    out = None if out is None else out[:hidden.shape[0]]
    x = torch.mm(hidden, weight.T, out=out) if bias is None else torch.addmm(bias, hidden, weight.T, out=out)
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def logits_buffer(rows: int, weight: Tensor) -> Tensor | None:
    """A buffer for every chunk's logits in turn (None for fp16/bf16 heads, whose logits are fp32 copies): a
    fresh buffer of tens of MiB is new pages for the system to fault in at each chunk (a 65 MB chunk's
    ``hidden @ W.T`` took 417 ms fresh against 330 ms into a reused buffer, two threads here)."""
    if weight.dtype not in (torch.float32, torch.float64):
        return None
    return weight.new_empty(rows, weight.shape[0])


@dataclass(frozen=True)
class _Head:
    """One call's settings: the loss (a softmax-family function and its keyword arguments) and the head's."""

    loss: Callable
    params: dict
    target: Tensor  # (N,) class indices
    ignore_index: int
    reduction: str
    scale: Tensor  # the mean's 1 / denominator (1 for sum and none)
    chunk: int
    z_loss: float | None
    softcap: float | None
    grows: bool = True  # a default chunk: later chunks take twice the rows where one buffer held a chunk (_grows)

    def rows(self, x: Tensor, target: Tensor, reduction: str) -> tuple[Tensor, Tensor]:
        """The chunk's loss (per row, or summed) and z-loss, from logits ``x`` that may require a gradient."""
        if self.softcap is not None:
            x = self.softcap * torch.tanh(x / self.softcap)
        loss = self.loss(x, target, reduction=reduction, ignore_index=self.ignore_index, **self.params)
        if self.z_loss is None:
            return loss, torch.zeros_like(loss)
        z = self.z_loss * torch.logsumexp(x, 1).square() * (target != self.ignore_index)
        return loss, z if reduction == "none" else z.sum()

    def run_chunk(self, rows: slice, h: Tensor, weight: Tensor, bias: Tensor | None, seed: Tensor | None,
                  out: Tensor | None = None):
        """:func:`_chunk` on the rows ``rows`` (``h`` is hidden's rows there), its logits in ``out``."""
        return _chunk(self, h, self.target[rows], weight, bias, seed, out)


def _chunk(head: _Head, h: Tensor, t: Tensor, weight: Tensor, bias: Tensor | None, seed: Tensor | None,
           out: Tensor | None):
    """One chunk: its loss (per row, or summed) and z-loss, and with ``seed`` (the upstream gradient:
    per row, or the mean's scale) the gradient in the chunk's logits, in the head's dtype. The row engine may
    write the gradient over the chunk's logits (not where the z-loss reads them after the loss); should its
    kernel fail after it did, the logits are made again and given up no more."""
    x = head_logits(h, weight, bias, out).requires_grad_(seed is not None)
    try:
        return _chunk_pass(head, x, t, seed, weight.dtype, given_up=head.z_loss is None)
    except _rows.LogitsWrittenOver:
        x = head_logits(h, weight, bias, out).requires_grad_(seed is not None)
        return _chunk_pass(head, x, t, seed, weight.dtype, given_up=False)


def _chunk_pass(head: _Head, x: Tensor, t: Tensor, seed: Tensor | None, dtype: torch.dtype, given_up: bool):
    with torch.enable_grad(), _rows.logits_given_up(x) if given_up else contextlib.nullcontext():
        loss, z = head.rows(x, t, "none" if head.reduction == "none" else "sum")
        if seed is None:
            return loss.detach(), z.detach(), None
        total = loss + z
        # a seed of 1 hands back the engine's saved gradient itself (no copy; it may be the chunk's logits, written
        # over); a scalar seed is the caller's to apply (_chunk_gradients)
        (g,) = torch.autograd.grad(total, x, seed.to(total.dtype) if head.reduction == "none" else None)
    return loss.detach(), z.detach(), g.detach().to(dtype)


def _chunk_gradients(head, hidden: Tensor, weight: Tensor, bias: Tensor | None, upstream: Tensor | None,
                     needs: tuple[bool, bool, bool]):
    """The loss (summed and scaled, or per row), the z-loss, and the gradients of hidden, weight and
    bias, a chunk of rows at a time; ``upstream`` is the upstream gradient (per row for ``reduction="none"``).
    ``head`` is a :class:`_Head` or another head with its ``reduction``, ``scale``, ``chunk`` (rows) and
    ``run_chunk`` (the distillation heads of :mod:`polyfocal.distill`). ``run_chunk``'s ``seed`` is None (no
    gradient), the rows' upstream gradient (``reduction="none"``), which it applies, or a scalar that it leaves
    to this function, which applies it to the chunk's products with ``hidden`` and ``weight`` (``(n, H)``
    values, not the chunk's ``(n, V)`` gradient: a pass over memory fewer)."""
    n, per_row = hidden.shape[0], head.reduction == "none"
    accumulate = torch.float32 if weight.dtype != torch.float64 else weight.dtype
    grad_hidden = torch.zeros_like(hidden) if needs[0] else None
    grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if needs[1] else None
    grad_bias = torch.zeros(weight.shape[0], dtype=accumulate, device=weight.device) if needs[2] else None
    losses, z_losses = [head.scale.new_zeros(0)], [head.scale.new_zeros(0)]
    chunk, start, kept = head.chunk, 0, _kept_rows(head)
    count = n if kept is None else kept.numel()
    factor = None if per_row else head.scale * (1 if upstream is None else upstream)
    out = logits_buffer(min(chunk, count), weight)
    while start < count:
        stop = min(start + chunk, count)
        rows = slice(start, stop) if kept is None else kept[start:stop]
        h = hidden[rows]
        seed = None if not any(needs) else upstream[rows] if per_row else factor
        loss, z, g = head.run_chunk(rows, h, weight, bias, seed, out)
        losses.append(loss.reshape(-1))
        z_losses.append(z.reshape(-1))
        if g is not None:
            _add_products((grad_hidden, grad_weight, grad_bias), rows, g, h, weight, factor, accumulate)
        start, grows = stop, _grows(head, chunk, g, out)
        del g  # before the next chunk's logits exist (in ``out``: g may be it, written over)
        if grows:  # the gradient was written over the logits: one buffer where two were budgeted
            chunk, out = 2 * chunk, None
            out = logits_buffer(min(chunk, count - start), weight)
    loss, z_loss = torch.cat(losses), torch.cat(z_losses)
    if per_row:  # the ignored rows' losses are 0
        loss, z_loss = spread_rows(loss, kept, n), spread_rows(z_loss, kept, n)
    else:
        loss, z_loss = loss.sum() * head.scale, z_loss.sum() * head.scale
    return loss, z_loss, (grad_hidden, grad_weight, grad_bias)


def rows_that_count(counts: Tensor) -> Tensor | None:
    """The indices of the rows where ``counts`` (a mask or a per-row factor) is not 0, or None where every row
    counts: a row that does not has loss 0 and gradient 0, so the chunk loops never make its logits (a share
    of the matrix products saved as large as the share of such rows). One device sync."""
    kept = counts.nonzero().squeeze(1)
    return None if kept.numel() == counts.numel() else kept


def spread_rows(values: Tensor, kept: Tensor | None, n: int) -> Tensor:
    """Per-row ``values`` of the rows ``kept`` (:func:`rows_that_count`) put back among ``n`` rows, 0 elsewhere."""
    return values if kept is None else values.new_zeros(n).index_copy_(0, kept, values)


def _kept_rows(head) -> Tensor | None:
    """:func:`rows_that_count` of a head: those whose target is not its ``ignore_index`` (all without a target)."""
    target = getattr(head, "target", None)
    return None if target is None else rows_that_count(target != head.ignore_index)


def _add_products(grads: tuple, rows: slice, g: Tensor, h: Tensor, weight: Tensor, factor: Tensor | None,
                  accumulate: torch.dtype) -> None:
    """Add a chunk's products with its logit gradient ``g`` (times ``factor``, a scalar, where one is given) to
    the gradients of hidden (its ``rows``), weight and bias (``grads``; None where not wanted), in
    ``accumulate``'s precision."""
    grad_hidden, grad_weight, grad_bias = grads
    scaled = (lambda a: a) if factor is None else (lambda a: a * factor)  # noqa: E731
    if grad_hidden is not None:
        grad_hidden[rows] = scaled((g @ weight).to(accumulate)).to(grad_hidden.dtype)
    if grad_weight is not None:
        grad_weight.addmm_(g.T.to(accumulate), scaled(h.to(accumulate)))
    if grad_bias is not None:
        grad_bias += scaled(g.sum(0).to(accumulate))


def _grows(head, chunk: int, g: Tensor | None, out: Tensor | None) -> bool:
    """Whether the chunks after this one take twice its rows: the head's default chunk is sized for two
    logits-sized buffers (the logits and their gradient), and the row engine wrote this chunk's gradient over
    its logits in ``out`` (:func:`polyfocal._rows.logits_given_up`), so one buffer of twice the rows fits the
    same memory. Only :class:`_Head` s with a default chunk grow (the distillation heads budget their own
    buffers), once."""
    return (getattr(head, "grows", False) and chunk == head.chunk and g is not None and out is not None
            and g.untyped_storage().data_ptr() == out.untyped_storage().data_ptr())


def hand_out(ctx, grad_loss: Tensor, recompute: Callable[[], list]) -> list:
    """The input gradients the forward pass computed (``ctx.grads``), handed out once and scaled in place
    by ``grad_loss`` (no copy of ``head_weight``'s gradient, and no reference kept, so autograd can take
    them as they are); a second backward through the same graph (``retain_graph``) recomputes them."""
    grads, ctx.grads = ctx.grads, None
    if grads is None:
        return recompute()
    if not (grad_loss.device.type == "cpu" and float(grad_loss) == 1.0):
        for g in grads:
            if g is not None:
                g.mul_(grad_loss.to(g.dtype))
    return grads


def no_second_derivatives(name: str) -> None:
    if torch.is_grad_enabled():
        raise RuntimeError(f"polyfocal.{name} has no second derivatives (create_graph=True); use the unfused "
                           "loss on materialised logits for those")


class ChunkedFunction(torch.autograd.Function):
    """A chunked head's autograd Function. Inside a ``torch.func`` transform, whose wrapped tensors it cannot
    serve, one clear error (``heads`` names the functions that run it) instead of functorch's own, which names
    neither the loss nor a way out."""

    heads = ""

    @classmethod
    def apply(cls, *args):
        if _compat.in_functorch_transform():
            raise NotImplementedError(f"polyfocal: {cls.heads} cannot run inside a torch.func transform (grad, "
                                      "vmap, ...): its chunks' written-out gradient is an autograd.Function; there, "
                                      "compute the logits and call the loss on them (pf.focal_loss(hidden @ W.T, "
                                      "target))")
        return super().apply(*args)


class FusedLinearLoss(ChunkedFunction):
    """``(loss, z_loss)`` of a :class:`_Head` (or a head like it) over ``hidden @ weight.T + bias``; see the
    module docstring."""

    heads = "the fused linear head (linear_loss, linear_distillation_loss, topk_distillation_loss of (hidden, head))"

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, head):
        ctx.head, ctx.grads = head, None
        needs = (False, False, False) if head.reduction == "none" else tuple(ctx.needs_input_grad[:3])
        loss, z, grads = _chunk_gradients(head, hidden, weight, bias, None, needs)
        if any(needs):
            ctx.grads = list(grads)
        ctx.save_for_backward(hidden, weight, bias)
        ctx.mark_non_differentiable(z)
        return loss + z, z

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_z: Tensor):
        del grad_z  # the z-loss is returned for logging; its gradient is in the loss's
        no_second_derivatives(getattr(ctx.head, "name", "linear_loss"))
        hidden, weight, bias = ctx.saved_tensors
        recompute = lambda: list(_chunk_gradients(ctx.head, hidden, weight, bias, grad_loss,  # noqa: E731
                                                  tuple(ctx.needs_input_grad[:3]))[2])
        grads = recompute() if ctx.head.reduction == "none" else hand_out(ctx, grad_loss, recompute)
        return (*grads, None)


def _check_head(hidden, head_weight, head_bias, target=None) -> None:
    """The head's inputs, and ``target`` where one is given (distillation may have none)."""
    hidden = _checks.float_tensor(hidden, "hidden")
    head_weight = _checks.float_tensor(head_weight, "head_weight")
    if hidden.dim() not in (2, 3):
        raise InputValueError(f"`hidden` must have shape (N, H) or (B, T, H); got {tuple(hidden.shape)}")
    if head_weight.dim() != 2 or head_weight.shape[1] != hidden.shape[-1]:
        raise InputValueError(f"`head_weight` must have shape (V, H) with H = {hidden.shape[-1]} (hidden's last "
                              f"dimension); got {tuple(head_weight.shape)}")
    if head_weight.dtype != hidden.dtype or head_weight.device != hidden.device:
        raise InputValueError(f"`head_weight` must have hidden's dtype and device ({hidden.dtype}, {hidden.device}); "
                              f"got {head_weight.dtype}, {head_weight.device}")
    if head_bias is not None and (not isinstance(head_bias, Tensor) or head_bias.shape != head_weight.shape[:1]
                                  or head_bias.dtype != hidden.dtype):
        got = tuple(head_bias.shape) if isinstance(head_bias, Tensor) else type(head_bias).__name__
        raise InputValueError(f"`head_bias` must be None or a ({head_weight.shape[0]},) tensor of hidden's dtype; got {got}")
    if target is None:
        return
    if not isinstance(target, Tensor) or target.is_floating_point() or target.dtype == torch.bool:
        raise InputTypeError(f"`target` must be a tensor of class indices; got "
                             f"{target.dtype if isinstance(target, Tensor) else type(target).__name__}")
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise InputValueError(f"`target` must have shape {tuple(hidden.shape[:-1])} (hidden's without H); "
                              f"got {tuple(target.shape)}")


def chunk_rows(chunk_size, hidden: Tensor, head_weight: Tensor) -> int:
    """``chunk_size`` checked, or :func:`default_chunk_rows` for these inputs."""
    if chunk_size is not None:
        return _checks.integer(chunk_size, "chunk_size", low=1)
    width = hidden.shape[-1]
    return default_chunk_rows(hidden.numel() // max(width, 1), width, head_weight.shape[0])


def _head_options(z_loss, softcap) -> tuple:
    """``z_loss`` and ``softcap`` checked (None: off)."""
    z_loss = None if z_loss is None else _checks.number(z_loss, "z_loss", low=0.0)
    softcap = None if softcap is None else _checks.number(softcap, "softcap", low=0.0, low_open=True)
    return z_loss, softcap


def linear_loss(hidden: Tensor, head_weight: Tensor, target: Tensor, *, loss: str = "cross_entropy",
                head_bias: Tensor | None = None, chunk_size: int | None = None, z_loss: float | None = None,
                softcap: float | None = None, return_z_loss: bool = False, weight: Tensor | None = None,
                ignore_index: int = -100, reduction: str = "mean", normalizer=None, **loss_params):
    """A softmax-family loss of the logits ``hidden @ head_weight.T + head_bias``, computed a chunk of
    rows at a time, so the ``(N, V)`` logits and their gradient never exist.

    ``linear_loss(h, W, t, loss="focal_loss", gamma=2)`` equals ``pf.focal_loss(h @ W.T, t, gamma=2)``
    in value and in the gradients of ``hidden``, ``head_weight`` and ``head_bias`` (to fp32
    rounding), with peak extra memory ``O(chunk_size * V)`` instead of ``O(N * V)``.

    Args:
        hidden: ``(N, H)`` or ``(B, T, H)`` hidden states (fp32, fp16 or bf16; the loss runs in fp32).
        head_weight: ``(V, H)``, the output layer's weight, hidden's dtype and device.
        target: class indices ``(N,)`` or ``(B, T)``; ``ignore_index`` rows count for nothing.
        loss: a softmax-family loss by name or short name (``"focal"``, ``"poly1_cross_entropy"``,
            ``"dft"``...); ``**loss_params`` are its own keywords (``gamma``, ``epsilon``, ``alpha``,
            ``label_smoothing``, ``backend``...).
        head_bias: ``(V,)`` or None.
        chunk_size: rows per chunk; default :func:`default_chunk_rows`: about ``N H / V`` (a chunk's
            logits the size of ``hidden``), at most ``(N + V) H / (8 V)``, at least 128 and ``2^22 / V``,
            twice that after the first chunk where the loss writes its gradient over the logits. A value
            given is kept (then, for a loss of ``p_t`` without z-loss, one chunk's logits are the extra memory).
        z_loss: PaLM's auxiliary ``z * logsumexp(logits)^2`` per non-ignored row, added to the loss
            and reduced as it is; None (off) or a number >= 0.
        softcap: Gemma's logit soft-capping ``c * tanh(logits / c)`` before the softmax; None or c > 0.
        return_z_loss: also return the z-loss (detached, for logging): ``(loss, z_loss)``.
        weight: ``(C,)`` class weights, as in :func:`polyfocal.cross_entropy` (in the mean's denominator).
        ignore_index: the target value to skip. Default -100.
        reduction: ``"none"`` (per row, target's shape), ``"sum"`` or ``"mean"`` (over the whole batch:
            the sum of ``weight[target]`` over non-ignored rows, or ``normalizer``).
        normalizer: with ``reduction="mean"``, divide the sum by this number or scalar tensor instead.

    Returns:
        The loss in hidden's dtype, or ``(loss, z_loss)`` with ``return_z_loss=True``.

    Example:
        >>> import torch, polyfocal as pf
        >>> h, W, t = torch.randn(6, 8), torch.randn(50, 8), torch.randint(0, 50, (6,))
        >>> fused = pf.linear_loss(h, W, t, loss="focal_loss", gamma=2.0, chunk_size=4)
        >>> bool(fused.isclose(pf.focal_loss(h @ W.T, t, gamma=2.0)))
        True
    """
    function = softmax_loss_function(loss)
    _check_head(hidden, head_weight, head_bias, target)
    _checks.check_reduction(reduction, normalizer)
    ignore_index = _checks.integer(ignore_index, "ignore_index", low=-(2**63))
    vocabulary = head_weight.shape[0]
    chunk = chunk_rows(chunk_size, hidden, head_weight)
    z_loss, softcap = _head_options(z_loss, softcap)
    flat = target.reshape(-1)
    like = torch.empty((), dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32, device=hidden.device)
    w = _checks.class_vector(weight, "weight", vocabulary, like)
    valid = flat != ignore_index
    scale = reduction_scale(reduction, _count(valid, flat.masked_fill(~valid, 0), w), normalizer, like)
    if _checks.should_validate(loss_params.pop("validate", None), hidden):  # once, not once per chunk
        _checks.check_index_range(flat, vocabulary, ignore_index)
    params = {**loss_params, "validate": False, **({} if weight is None else {"weight": weight})}
    head = _Head(function, params, flat, ignore_index, reduction, scale, chunk, z_loss, softcap, chunk_size is None)
    value, z = FusedLinearLoss.apply(hidden.reshape(-1, hidden.shape[-1]), head_weight, head_bias, head)
    if reduction == "none":
        value, z = value.reshape(target.shape), z.reshape(target.shape)
    value = value.to(hidden.dtype)
    return (value, z) if return_z_loss else value


class LinearLoss(nn.Module):
    """Module form of :func:`linear_loss`: ``LinearLoss(loss="focal_loss", gamma=2)(hidden, head_weight,
    target, head_bias=None)``. A tensor option (``weight``, ``alpha``) becomes a buffer."""

    def __init__(self, loss: str = "cross_entropy", **options):
        super().__init__()
        softmax_loss_function(loss)
        self.loss = loss
        self._options = {k: v for k, v in options.items() if not isinstance(v, Tensor)}
        self._tensor_names = [k for k, v in options.items() if isinstance(v, Tensor)]
        for name in self._tensor_names:
            self.register_buffer(name, options[name])

    def forward(self, hidden: Tensor, head_weight: Tensor, target: Tensor, head_bias: Tensor | None = None):
        tensors = {name: getattr(self, name) for name in self._tensor_names}
        return linear_loss(hidden, head_weight, target, loss=self.loss, head_bias=head_bias, **self._options, **tensors)

    def extra_repr(self) -> str:
        return ", ".join([f"loss={self.loss!r}", *(f"{k}={v!r}" for k, v in self._options.items())])
