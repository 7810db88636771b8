"""Summaries of :func:`~polyfocal.experiments.train.compare` results: table, JSON, Markdown, PNG.

    >>> summary = summarize(results)           # {loss: {metric: {mean, low, high, n}}}  # doctest: +SKIP
    >>> print(format_table(results))           # doctest: +SKIP
    >>> paths = write_report(results, "runs/digits")  # results.json, report.md, report.png  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .figures import errorbars, seed_dots
from .metrics import metric_range, t_interval
from .tables import Table
from .tasks import LOWER_IS_BETTER

__all__ = ["summarize", "format_table", "write_report"]


def _losses(results) -> list[str]:
    return list(dict.fromkeys(run["loss"] for run in results["runs"]))


def summarize(results: dict) -> dict:
    """Per loss and metric: mean and 95% t-interval over seeds, clipped to the metric's range
    (``low``/``high`` NaN for one seed)."""
    out = {}
    for loss in _losses(results):
        runs = [r for r in results["runs"] if r["loss"] == loss]
        out[loss] = {}
        for metric in results["metrics"]:
            mean, low, high = t_interval([r["metrics"][metric] for r in runs], metric_range(metric))
            out[loss][metric] = {"mean": mean, "low": low, "high": high, "n": len(runs)}
    return out


def _cell(stats: dict) -> str:
    if math.isnan(stats["mean"]):
        return "n/a"
    if math.isnan(stats["low"]):
        return f"{stats['mean']:.4f}"
    return f"{stats['mean']:.4f} [{stats['low']:.4f}, {stats['high']:.4f}]"


def _best(summary: dict, metric: str) -> str | None:
    means = {loss: s[metric]["mean"] for loss, s in summary.items() if not math.isnan(s[metric]["mean"])}
    if not means:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(means, key=means.get)


def format_table(results: dict, markdown: bool = False) -> str:
    """One row per loss: each metric's mean [95% interval]; the best mean of each metric starred."""
    summary, metrics = summarize(results), results["metrics"]
    best = {m: _best(summary, m) for m in metrics}
    header = ["loss"] + [m + (" (lower better)" if m in LOWER_IS_BETTER else "") for m in metrics]
    rows = [[loss] + [_cell(s[m]) + (" *" if best[m] == loss else "") for m in metrics]
            for loss, s in summary.items()]
    table = Table(header, rows)
    return table.markdown() if markdown else table.text()


def partial_output(out: str) -> str:
    """Where an interrupted run writes what finished: ``out`` when it holds no earlier run's results, else
    a new folder ``out/interrupted-N``, so that an interrupted run overwrites nothing the user had."""
    if not any(os.path.exists(os.path.join(out, name)) for name in ("results.json", "report.md", "report.html")):
        return out
    number = 1
    while os.path.exists(os.path.join(out, f"interrupted-{number}")):
        number += 1
    return os.path.join(out, f"interrupted-{number}")


def print_written(paths: dict[str, str]) -> None:
    """Tell the user where each written file is."""
    for path in paths.values():
        print(f"wrote {path}")


