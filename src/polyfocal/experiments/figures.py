"""What every report's figures share (``compare``, ``reproduce``, ``sweep``): one legible layout, and the
marks of a variant's mean and 95% interval over seeds, with the seeds themselves as dots (not bars, so an
axis may zoom without exaggerating).

The layout is sized for the HTML report: at :data:`DPI`, two panels of :data:`PANEL` side by side are
1100 px wide, the report's text column, so the browser shows them unscaled; text is :data:`TEXT_PT` points,
15.3 px there, as large as the report's 15 px body text. A grid is at most two panels wide.
"""

from __future__ import annotations

import functools
import math

import numpy as np

DPI = 100
TEXT_PT = 11
PANEL = (5.5, 4.0)  # inches
COLUMNS = 2
_TEXT = {key: TEXT_PT for key in ("font.size", "axes.titlesize", "axes.labelsize", "xtick.labelsize",
                                  "ytick.labelsize", "legend.fontsize", "figure.titlesize")}


def legible(build):
    """Build a figure with text at :data:`TEXT_PT` (text takes its size when made, so the whole build runs
    under the setting)."""
    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(_TEXT):
            return build(*args, **kwargs)
    return wrapper


def panels(count: int, columns: int = COLUMNS, first_wide: bool = False):
    """A Figure with ``count`` axes in a grid at most ``columns`` wide; returns ``(figure, axes)``, the axes
    in reading order (a spare cell of the last row stays empty). ``first_wide``: the first axes spans the
    whole top row (room for variants' names side by side)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rest = count - 1 if first_wide else count
    ncols = max(1, min(columns, rest))
    nrows = math.ceil(rest / ncols) + first_wide
    fig = Figure(figsize=(PANEL[0] * (columns if first_wide else ncols), PANEL[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(nrows, ncols)
    axes = [fig.add_subplot(grid[0, :])] if first_wide else []
    cells = [grid[r, c] for r in range(int(first_wide), nrows) for c in range(ncols)]
    axes += [fig.add_subplot(cell) for cell in cells[:rest]]
    return fig, axes


def few_ticks(ax, axis: str = "x", bins: int = 4) -> None:
    """At most ``bins`` + 1 ticks on ``axis``: numbers such as ``-0.005`` at :data:`TEXT_PT` overlap otherwise."""
    from matplotlib.ticker import MaxNLocator

    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(nbins=bins))


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
