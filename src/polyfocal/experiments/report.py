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

from .figures import DPI, errorbars, legible, panels, seed_dots
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
    """The loss with the best mean; none where that mean's interval spans the metric's whole range (it
    says nothing then)."""
    means = {loss: s[metric]["mean"] for loss, s in summary.items() if not math.isnan(s[metric]["mean"])}
    if not means:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    best = pick(means, key=means.get)
    low, high = metric_range(metric)
    return None if summary[best][metric]["low"] <= low and summary[best][metric]["high"] >= high else best


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


@legible
def compare_figure(results: dict, summary: dict):
    """The figure of a comparison: per metric, each loss's mean and 95% interval with its seeds
    (dots, not bars, so the axis may zoom without exaggerating), then the training curves: the training
    loss relative to its own first epoch (losses of different formulas have no common scale), and the
    test metric."""
    metrics, losses = results["metrics"], list(summary)
    fig, axes = panels(len(metrics) + 2)
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
        ax.set_xticks(x, losses, rotation=30, ha="right")
        ax.set_xlabel("loss")
        ax.set_ylabel(f"test {metric}" + (" (lower better)" if metric in LOWER_IS_BETTER else ""))
        ax.set_title("mean, 95% interval, seeds")
    for ax, key in zip(axes[len(metrics):], ("train_loss", f"test_{results['primary']}")):
        _curves(ax, key, results, losses, colors)
    axes[-1].legend()
    fig.suptitle(f"{results['config']['task']}: {len(results['config']['seeds'])} seeds, 95% t-intervals")
    return fig


def _curves(ax, key: str, results: dict, losses: list, colors: list) -> None:
    """Per loss, the mean over seeds of a curve (band: min to max); the training loss relative to epoch 1."""
    relative = key == "train_loss"
    for color, loss in zip(colors, losses):
        curves = [r["curves"] for r in results["runs"] if r["loss"] == loss and r["curves"][key]]
        if not curves:
            continue
        values = np.array([c[key] for c in curves], dtype=np.float64)
        if relative:
            values = values / values[:, :1]
        epochs = curves[0]["epoch"]
        ax.plot(epochs, np.nanmean(values, 0), color=color, label=loss, lw=1.5)
        if len(values) > 1:
            ax.fill_between(epochs, np.nanmin(values, 0), np.nanmax(values, 0), color=color, alpha=0.15)
    ax.set_xlabel("epoch")
    if relative:
        ax.set_yscale("log")
        ax.set_ylabel("training loss / its first epoch's")
    else:
        ax.set_ylabel(key.replace("_", " "))
    ax.set_title("mean, min-max over seeds")


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
        compare_figure(results, summary).savefig(image, dpi=DPI)
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
