"""The region losses' memory and time on a 3-d segmentation batch, beside MONAI's and torch's cross-entropy.

    python benchmarks/region_losses.py [--shape 2 4 96 96 96] [--rounds 5]

Peak memory: resident memory beyond the inputs and the logits' gradient at the peak of one forward +
backward, in a fresh process per loss with ``MALLOC_MMAP_THRESHOLD_=131072`` (so that freed heap memory is
returned and not counted twice), in units of the logits' own size. Time: forward + backward as a ratio to
``F.cross_entropy``'s with class indices, interleaved rounds in one process. Each loss with class-index targets
and with the same target as a float one-hot ``(N, C, *spatial)`` (what MONAI's and torchvision's users pass;
MONAI then takes it without ``to_onehot_y``); fp32, the torch threads set; fused kernels compiled before
anything is measured.
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

        if t.is_floating_point():  # already one-hot
            return getattr(monai.losses, name)(**options)(x, t)
        return getattr(monai.losses, name)(to_onehot_y=True, **options)(x, t.unsqueeze(1))
    return run


LOSSES = {
    "F.cross_entropy": lambda x, t: F.cross_entropy(x, t),
    "pf.dice_loss": lambda x, t: pf.dice_loss(x, t),
    "pf.focal_tversky_loss": lambda x, t: pf.focal_tversky_loss(x, t),
    "pf.dice_focal_loss": lambda x, t: pf.dice_focal_loss(x, t),
    "pf.unified_focal_loss": lambda x, t: pf.unified_focal_loss(x, t),
    "monai DiceLoss(softmax)": _monai("DiceLoss", softmax=True),
    "monai DiceFocalLoss(softmax)": _monai("DiceFocalLoss", softmax=True),
}
BASELINE = "F.cross_entropy"


#: the target's forms: class indices ``(N, *spatial)`` and the same as a float one-hot ``(N, C, *spatial)``
FORMS = ("index", "one-hot")
#: the form a peak's fresh process builds
FORM = "REGION_BENCHMARK_TARGET"


def inputs(*shape: int, form: str = "index"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).requires_grad_()
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    if form == "one-hot":
        t = F.one_hot(t, shape[1]).movedim(-1, 1).float().contiguous()
    return x, t


def step(name: str, x, t) -> None:
    loss = LOSSES[name](x, t)
    (grad,) = torch.autograd.grad(loss, x)
    del grad


def peak_in_this_process(name: str, shape) -> int:
    x, t = inputs(*shape, form=os.environ.get(FORM, "index"))
    return measure_peak(lambda: step(name, x, t), x.numel() * x.element_size())


def times(shape, rounds: int) -> dict[tuple[str, str], float]:
    """The median time of every loss with each target form, the rounds interleaved over all of them."""
    x, index = inputs(*shape)
    targets = {"index": index, "one-hot": inputs(*shape, form="one-hot")[1]}
    cases = [(name, form) for form in FORMS for name in LOSSES]
    samples = {case: [] for case in cases}
    for name, form in cases:
        step(name, x, targets[form])  # warm up
    for _ in range(rounds):
        for name, form in cases:
            start = time.perf_counter()
            step(name, x, targets[form])
            samples[name, form].append(time.perf_counter() - start)
    return {case: statistics.median(s) for case, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[2, 4, 96, 96, 96])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    shape = tuple(args.shape)
    logits = torch.Size(shape).numel() * 4
    timed = times(shape, args.rounds)
    peaks = {}
    for form in FORMS:
        os.environ[FORM] = form
        peaks.update({(name, form): peak(name, shape, module="region_losses") / logits for name in LOSSES})
    base = timed[BASELINE, "index"]
    print(f"shape {shape}, fp32, {torch.get_num_threads()} thread(s); logits {logits / 2**20:.1f} MiB; times "
          f"against F.cross_entropy with class indices; peaks beyond inputs and gradient, in logits' sizes")
    print("| loss | class indices: time | peak | float one-hot: time | peak |")
    print("|---|---|---|---|---|")
    for name in LOSSES:
        cells = " | ".join(f"{timed[name, f] / base:.2f}x | {peaks[name, f]:.2f}" for f in FORMS)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
