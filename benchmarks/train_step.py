"""A whole training step with each loss in place of ``F.cross_entropy``: the user's view of its cost.

    python benchmarks/train_step.py [--threads 1] [--rounds 15] [--compile]

The model and batch of ``examples/train_tiny.py`` (16 -> 64 -> 8, batch 256, Adam): forward,
loss, backward and optimizer step, eager or with the model and loss under
``torch.compile(fullgraph=True)``. Medians of interleaved rounds; printed as the ratio of each
step's time to the step with ``F.cross_entropy``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import polyfocal as pf

os.environ.setdefault("POLYFOCAL_COMPILE", "wait")  # warm-ups compile: time kernels, not the eager stand-in

LOSSES = {"F.cross_entropy": F.cross_entropy, "pf.cross_entropy": pf.cross_entropy,
          "pf.focal_loss": pf.focal_loss, "pf.poly1_cross_entropy": pf.poly1_cross_entropy,
          "pf.sigmoid_focal_loss": pf.sigmoid_focal_loss}


def make_step(loss_fn, compiled: bool, x, y):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def forward(xb, yb):
        return loss_fn(model(xb), yb)

    forward = torch.compile(forward, fullgraph=True) if compiled else forward

    def step():
        loss = forward(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=50, help="steps per timed batch")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 16, generator=g), torch.randint(0, 8, (256,), generator=g)
    steps = {name: make_step(fn, args.compile, x, y) for name, fn in LOSSES.items()}
    for step in steps.values():  # warm up (and compile)
        for _ in range(3):
            step()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                step()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["F.cross_entropy"])
    mode = "torch.compile(fullgraph=True)" if args.compile else "eager"
    print(f"| step ({mode}, {args.threads} thread) | time / step with F.cross_entropy |\n|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts) / base:.2f}x |")


if __name__ == "__main__":
    main()