def json_safe(value):
    if hasattr(value, "as_json"):  # a verdict: its outcome and text
        return json_safe(value.as_json())
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def compare_figure(results: dict, summary: dict):
    """The figure of a comparison: per metric, each loss's mean and 95% interval with its seeds
    (dots, not bars, so the axis may zoom without exaggerating), then the training curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics, losses = results["metrics"], list(summary)
    panels = len(metrics) + 2  # a grid at most three panels wide, each at a readable size
    ncols = min(3, panels)
    fig = Figure(figsize=(4.2 * ncols, 3.5 * math.ceil(panels / ncols)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(math.ceil(panels / ncols), ncols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    x = np.arange(len(losses))
    colors = [f"C{i % 10}" for i in range(len(losses))]
    for ax, metric in zip(axes, metrics):  # dots and intervals, not bars: the axis need not start at 0
        means = np.array([summary[l][metric]["mean"] for l in losses])
        low = np.array([summary[l][metric]["low"] for l in losses])
        high = np.array([summary[l][metric]["high"] for l in losses])
        for i, loss in enumerate(losses):
            errorbars(ax, [i], [summary[loss][metric]], colors[i], fmt="o")
            seed_dots(ax, [i + 0.15], results, [loss], metric, colors[i], alpha=0.5)
        seeds = [r["metrics"][metric] for r in results["runs"] if r["loss"] in summary]
        finite = np.concatenate([means, low, high, np.asarray(seeds, dtype=float)])  # a collapsed seed stays in view
        finite = finite[np.isfinite(finite)]
        if finite.size:
            pad = 0.15 * max(finite.max() - finite.min(), 1e-3)
            ax.set_ylim(finite.min() - pad, finite.max() + pad)
        ax.set_xticks(x, losses, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric + (" (lower better)" if metric in LOWER_IS_BETTER else ""), fontsize=10)
    curve_keys = ("train_loss", f"test_{results['primary']}")
    for ax, key in zip(axes[len(metrics):panels], curve_keys):
        for i, loss in enumerate(losses):
            curves = [r["curves"] for r in results["runs"] if r["loss"] == loss and r["curves"][key]]
            if not curves:
                continue
            values = np.array([c[key] for c in curves], dtype=np.float64)
            epochs = curves[0]["epoch"]
            ax.plot(epochs, np.nanmean(values, 0), color=colors[i], label=loss, lw=1.5)
            if len(values) > 1:
                ax.fill_between(epochs, np.nanmin(values, 0), np.nanmax(values, 0), color=colors[i], alpha=0.15)
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " ") + " (mean, min-max over seeds)", fontsize=10)
        if key == "train_loss":
            ax.set_yscale("log")
    axes[panels - 1].legend(fontsize=7)
    fig.suptitle(f"{results['config']['task']}: {len(results['config']['seeds'])} seeds, "
                 f"95% t-intervals", fontsize=11)
    return fig


def write_report(results: dict, out: str) -> dict[str, str]:
    """Write ``results.json``, ``report.md`` and (with matplotlib) ``report.png`` under ``out``."""
    os.makedirs(out, exist_ok=True)
    summary = summarize(results)
    paths = {"json": os.path.join(out, "results.json"), "markdown": os.path.join(out, "report.md")}
    with open(paths["json"], "w") as handle:
        json.dump(json_safe({**results, "summary": summary}), handle, indent=1)
    image = None
    try:
        image = os.path.join(out, "report.png")
        compare_figure(results, summary).savefig(image, dpi=110)
        paths["png"] = image
    except ImportError:
        image = None
    config, task = results["config"], results["task"]
    lines = [f"# Loss comparison: {config['task']}", "",
             f"{task['description']}. Train {task['n_train']}, test {task['n_test']}; "
             f"train class counts {task['train_class_counts']}.", "",
             f"{len(config['seeds'])} seeds ({', '.join(map(str, config['seeds']))}), {config['epochs']} epochs, "
             f"{config['optimizer']} lr {config['lr']:g}, batch {config['batch_size']}, backend "
             f"{config['backend']}. Test metrics at the final epoch; mean [95% t-interval over seeds, clipped to the "
             f"metric's range]; "
             f"* marks the best mean (overlapping intervals mean no clear winner).", "",
             format_table(results, markdown=True), ""]
    if image:
        lines += ["![metrics and learning curves](report.png)", ""]
    else:
        lines += ["(no figure: matplotlib is not installed)", ""]
    lines += ["Losses: " + "; ".join(f"`{l['label']}` = {l['name']}{l['params'] or ''}" for l in config["losses"]),
              "", "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()), ""]
    if results.get("unfinished"):
        lines[2:2] = [f"**Interrupted:** not finished: {', '.join(results['unfinished'])}.", ""]
    with open(paths["markdown"], "w") as handle:
        handle.write("\n".join(lines))
    return paths
