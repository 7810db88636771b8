"""The region losses' memory and time on a 3-d segmentation batch, beside MONAI's and torch's cross-entropy.

    python benchmarks/region_losses.py [--shape 2 4 96 96 96] [--rounds 5]

Peak memory: resident memory beyond the inputs and the logits' gradient at the peak of one forward +
backward, in a fresh process per loss with ``MALLOC_MMAP_THRESHOLD_=131072`` (so that freed heap memory is
returned and not counted twice), in units of the logits' own size. Time: forward + backward as a ratio to
``F.cross_entropy``'s, interleaved rounds in one process. Class-index targets, fp32, the torch threads set; fused kernels compiled before anything is measured.
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

# a fused kernel compiles within its first (warm-up) call, so that the measured calls run it, not the eager
# engine that stands in while a kernel compiles in the background (the peaks' fresh processes inherit this)
os.environ.setdefault("POLYFOCAL_COMPILE", "wait")


def _monai(name: str, **options):
    def run(x, t):
        import monai.losses

        return getattr(monai.losses, name)(**options)(x, t.unsqueeze(1))
    return run


LOSSES = {
    "F.cross_entropy": lambda x, t: F.cross_entropy(x, t),
    "pf.dice_loss": lambda x, t: pf.dice_loss(x, t),
    "pf.focal_tversky_loss": lambda x, t: pf.focal_tversky_loss(x, t),
    "pf.dice_focal_loss": lambda x, t: pf.dice_focal_loss(x, t),
    "pf.unified_focal_loss": lambda x, t: pf.unified_focal_loss(x, t),
    "monai DiceLoss(softmax, to_onehot_y)": _monai("DiceLoss", softmax=True, to_onehot_y=True),
    "monai DiceFocalLoss(softmax, to_onehot_y)": _monai("DiceFocalLoss", softmax=True, to_onehot_y=True),
}
BASELINE = "F.cross_entropy"


def inputs(*shape: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).requires_grad_()
    return x, torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)


def step(name: str, x, t) -> None:
    loss = LOSSES[name](x, t)
    (grad,) = torch.autograd.grad(loss, x)
    del grad


def peak_in_this_process(name: str, shape) -> int:
    x, t = inputs(*shape)
    return measure_peak(lambda: step(name, x, t), x.numel() * x.element_size())


def times(shape, rounds: int) -> dict[str, float]:
    x, t = inputs(*shape)
    samples = {name: [] for name in LOSSES}
    for name in LOSSES:
        step(name, x, t)  # warm up
    for _ in range(rounds):
        for name in LOSSES:
            start = time.perf_counter()
            step(name, x, t)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[2, 4, 96, 96, 96])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    shape = tuple(args.shape)
    logits = torch.Size(shape).numel() * 4
    timed = times(shape, args.rounds)
    print(f"shape {shape}, fp32, class indices, {torch.get_num_threads()} thread(s); logits {logits / 2**20:.1f} MiB")
    print("| loss | time / F.cross_entropy | peak beyond inputs and gradient (logits' sizes) | (MiB) |")
    print("|---|---|---|---|")
    for name in LOSSES:
        extra = peak(name, shape, module="region_losses")
        print(f"| {name} | {timed[name] / timed[BASELINE]:.2f}x | {extra / logits:.2f} | {extra / 2**20:.0f} |")


if __name__ == "__main__":
    main()
