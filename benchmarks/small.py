"""Ordinary sizes: polyfocal against torch's own loss and the composition users copy, side by side.

    python benchmarks/small.py [--threads 1 2] [--rounds 15] [--device cpu] [--out benchmarks/results/small-cpu.json]

Each time is the median over interleaved rounds of a batch of calls sized to take a few
milliseconds, so noise hits every implementation alike; the table reports ratios only:
polyfocal (``backend="auto"``) over ``F.cross_entropy`` / ``F.binary_cross_entropy_with_logits``
and over the composition, forward+backward and forward alone, and the number of aten ops one
forward call dispatches (from the profiler; on a GPU, a proxy for kernel launches).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
import compositions as comp  # noqa: E402

import polyfocal as pf  # noqa: E402

os.environ.setdefault("POLYFOCAL_COMPILE", "wait")  # warm-ups compile: time kernels, not the eager stand-in

SOFTMAX_SHAPES = [(32, 10), (256, 100), (1024, 1000)]
SIGMOID_SHAPES = [(64, 80), (1024, 80), (8, 80, 32, 32)]


def softmax_losses():
    """name -> (polyfocal, composition, torch's own loss), each f(logits, data)."""
    own = lambda x, d: F.cross_entropy(x, d["labels"])  # noqa: E731
    return {
        "cross_entropy": (lambda x, d: pf.cross_entropy(x, d["labels"]), own, own),
        "focal_loss": (lambda x, d: pf.focal_loss(x, d["labels"]),
                       lambda x, d: comp.kornia_softmax_focal(x, d["labels"]), own),
        "poly1_cross_entropy": (lambda x, d: pf.poly1_cross_entropy(x, d["labels"]),
                                lambda x, d: comp.poly1_cross_entropy_listing(x, d["labels"]), own),
        "polyn_cross_entropy": (lambda x, d: pf.polyn_cross_entropy(x, d["labels"], epsilons=(1.0, 0.5)),
                                lambda x, d: comp.polyn_cross_entropy_listing(x, d["labels"], (1.0, 0.5)), own),
    }


def sigmoid_losses(shape):
    own = lambda x, d: F.binary_cross_entropy_with_logits(x, d["one_hot"])  # noqa: E731
    losses = {
        "sigmoid_focal_loss": (lambda x, d: pf.sigmoid_focal_loss(x, d["labels"]),
                               lambda x, d: comp.torchvision_sigmoid_focal(x, d["one_hot"]), own),
        "sigmoid_focal_loss (float one-hot)": (lambda x, d: pf.sigmoid_focal_loss(x, d["one_hot"]),
                                               lambda x, d: comp.torchvision_sigmoid_focal(x, d["one_hot"]), own),
        "poly1_focal_loss": (lambda x, d: pf.poly1_focal_loss(x, d["labels"]),
                             lambda x, d: comp.poly1_focal_listing(x, d["one_hot"]), own),
        "quality_focal_loss": (lambda x, d: pf.quality_focal_loss(x, (d["labels"], d["scores"])),
                               lambda x, d: comp.mmdet_quality_focal(x, d["soft"]), own),
    }
    if len(shape) == 2:
        ghm = pf.GHMCLoss(momentum=0.0)
        losses["GHMCLoss"] = (lambda x, d: ghm(x, d["labels"]), lambda x, d: comp.mmdet_ghm_c(x, d["one_hot"]), own)
    return losses


def make_data(family, shape, device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g)
    n, c, rest = shape[0], shape[1], tuple(shape[2:])
    if family == "softmax":
        return logits.to(device), {"labels": torch.randint(0, c, (n, *rest), generator=g).to(device)}
    # about 10% positives among the rows/locations, the rest background (label C)
    labels = torch.where(torch.rand((n, *rest), generator=g) < 0.1,
                         torch.randint(0, c, (n, *rest), generator=g), torch.tensor(c))
    scores = torch.rand((n, *rest), generator=g)
    one_hot = F.one_hot(labels, c + 1)[..., :c].movedim(-1, 1).to(logits.dtype)
    data = {"labels": labels, "scores": scores, "one_hot": one_hot, "soft": one_hot * scores.unsqueeze(1)}
    return logits.to(device), {k: v.to(device) for k, v in data.items()}


def step(fn, backward):
    def run(x, d):
        if not backward:
            with torch.no_grad():
                return fn(x, d)
        x = x.detach().requires_grad_()
        fn(x, d).backward()
        return x.grad
    return run


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(runs: dict, x, d, rounds: int) -> dict:
    """Median seconds per call of each run, over rounds that alternate between them."""
    for run in runs.values():  # warm up; and size each batch to about 5 ms
        run(x, d)
    sync(x.device)
    start = time.perf_counter()
    for run in runs.values():
        run(x, d)
    sync(x.device)
    calls = max(1, int(0.005 * len(runs) / max(time.perf_counter() - start, 1e-9)))
    times = {label: [] for label in runs}
    for _ in range(rounds):
        for label, run in runs.items():
            sync(x.device)
            start = time.perf_counter()
            for _ in range(calls):
                run(x, d)
            sync(x.device)
            times[label].append((time.perf_counter() - start) / calls)
    return {label: statistics.median(ts) for label, ts in times.items()}


def aten_ops(fn, x, d) -> int:
    """aten ops one forward call (with a gradient to come) dispatches, nested ones not counted twice."""
    x = x.detach().requires_grad_()
    fn(x, d)  # warm caches and compilation first
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(x, d)
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    return sum(1 for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))


