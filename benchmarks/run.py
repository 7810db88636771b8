"""Benchmark polyfocal's engines against the compositions users copy, side by side in one run.

    python benchmarks/run.py [--quick] [--repeats 7] [--out benchmarks/results/cpu.json]

For each loss and shape it times forward+backward of: polyfocal fused, polyfocal reference,
the plain-PyTorch composition (and F.cross_entropy for the softmax family), interleaved
round by round so that machine noise hits all of them alike, and reports medians as ratios:
to the composition, to F.cross_entropy, and to a same-size tensor copy. Memory: bytes saved
for backward (beyond the logits themselves) and peak allocation during forward+backward,
both as multiples of the logits' size. Bandwidth: the minimal traffic (read logits and
targets once, write the gradient once) over the time, as a fraction of the copy's bandwidth.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
import compositions as comp  # noqa: E402

import polyfocal as pf  # noqa: E402
from polyfocal._backend import use_backend  # noqa: E402

os.environ.setdefault("POLYFOCAL_COMPILE", "wait")  # warm-ups compile: time kernels, not the eager stand-in


REFERENCE_MAX_ELEMENTS = 50_000_000


@dataclass
class Case:
    loss: str
    family: str  # "sigmoid" or "softmax"
    n: int
    c: int
    impls: dict  # label -> function(logits, data) -> scalar loss
    label_smoothing: float = 0.0  # also given to F.cross_entropy, the softmax family's yardstick


def sigmoid_cases(n: int, c: int) -> list[Case]:
    on = lambda fn, key: lambda x, d: fn(x, d[key])  # noqa: E731
    cases = [
        Case("sigmoid_focal_loss", "sigmoid", n, c, {
            "composition (torchvision-style)": on(comp.torchvision_sigmoid_focal, "one_hot"),
            "polyfocal": on(pf.sigmoid_focal_loss, "labels")}),
        Case("poly1_focal_loss", "sigmoid", n, c, {
            "composition (PolyLoss listing)": on(comp.poly1_focal_listing, "one_hot"),
            "polyfocal": on(pf.poly1_focal_loss, "labels")}),
        Case("quality_focal_loss", "sigmoid", n, c, {
            "composition (mmdet-style)": on(comp.mmdet_quality_focal, "soft"),
            "polyfocal": lambda x, d: pf.quality_focal_loss(x, (d["labels"], d["scores"]))}),
        Case("ghm_c_loss", "sigmoid", n, c, {
            "composition (mmdet loop over bins)": on(comp.mmdet_ghm_c, "one_hot"),
            "polyfocal": on(pf.ghm_c_loss, "labels")}),
    ]
    # the target form torchvision, kornia and mmdet users pass: a float one-hot tensor
    return cases + [Case(f"{case.loss}, float one-hot", "sigmoid", n, c,
                         {**case.impls, "polyfocal": on(getattr(pf, case.loss), "one_hot")})
                    for case in cases if case.loss in ("sigmoid_focal_loss", "ghm_c_loss")]


def softmax_cases(n: int, c: int) -> list[Case]:
    return [
        Case("cross_entropy", "softmax", n, c, {
            "polyfocal": lambda x, d: pf.cross_entropy(x, d["labels"])}),
        Case("focal_loss", "softmax", n, c, {
            "composition (kornia-style)": lambda x, d: comp.kornia_softmax_focal(x, d["labels"]),
            "polyfocal": lambda x, d: pf.focal_loss(x, d["labels"])}),
        Case("poly1_cross_entropy", "softmax", n, c, {
            "composition (PolyLoss listing)": lambda x, d: comp.poly1_cross_entropy_listing(x, d["labels"]),
            "polyfocal": lambda x, d: pf.poly1_cross_entropy(x, d["labels"])}),
    ]


def smoothing_cases(n: int, c: int, smoothing: float = 0.1) -> list[Case]:
    """Label smoothing, the usual ImageNet recipe: every class is a target, not only the label's."""
    return [
        Case("focal_loss, label_smoothing=0.1", "softmax", n, c, {
            "polyfocal": lambda x, d: pf.focal_loss(x, d["labels"], label_smoothing=smoothing)}, smoothing),
        Case("poly1_cross_entropy, label_smoothing=0.1", "softmax", n, c, {
            "polyfocal": lambda x, d: pf.poly1_cross_entropy(x, d["labels"], label_smoothing=smoothing)}, smoothing),
    ]


