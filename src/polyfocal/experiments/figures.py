"""The marks every report's figures share (``compare``, ``reproduce``): a variant's mean and 95% interval
over seeds, and the seeds themselves as dots (not bars, so an axis may zoom without exaggerating)."""

from __future__ import annotations

import numpy as np


def errorbars(ax, x, stats, color, label=None, fmt="o-"):
    """Means at ``x`` with their intervals (``stats``: dicts of ``mean``, ``low``, ``high``; an interval
    that is NaN, one seed, draws none)."""
    means = np.array([s["mean"] for s in stats], dtype=float)
    low = np.array([s["low"] for s in stats], dtype=float)
    high = np.array([s["high"] for s in stats], dtype=float)
    err = np.nan_to_num(np.vstack([means - low, high - means]))
    ax.errorbar(x, means, yerr=err, fmt=fmt, color=color, capsize=4, lw=1.2, label=label)


def seed_dots(ax, x, results, labels, metric, color, alpha=0.35):
    """Each run's ``metric`` as a dot at the ``x`` of its variant (``labels``, in the order of ``x``)."""
    for xi, label in zip(x, labels):
        values = [r["metrics"][metric] for r in results["runs"] if r["loss"] == label]
        ax.plot(np.full(len(values), xi, dtype=float), values, ".", color=color, alpha=alpha)
