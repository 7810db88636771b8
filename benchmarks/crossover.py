"""Where ``backend="auto"`` switches from the eager engine to the compiled (fused) one.

    python benchmarks/crossover.py [--threads 1] [--rounds 9]

Forward+backward of cross-entropy (whose eager engine is ``F.cross_entropy``), focal loss, Poly-1
and sigmoid focal loss on the eager and the fused engine, interleaved; prints the ratio fused /
eager per size (below 1: the fused engine is faster). ``polyfocal._backend.FUSED_MIN_ELEMENTS`` and
``EAGER_MAX_ELEMENTS`` are set from this table.
"""

from __future__ import annotations

import argparse
import os

import torch

import polyfocal as pf
from small import step, time_interleaved

os.environ.setdefault("POLYFOCAL_COMPILE", "wait")  # warm-ups compile: time kernels, not the eager stand-in

SIZES = [(256, 64), (512, 128), (1024, 128), (1024, 256), (2048, 256), (4096, 256), (4096, 1000)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    losses = {"cross_entropy": pf.cross_entropy, "focal_loss": pf.focal_loss,
              "poly1_cross_entropy": pf.poly1_cross_entropy, "sigmoid_focal_loss": pf.sigmoid_focal_loss}
    print(f"fused / eager, forward+backward, {args.threads} thread(s); logits elements in brackets")
    for n, c in SIZES:
        x = torch.randn(n, c)
        data = {"labels": torch.randint(0, c, (n,))}
        cells = []
        for name, loss in losses.items():
            runs = {engine: step(lambda x, d, e=engine, f=loss: f(x, d["labels"], backend=e), True)
                    for engine in ("eager", "fused")}
            t = time_interleaved(runs, x, data, args.rounds)
            cells.append(f"{name} {t['fused'] / t['eager']:.2f}")
        print(f"{n} x {c} [{n * c}]: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