def make_data(case: Case, device) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(case.n, case.c, generator=g).to(device)
    if case.family == "softmax":
        return logits, {"labels": torch.randint(0, case.c, (case.n,), generator=g).to(device)}
    # dense detection: about 1% positive locations, the rest background (label C)
    labels = torch.where(torch.rand(case.n, generator=g) < 0.01,
                         torch.randint(0, case.c, (case.n,), generator=g), torch.tensor(case.c)).to(device)
    scores = torch.rand(case.n, generator=g).to(device)
    one_hot = F.one_hot(labels, case.c + 1)[:, : case.c].to(logits.dtype)
    return logits, {"labels": labels, "scores": scores, "one_hot": one_hot, "soft": one_hot * scores[:, None]}


def forward_backward(fn, logits, data):
    x = logits.detach().requires_grad_()
    fn(x, data).backward()
    return x.grad


def saved_bytes(fn, logits, data) -> int:
    """Bytes autograd keeps for backward after the forward, the logits themselves excluded."""
    x = logits.detach().requires_grad_()
    saved = []

    def pack(t):
        saved.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn(x, data)
    gc.collect()
    alive = {}
    for ref in saved:
        t = ref()
        if t is not None and t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            alive[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    del loss
    return sum(alive.values())


def peak_bytes(fn, logits, data) -> int:
    """Peak of live allocations during forward+backward beyond what was live before (CUDA: the
    caching allocator's statistics; CPU: allocator events recorded by the profiler, per op)."""
    if logits.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        forward_backward(fn, logits, data)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward_backward(fn, logits, data)
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_round_robin(impls: dict, logits, data, repeats: int) -> dict:
    times = {label: [] for label in impls}
    for _ in range(repeats):
        for label, fn in impls.items():
            synchronize(logits.device)
            start = time.perf_counter()
            fn(logits, data)
            synchronize(logits.device)
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(ts) for label, ts in times.items()}


def run_case(case: Case, device, repeats: int) -> dict:
    logits, data = make_data(case, device)
    polyfocal = case.impls["polyfocal"]

    def engine(name):
        def run(x, d):
            with use_backend(name):
                return forward_backward(polyfocal, x, d)
        return run

    runs = {"polyfocal fused": engine("fused")}
    if device.type == "cuda" and case.family == "softmax":
        runs["polyfocal triton"] = engine("triton")  # the hand-written row kernels
    if case.n * case.c <= REFERENCE_MAX_ELEMENTS:  # the reference engine's 5-6 logits of memory
        runs["polyfocal reference"] = engine("reference")
    for label, fn in case.impls.items():
        if label != "polyfocal":
            runs[label] = lambda x, d, fn=fn: forward_backward(fn, x, d)
    if case.family == "softmax":
        runs["F.cross_entropy"] = lambda x, d: forward_backward(
            lambda a, b: F.cross_entropy(a, b["labels"], label_smoothing=case.label_smoothing), x, d)
    runs["tensor copy"] = lambda x, d: x.clone()
    for fn in runs.values():  # warm up (the fused engine compiles here)
        fn(logits, data)
    medians = time_round_robin(runs, logits, data, repeats)

    logit_bytes = logits.numel() * logits.element_size()
    traffic = logit_bytes * 2 + sum(v.numel() * v.element_size() for k, v in data.items() if k == "labels")
    memory = {}
    for label, fn in [("polyfocal fused", "fused"), ("polyfocal reference", "reference")]:
        if label not in runs:
            continue
        with use_backend(fn):
            memory[label] = (saved_bytes(polyfocal, logits, data), peak_bytes(polyfocal, logits, data))
    for label, fn in case.impls.items():
        if label != "polyfocal":
            memory[label] = (saved_bytes(fn, logits, data), peak_bytes(fn, logits, data))
    baseline = next((k for k in runs if k.startswith("composition")), None)
    rows = []
    for label, seconds in medians.items():
        if label == "tensor copy":
            continue
        saved, peak = memory.get(label, (None, None))
        rows.append({
            "impl": label,
            "speedup_vs_composition": medians[baseline] / seconds if baseline else None,
            "speedup_vs_F_cross_entropy": medians["F.cross_entropy"] / seconds if "F.cross_entropy" in medians else None,
            "time_vs_copy": seconds / medians["tensor copy"],
            "bandwidth_vs_copy": (traffic / seconds) / (2 * logit_bytes / medians["tensor copy"]),
            "saved_vs_logits": None if saved is None else saved / logit_bytes,
            "peak_vs_logits": None if peak is None else peak / logit_bytes,
        })
    return {"loss": case.loss, "shape": [case.n, case.c], "rows": rows}


