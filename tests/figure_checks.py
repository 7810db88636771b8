"""What a report's figure must hold to be read (the tests of compare's, reproduce's and sweep's figures)."""

from __future__ import annotations

from itertools import combinations

from polyfocal.experiments.figures import DPI, TEXT_PT


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def overlapping_tick_labels(fig) -> list[str]:
    """Pairs of tick labels on one axis whose drawn boxes overlap ("-0.0050.000")."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in visible_axes(fig):
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels]
            found += [f"{ax.get_title()!r}: {a!r} and {b!r}" for (a, box_a), (b, box_b) in combinations(boxes, 2)
                      if box_a.overlaps(box_b)]
    return found


def unlabelled_axes(fig) -> list[str]:
    """Visible axes without an x or a y label."""
    return [f"{ax.get_title()!r}: x {ax.get_xlabel()!r}, y {ax.get_ylabel()!r}" for ax in visible_axes(fig)
            if not (ax.get_xlabel().strip() and ax.get_ylabel().strip())]


def small_text(fig) -> list[str]:
    """Text smaller than the report's :data:`TEXT_PT` (ticks, labels, titles, legends)."""
    fig.canvas.draw()
    return [f"{t.get_text()!r} at {t.get_fontsize()} pt" for t in fig.findobj(lambda o: hasattr(o, "get_fontsize"))
            if t.get_visible() and getattr(t, "get_text", lambda: "")().strip() and t.get_fontsize() < TEXT_PT]


def assert_legible(fig, width_px: int = 1100) -> None:
    """Unscaled in the HTML report (at most ``width_px`` wide at its DPI), text at full size, ticks apart,
    axes labelled."""
    assert fig.get_figwidth() * DPI <= width_px, fig.get_figwidth()
    for problems in (small_text(fig), overlapping_tick_labels(fig), unlabelled_axes(fig)):
        assert not problems, problems
