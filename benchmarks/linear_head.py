"""The fused linear head against the unfused path and torch's checkpointed chunks, side by side.

    python benchmarks/linear_head.py [--rounds 3] [--threads 2] [--shapes N,H,V ...] [--no-growth] [--no-peak]
                                     [--out FILE]
    python benchmarks/linear_head.py --small [--threads 1]    # ordinary heads: time ratios only
    python benchmarks/linear_head.py --device cuda [--dtype bfloat16]    # on a GPU (its default there)

For each shape, every implementation takes ``hidden (N, H)``, ``head_weight (V, H)`` and class
indices (1 in 8 ignored, as padding and prompt tokens are) and runs forward + backward to the gradients of
both inputs:

* ``unfused F.cross_entropy``: ``F.cross_entropy(hidden @ W.T, target)``, the baseline of every ratio;
* ``unfused pf.focal_loss``: the same logits through polyfocal's focal loss;
* ``torch checkpointed chunks``: ``torch.utils.checkpoint`` over chunks of matmul + cross-entropy
  (torchtune's recipe), chunks of the same rows as ``linear_loss``'s;
* ``torch F.linear_cross_entropy``: torch's own fused head (2.13+), its default options;
* ``pf.linear_loss`` with CE, focal, Poly-1 and DFT, and CE on the same rows with none ignored (the head makes
  no logits for an ignored row; torch's paths make them all).

Time: the median over interleaved rounds in this process, as a ratio to the baseline. Memory: the
peak resident memory of one forward + backward in a fresh process, beyond the inputs and their
gradients (``VmHWM`` after ``clear_refs``, less the resident memory before the call and the
gradients' bytes), as a ratio to the baseline's; with ``MALLOC_MMAP_THRESHOLD_=131072``, so that large
buffers are mapped and unmapped, and resident memory tracks live memory. Then how that peak grows with N at V = 128,256.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import polyfocal as pf

os.environ.setdefault("POLYFOCAL_COMPILE", "wait")  # warm-ups compile: time kernels, not the eager stand-in

SHAPES = [(4096, 512, 32000), (1024, 512, 128256), (8192, 1024, 32000), (2048, 1024, 128256)]
GROWTH = [(1024, 1024, 128256), (2048, 1024, 128256), (4096, 1024, 128256)]
SMALL = [(32, 128, 100), (256, 256, 1000), (1024, 512, 8000)]


def checkpointed_chunks(h, w, t):
    total, rows = 0, pf.linear.default_chunk_rows(*h.shape, w.shape[0])
    for hc, tc in zip(h.split(rows), t.split(rows)):
        total = total + checkpoint(lambda a, b: F.cross_entropy(a @ w.T, b, reduction="sum"), hc, tc,
                                   use_reentrant=False)
    return total / (t != -100).sum()


IMPLEMENTATIONS = {
    "unfused F.cross_entropy": lambda h, w, t: F.cross_entropy(h @ w.T, t),
    "unfused pf.focal_loss": lambda h, w, t: pf.focal_loss(h @ w.T, t),
    "torch checkpointed chunks": checkpointed_chunks,
    "torch F.linear_cross_entropy": lambda h, w, t: F.linear_cross_entropy(
        h, w, t, options=torch.nn.LinearCrossEntropyOptions()),
    "pf.linear_loss cross_entropy": lambda h, w, t: pf.linear_loss(h, w, t),
    "pf.linear_loss focal_loss": lambda h, w, t: pf.linear_loss(h, w, t, loss="focal_loss"),
    "pf.linear_loss poly1_cross_entropy": lambda h, w, t: pf.linear_loss(h, w, t, loss="poly1_cross_entropy"),
    "pf.linear_loss dft_cross_entropy": lambda h, w, t: pf.linear_loss(h, w, t, loss="dft_cross_entropy"),
    # the head makes no logits for an ignored row: the same call with every row counting (in every other row,
    # 1 in 8 is ignored), to show what that saves
    "pf.linear_loss cross_entropy, no row ignored": lambda h, w, t: pf.linear_loss(h, w, t.clamp(min=0)),
}
BASELINE = "unfused F.cross_entropy"


#: where and in what dtype the inputs are made (``--device``, ``--dtype``): fp32 on the CPU; on a GPU bf16, where
#: polyfocal's head runs its chunks through the Triton row kernels
DEVICE = {"device": "cpu", "dtype": torch.float32}


def inputs(n: int, h: int, v: int):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) / h ** 0.5
    target = torch.randint(0, v, (n,), generator=g)
    target[::8] = -100
    hidden, weight = (t.to(**DEVICE).requires_grad_() for t in (hidden, weight))
    return hidden, weight, target.to(DEVICE["device"])


def step(name: str, hidden, weight, target) -> None:
    loss = IMPLEMENTATIONS[name](hidden, weight, target)
    torch.autograd.grad(loss, (hidden, weight))
    if hidden.is_cuda:
        torch.cuda.synchronize()


def times(shape, rounds: int) -> dict[str, float]:
    data = inputs(*shape)
    for name in IMPLEMENTATIONS:  # warm up: first-call work, allocator
        step(name, *data)
    samples = {name: [] for name in IMPLEMENTATIONS}
    for _ in range(rounds):
        for name in IMPLEMENTATIONS:
            start = time.perf_counter()
            step(name, *data)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def small_times(shape, rounds: int = 7) -> dict[str, float]:
    """Median time per call over interleaved rounds, each round a batch of calls sized to take tens of ms."""
    data = inputs(*shape)
    names = [BASELINE, "unfused pf.focal_loss", "pf.linear_loss cross_entropy", "pf.linear_loss focal_loss"]
    calls = int(min(200, max(1, 2e7 // (shape[0] * shape[1] * shape[2] / 100 + 1e4))))
    for name in names:
        for _ in range(3):
            step(name, *data)
    samples = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            start = time.perf_counter()
            for _ in range(calls):
                step(name, *data)
            samples[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(s) for name, s in samples.items()}


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def measure_peak(run, gradients: int) -> int:
    """Bytes of resident memory ``run()`` (one forward + backward) adds at its peak, beyond the inputs and
    the ``gradients`` bytes it returns; ``run`` is called once before, to warm up."""
    run()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    before = _status("VmRSS:")
    run()
    return _status("VmHWM:") - before - gradients


def peak_in_this_process(name: str, shape) -> int:
    data = inputs(*shape)
    return measure_peak(lambda: step(name, *data), sum(t.numel() * t.element_size() for t in data[:2]))


def cuda_peak(name: str, shape) -> int:
    """On a GPU: the allocator's peak during one forward + backward beyond the inputs and the gradients (its
    statistics are exact, so no fresh process is needed)."""
    data = inputs(*shape)
    step(name, *data)
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(name, *data)
    return torch.cuda.max_memory_allocated() - before - sum(t.numel() * t.element_size() for t in data[:2])


def peak(name: str, shape, module: str = "linear_head") -> int:
    """:func:`peak_in_this_process` of ``module`` (a benchmark beside this one) in a fresh process."""
    if DEVICE["device"] != "cpu":
        return cuda_peak(name, shape)
    dtype = str(DEVICE["dtype"]).removeprefix("torch.")  # this run's, where the module makes its inputs by DEVICE
    code = (f"import sys, torch; sys.path.insert(0, {os.path.dirname(__file__)!r}); import {module} as b; "
            f"getattr(b, 'DEVICE', {{}}).update(dtype=torch.{dtype}); "
            f"print(b.peak_in_this_process({name!r}, {tuple(shape)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),
                              "MALLOC_MMAP_THRESHOLD_": "131072"})
    return int(out.stdout.split()[-1])


def table(results: list[dict]) -> str:
    lines = ["| shape (N, H, V) | implementation | time / unfused F.cross_entropy | peak memory beyond inputs "
             "and gradients / unfused F.cross_entropy's | (MiB) |", "|---|---|---|---|---|"]
    for r in results:
        base_t, base_m = r["time"][BASELINE], r["peak"].get(BASELINE)
        for name in IMPLEMENTATIONS:
            memory = "- | -" if base_m is None else f"{r['peak'][name] / base_m:.3f} | {r['peak'][name] / 2**20:.0f}"
            lines.append(f"| {r['shape']} | {name} | {r['time'][name] / base_t:.2f}x | {memory} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--small", action="store_true", help="ordinary heads (N, H, V up to 1024, 512, 8000)")
    parser.add_argument("--shapes", nargs="+", default=None, metavar="N,H,V",
                        help="only these shapes (default: the four of the README's table)")
    parser.add_argument("--no-growth", action="store_true", help="skip the table of peak memory against N")
    parser.add_argument("--no-peak", action="store_true",
                        help="times only (a peak is measured in a fresh process, the same with one thread or two)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: float32 on the CPU, bfloat16 on a GPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    DEVICE.update(device=args.device, dtype=getattr(torch, dtype))
    if args.small:
        for shape in SMALL:
            t = small_times(shape)
            print(shape, {name: f"{value / t[BASELINE]:.2f}x" for name, value in t.items()}, flush=True)
        return
    results = []
    for shape in [tuple(int(v) for v in text.split(",")) for text in args.shapes] if args.shapes else SHAPES:
        results.append({"shape": shape, "time": times(shape, args.rounds),
                        "peak": {} if args.no_peak else {name: peak(name, shape) for name in IMPLEMENTATIONS}})
        print(table(results[-1:]), flush=True)
    growth = [] if args.no_growth else [
        {"shape": shape, "peak": {name: peak(name, shape) for name in (BASELINE, "pf.linear_loss focal_loss")}}
        for shape in GROWTH]
    print("\n| N (H = 1024, V = 128,256) | unfused F.cross_entropy (MiB) | pf.linear_loss focal_loss (MiB) |\n|---|---|---|")
    for row in growth:
        print(f"| {row['shape'][0]} | {row['peak'][BASELINE] / 2**20:.0f} | "
              f"{row['peak']['pf.linear_loss focal_loss'] / 2**20:.0f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(), "threads": args.threads,
                       "device": args.device, "dtype": dtype, "torch": torch.__version__, "results": results,
                       "growth": growth}, f, indent=1)


if __name__ == "__main__":
    main()
