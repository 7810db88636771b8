"""Losses of ``p_t`` through torch's own cross-entropy kernels, against polyfocal's eager row engine.

    python benchmarks/pt_engines.py [--threads 1] [--rounds 11]

Focal loss (gamma 2), the mean over class indices, three ways, forward+backward as ratios to
``F.cross_entropy`` in one interleaved run:

* ``pf.focal_loss`` (``backend="auto"``: the eager row engine below 2^18 logits);
* the composition over torch's kernels: ``ce = F.cross_entropy(..., reduction="none")``,
  ``1 - p_t = -expm1(-ce)``, autograd through the N-value rest. Its ``1 - p_t`` keeps only the
  bits ``ce`` has near ``p_t = 1``;
* the exact form over torch's kernels: ``log_softmax`` of the logits with the target masked (its
  max is ``-log`` of the others' exp-sum, so the margin ``x_t - logsumexp_{k != t} x_k`` is exact)
  and the gradient from torch's log-softmax backward, saved as polyfocal's engines save it.

Then each one's fp32 error against float64 (value and norm-wise gradient of one row) where
``1 - p_t`` is 1e-2 ... 1e-8, beside the error of ``F.cross_entropy``'s own gradient.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from small import step, time_interleaved  # noqa: E402

import polyfocal as pf  # noqa: E402

os.environ.setdefault("POLYFOCAL_COMPILE", "wait")  # warm-ups compile: time kernels, not the eager stand-in

GAMMA = 2.0


def composition(x, t, reduction="mean"):
    ce = F.cross_entropy(x, t, reduction="none")
    rows = (-torch.expm1(-ce)) ** GAMMA * ce
    return rows.mean() if reduction == "mean" else rows


class _Saved(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, loss, grad):
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        return ctx.saved_tensors[0] * grad_output.unsqueeze(-1), None, None


def exact_torch_kernels(x, t, reduction="mean"):
    scale = 1.0 / x.shape[0] if reduction == "mean" else 1.0
    with torch.no_grad():
        at = t.unsqueeze(1)
        masked = x.scatter(1, at, float("-inf"))
        log_other = torch.log_softmax(masked, 1)
        z = (x.gather(1, at) - masked.amax(1, keepdim=True) + log_other.amax(1, keepdim=True)).squeeze(1)
        logp, log1m = F.logsigmoid(z), F.logsigmoid(-z)
        p, q = logp.exp(), log1m.exp()
        rows = -(q * q) * logp
        slope = (q * q) * (GAMMA * p * logp - q) * scale  # d rows / dz
        onehot = torch.zeros_like(log_other).scatter_(1, at, slope.unsqueeze(1))
        grad = torch.ops.aten._log_softmax_backward_data(onehot, log_other, 1, x.dtype)
        loss = rows.sum() * scale if reduction == "mean" else rows
    return _Saved.apply(x, loss, grad)


IMPLEMENTATIONS = {
    "pf.focal_loss": lambda x, t, reduction="mean": pf.focal_loss(x, t, reduction=reduction),
    "composition over F.cross_entropy": composition,
    "exact, over torch's kernels": exact_torch_kernels,
}


def timing(rounds: int) -> None:
    print("| shape | " + " | ".join(IMPLEMENTATIONS) + " |\n|---|" + "---|" * len(IMPLEMENTATIONS))
    for n, c in [(32, 10), (256, 100), (1024, 1000)]:
        g = torch.Generator().manual_seed(0)
        x, data = torch.randn(n, c, generator=g), {"labels": torch.randint(0, c, (n,), generator=g)}
        runs = {"torch": step(lambda x, d: F.cross_entropy(x, d["labels"]), True)}
        runs |= {name: step(lambda x, d, f=f: f(x, d["labels"]), True) for name, f in IMPLEMENTATIONS.items()}
        t = time_interleaved(runs, x, data, rounds)
        print(f"| {n} x {c} | " + " | ".join(f"{t[name] / t['torch']:.2f}x" for name in IMPLEMENTATIONS) + " |")


def _value_and_grad(f, x, t):
    x = x.clone().requires_grad_()
    value = f(x, t, reduction="none").sum()
    return value.detach().double(), torch.autograd.grad(value, x)[0].double()


def _errors(f, x, t, f64=None):
    (v, g), (v64, g64) = _value_and_grad(f, x, t), _value_and_grad(f64 or f, x.double(), t)
    return abs(v - v64) / abs(v64), float((g - g64).norm() / g64.norm())


def precision() -> None:
    reference = lambda x, t, reduction: pf.focal_loss(x, t, reduction=reduction, backend="reference")  # noqa: E731
    print("\n| 1 - p_t | " + " | ".join(f"{name}: value, gradient" for name in IMPLEMENTATIONS)
          + " | F.cross_entropy: gradient |\n|---|" + "---|" * (len(IMPLEMENTATIONS) + 1))
    for complement in (1e-2, 1e-4, 1e-6, 1e-8):
        x, t = torch.zeros(1, 10), torch.tensor([3])  # nine logits 0 beside the target's m
        x[0, 3] = math.log(9 / complement - 9)
        cells = [_errors(f, x, t, reference) for f in IMPLEMENTATIONS.values()]
        torch_grad = _errors(lambda z, t, reduction: F.cross_entropy(z, t, reduction=reduction), x, t)[1]
        print(f"| {complement:g} | " + " | ".join(f"{v:.1e}, {g:.1e}" for v, g in cells) + f" | {torch_grad:.1e} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    timing(args.rounds)
    precision()


if __name__ == "__main__":
    main()
