"""Triton kernels of the softmax row engine: one program per row, online softmax over C in chunks.

They compute exactly what the compiled row engine in :mod:`polyfocal._rows` computes, and are
loss-independent: the loss enters only through ``phi``'s partial derivatives on the N rows.

* ``row_statistics``: per row, the max ``m`` and shifted exp-sum ``s`` of the non-target logits
  (one pass, online: the running sum is rescaled when the max grows), and ``x_t - m``.
* ``row_gradient``: ``exp(x_k - m) * coef`` off the target, ``target_grad`` on it, written once
  in the logits' dtype.

On a GPU they are the default for class-index softmax losses; on CPU they run under
``TRITON_INTERPRET=1`` (the tests do that). Triton is optional: without it the compiled
engine runs instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = None


def available() -> bool:
    return triton is not None


def handles(dtype: torch.dtype) -> bool:
    """The kernels compute in fp32: inputs in fp16, bf16 or fp32 (whose compute dtype is fp32)."""
    return dtype == torch.float32


def _block(num_classes: int) -> int:
    return min(triton.next_power_of_2(max(num_classes, 2)), 4096)


if triton is not None:

    @triton.jit
    def _row_start(row, length, stride_n, stride_l):
        """Offset of row ``row = n * L + l`` of ``(N, C, L)`` logits: the first class of example n at l."""
        return (row // length) * stride_n + (row % length) * stride_l

    @triton.jit
    def _row_statistics_kernel(x_ptr, t_ptr, shifted_ptr, m_ptr, s_ptr, num_classes, length, stride_n, stride_c,
                               stride_l, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        start_x = _row_start(row, length, stride_n, stride_l)
        target = tl.load(t_ptr + row)
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        for start in range(0, num_classes, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            keep = (cols < num_classes) & (cols != target)
            x = tl.load(x_ptr + start_x + cols * stride_c, mask=keep, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, 0))
            safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m - safe) + tl.sum(tl.where(keep, tl.exp(x - safe), 0.0), 0)
            m = m_new
        x_t = tl.load(x_ptr + start_x + target * stride_c).to(tl.float32)
        tl.store(shifted_ptr + row, x_t - m)
        tl.store(m_ptr + row, m)
        tl.store(s_ptr + row, s)

    @triton.jit
    def _row_gradient_kernel(x_ptr, t_ptr, m_ptr, coef_ptr, target_grad_ptr, out_ptr, num_classes, length,
                             stride_n, stride_c, stride_l, out_n, out_c, out_l, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        start_x = _row_start(row, length, stride_n, stride_l)
        start_out = _row_start(row, length, out_n, out_l)
        target = tl.load(t_ptr + row)
        m = tl.load(m_ptr + row)
        coef = tl.load(coef_ptr + row)
        target_grad = tl.load(target_grad_ptr + row)
        for start in range(0, num_classes, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < num_classes
            x = tl.load(x_ptr + start_x + cols * stride_c, mask=inside, other=0.0).to(tl.float32)
            grad = tl.where(cols == target, target_grad, tl.exp(x - m) * coef)
            tl.store(out_ptr + start_out + cols * out_c, grad.to(out_ptr.dtype.element_ty), mask=inside)


def row_statistics(x: Tensor, t: Tensor, dtype: torch.dtype):
    """As :func:`polyfocal._rows._row_statistics`, for ``x (N, C, L)`` (any strides: read in place, not
    copied) and ``t (N, L)``; fp32 math."""
    if not handles(dtype):
        raise NotImplementedError(f"the Triton row engine computes in fp32; got {dtype}")
    n, c, length = x.shape
    targets = t.reshape(-1).contiguous()
    out = [torch.empty(n * length, dtype=torch.float32, device=x.device) for _ in range(3)]
    if n * length:
        _row_statistics_kernel[(n * length,)](x, targets, *out, c, length, *x.stride(), BLOCK=_block(c))
    return tuple(o.view(t.shape) for o in out)


def row_gradient(x: Tensor, t: Tensor, m_other: Tensor, other_coef: Tensor, target_grad: Tensor) -> Tensor:
    """``exp(x_k - m) * other_coef`` off the target, ``target_grad`` on it: the gradient in the logits'
    dtype and shape (what :func:`polyfocal._rows._row_gradient_in_place` makes of the statistics pass),
    written straight into ``(N, C, L)`` order: the one logits-sized buffer of the call."""
    n, c, length = x.shape
    out = torch.empty((n, c, length), dtype=x.dtype, device=x.device)
    if n * length:
        vectors = [v.reshape(-1).to(torch.float32).contiguous() for v in (m_other, other_coef, target_grad)]
        _row_gradient_kernel[(n * length,)](x, t.reshape(-1).contiguous(), *vectors, out, c, length, *x.stride(),
                                            *out.stride(), BLOCK=_block(c))
    return out
