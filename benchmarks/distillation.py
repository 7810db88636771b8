"""Fused distillation against the unfused path and ``pf.linear_loss``, side by side.

    python benchmarks/distillation.py [--shape 4096 512 32000] [--rounds 2] [--threads 1]

A student and a teacher head of the same shape, 1 in 8 targets ignored; forward + backward to the
gradients of the student's hidden states and head. Time: the median over interleaved rounds in this
process, as a ratio to the unfused forward KL (``F.kl_div`` of the two log-softmaxes of materialised
logits). Memory: the peak resident memory of one step in a fresh process beyond the inputs and the
gradients, as :mod:`linear_head` measures it (``MALLOC_MMAP_THRESHOLD_=131072``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import polyfocal as pf

sys.path.insert(0, os.path.dirname(__file__))
from linear_head import measure_peak, peak  # noqa: E402

os.environ.setdefault("POLYFOCAL_COMPILE", "wait")  # warm-ups compile: time kernels, not the eager stand-in


def unfused(hs, ws, ht, wt, t, divergence):
    ls, lt = (hs @ ws.T).log_softmax(1), (ht @ wt.T).log_softmax(1)
    valid = t != -100
    if divergence == "forward_kl":
        rows = F.kl_div(ls, lt, log_target=True, reduction="none").sum(1)
    else:
        rows = F.kl_div(lt, ls, log_target=True, reduction="none").sum(1)
    return (rows * valid).sum() / valid.sum()


IMPLEMENTATIONS = {
    "unfused forward KL (F.kl_div)": lambda hs, ws, ht, wt, t: unfused(hs, ws, ht, wt, t, "forward_kl"),
    "pf.linear_loss cross_entropy (no teacher)": lambda hs, ws, ht, wt, t: pf.linear_loss(hs, ws, t),
    "pf.linear_distillation_loss forward_kl": lambda hs, ws, ht, wt, t: pf.linear_distillation_loss(hs, ws, ht, wt, t),
    "pf.linear_distillation_loss jsd": lambda hs, ws, ht, wt, t: pf.linear_distillation_loss(
        hs, ws, ht, wt, t, divergence="jsd"),
    "pf.linear_distillation_loss forward_kl + CE": lambda hs, ws, ht, wt, t: pf.linear_distillation_loss(
        hs, ws, ht, wt, t, hard_loss="cross_entropy", hard_weight=0.5),
}
BASELINE = "unfused forward KL (F.kl_div)"


def inputs(n: int, h: int, v: int):
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(n, h, generator=g).requires_grad_()
    ws = (torch.randn(v, h, generator=g) / h ** 0.5).requires_grad_()
    ht, wt = torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) * 2 / h ** 0.5
    t = torch.randint(0, v, (n,), generator=g)
    t[::8] = -100
    return hs, ws, ht, wt, t


def step(name: str, data) -> None:
    torch.autograd.grad(IMPLEMENTATIONS[name](*data), data[:2])


def peak_in_this_process(name: str, shape) -> int:
    data = inputs(*shape)
    return measure_peak(lambda: step(name, data), sum(t.numel() * t.element_size() for t in data[:2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[4096, 512, 32000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = inputs(*args.shape)
    for name in IMPLEMENTATIONS:
        step(name, data)
    samples = {name: [] for name in IMPLEMENTATIONS}
    for _ in range(args.rounds):
        for name in IMPLEMENTATIONS:
            start = time.perf_counter()
            step(name, data)
            samples[name].append(time.perf_counter() - start)
    base = statistics.median(samples[BASELINE])
    print(f"| {tuple(args.shape)}, {args.threads} thread(s) | time / unfused | peak beyond inputs and gradients |")
    print("|---|---|---|")
    for name in IMPLEMENTATIONS:
        memory = peak(name, args.shape, "distillation") / 2**20
        print(f"| {name} | {statistics.median(samples[name]) / base:.2f}x | {memory:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