def measure(name, shape, impls, device, rounds) -> dict:
    x, d = make_data("softmax" if name in softmax_losses() else "sigmoid", shape, device)
    polyfocal, composition, own = impls
    runs = {}
    for mode, backward in (("fwd+bwd", True), ("fwd", False)):
        for label, fn in (("polyfocal", polyfocal), ("composition", composition), ("torch", own)):
            runs[f"{label} {mode}"] = step(fn, backward)
    t = time_interleaved(runs, x, d, rounds)
    row = {"loss": name, "shape": list(shape), "threads": torch.get_num_threads()}
    for mode in ("fwd+bwd", "fwd"):
        row[f"vs torch {mode}"] = t[f"polyfocal {mode}"] / t[f"torch {mode}"]
        row[f"vs composition {mode}"] = t[f"polyfocal {mode}"] / t[f"composition {mode}"]
    row["aten ops"] = aten_ops(polyfocal, x, d)
    row["torch aten ops"] = aten_ops(own, x, d)
    return row


def markdown(rows) -> str:
    lines = ["| loss | shape | threads | fwd+bwd vs torch | vs composition | fwd vs torch | vs composition "
             "| aten ops (torch's) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['loss']} | {' x '.join(map(str, r['shape']))} | {r['threads']} "
                     f"| {r['vs torch fwd+bwd']:.2f}x | {r['vs composition fwd+bwd']:.2f}x "
                     f"| {r['vs torch fwd']:.2f}x | {r['vs composition fwd']:.2f}x "
                     f"| {r['aten ops']} ({r['torch aten ops']}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--losses", nargs="*", default=None, help="only these (default: all)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cases = [(n, s, i) for s in SOFTMAX_SHAPES for n, i in softmax_losses().items()]
    cases += [(n, s, i) for s in SIGMOID_SHAPES for n, i in sigmoid_losses(s).items()]
    cases = [c for c in cases if not args.losses or c[0] in args.losses]
    rows = []
    for threads in args.threads if device.type == "cpu" else [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for name, shape, impls in cases:
            rows.append(measure(name, shape, impls, device, args.rounds))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    machine = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
               "torch": torch.__version__, "cpu_count": os.cpu_count()}
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"small-{device.type}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"machine": machine, "rounds": args.rounds, "rows": rows}, f, indent=1)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown(rows))
    print(f"wrote {out} and its markdown table")


if __name__ == "__main__":
    main()