def print_table(result: dict) -> None:
    def cell(value, width, spec, unit=""):
        return ("-" if value is None else format(value, spec) + unit).rjust(width)
    print(f"\n{result['loss']}  {result['shape'][0]} x {result['shape'][1]}")
    print(f"  {'implementation':<36}{'vs comp.':>9}{'vs F.ce':>9}{'t/copy':>8}{'bw/copy':>9}{'saved':>7}{'peak':>7}")
    for r in result["rows"]:
        print(f"  {r['impl']:<36}{cell(r['speedup_vs_composition'], 9, '.1f', 'x')}"
              f"{cell(r['speedup_vs_F_cross_entropy'], 9, '.2f', 'x')}{cell(r['time_vs_copy'], 8, '.1f')}"
              f"{cell(r['bandwidth_vs_copy'], 9, '.2f')}{cell(r['saved_vs_logits'], 7, '.1f', 'x')}"
              f"{cell(r['peak_vs_logits'], 7, '.1f', 'x')}")


def markdown_table(report: dict) -> str:
    """The results as one markdown table (for the README)."""
    def cell(value, spec, unit=""):
        return "-" if value is None else format(value, spec) + unit
    lines = ["| loss | shape | implementation | vs composition | vs F.cross_entropy | time / copy | saved | peak |",
             "|---|---|---|---|---|---|---|---|"]
    for result in report["results"]:
        shape = " x ".join(str(s) for s in result["shape"])
        for r in result["rows"]:
            lines.append(f"| {result['loss']} | {shape} | {r['impl']} | {cell(r['speedup_vs_composition'], '.1f', 'x')} | "
                         f"{cell(r['speedup_vs_F_cross_entropy'], '.2f', 'x')} | {cell(r['time_vs_copy'], '.1f')} | "
                         f"{cell(r['saved_vs_logits'], '.1f', 'x')} | {cell(r['peak_vs_logits'], '.1f', 'x')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes only (a smoke run)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.quick:
        cases = sigmoid_cases(20_000, 80) + softmax_cases(1024, 1000) + smoothing_cases(1024, 1000)
    elif device.type == "cuda":
        cases = sigmoid_cases(200_000, 80) + softmax_cases(16_384, 32_768)
    else:
        cases = (sigmoid_cases(200_000, 80) + softmax_cases(4096, 1000) + smoothing_cases(4096, 1000)
                 + softmax_cases(8192, 32_000))
    machine = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
               "threads": torch.get_num_threads()}
    print(f"polyfocal benchmark on {machine}; medians of {args.repeats} interleaved rounds, ratios only")
    print("columns: speedup vs the composition, vs F.cross_entropy; time / same-size copy; "
          "minimal-traffic bandwidth / copy bandwidth; saved for backward and peak, in logits sizes")
    results = []
    for case in cases:
        result = run_case(case, device, args.repeats)
        print_table(result)
        results.append(result)
        gc.collect()
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"{device.type}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    report = {"machine": machine, "repeats": args.repeats, "results": results}
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown_table(report))
    print(f"\nwrote {out} and its markdown table")


if __name__ == "__main__":
    main()
