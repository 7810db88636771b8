"""Pictures of the PolyLoss lens, one function per figure (needs ``pip install 'polyfocal[plots]'``).

Every function returns a :class:`matplotlib.figure.Figure` drawn on an Agg canvas (no
pyplot, no global backend change, nothing left open) and, given ``path``, also saves it
as a PNG. The numbers come from :mod:`polyfocal.analysis`; nothing in the library
imports this module.

    >>> from polyfocal import plots
    >>> fig = plots.plot_coefficients(["focal_loss", "poly1_cross_entropy"],
    ...                               params={"focal_loss": {"gamma": 2.0}})  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import torch

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("polyfocal.plots needs matplotlib: pip install 'polyfocal[plots]'") from error

from . import analysis
from ._errors import InputValueError

__all__ = [
    "plot_coefficients", "plot_truncation", "plot_loss_curves", "plot_gradient_share",
    "plot_gradient_density",
]

_REFERENCE = dict(color="0.45", linestyle="--", lw=1, marker="o", markersize=11, markerfacecolor="none",
                  markeredgewidth=1.5, zorder=1)
_SERIES = dict(marker="o", markersize=6, lw=1, alpha=0.9, zorder=3)


def _figure(ncols: int, width: float = 5.6, height: float = 4.3) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _grid(ax) -> None:
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.1)


def _finish(fig: Figure, path) -> Figure:
    if path is not None:
        path = os.fspath(path)
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fig.savefig(path, format="png", dpi=120)
    return fig


def _describe(name: str, params: Mapping) -> str:
    """``focal_loss (gamma=2)``: the name and the parameters that shape it."""
    def fmt(value):
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, torch.Tensor):  # a state (AdaFocal's 15 gammas): its range, not every value
            values = value.flatten().tolist()
            return fmt(tuple(values)) if len(values) <= 4 else f"{len(values)} in [{min(values):.3g}, {max(values):.3g}]"
        if isinstance(value, (tuple, list)):
            return "(" + ", ".join(fmt(v) for v in value) + ")"
        return str(value)
    inner = ", ".join(f"{k}={fmt(v)}" for k, v in params.items() if v is not None)
    return f"{name} ({inner})" if inner else name


def _positive_or_symlog(ax, values: np.ndarray) -> None:
    """A log y-axis with plain tick labels; symlog when some value is negative."""
    nonzero = values[values != 0]
    if np.all(nonzero > 0):
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        if nonzero.max() / nonzero.min() < 30:  # within about a decade: label the minor ticks too
            ax.yaxis.set_minor_formatter(plain)
    else:
        ax.set_yscale("symlog", linthresh=1e-2)


# --- Fig. 1 of PolyLoss: the coefficients ---------------------------------------------------------

def plot_coefficients(losses: str | Sequence[str] = ("focal_loss", "poly1_cross_entropy"), *,
                      n_terms: int = 10, params: Mapping[str, Mapping] | None = None,
                      path=None) -> Figure:
    """The coefficient of each power of ``(1 - p_t)``, against cross-entropy's ``1/j`` (PolyLoss Fig. 1).

    Left: the loss's coefficients ``a_j`` at the powers ``j + gamma``: focal loss moves
    cross-entropy's points right by gamma (a horizontal shift), Poly-1 lifts the first one by
    epsilon (a vertical shift). Right: the gradient's coefficients ``a_j (j + gamma)`` at the
    powers ``j + gamma - 1`` (all 1 for cross-entropy). Log y-axis (symlog if a coefficient
    is negative); zero coefficients (a dropped tail) are not drawn.

    Args:
        losses: names from :data:`polyfocal.analysis.SERIES_LOSSES` (aliases allowed).
        n_terms: terms to draw, >= 1.
        params: loss name (as given) -> its series parameters, e.g. ``{"focal_loss": {"gamma": 2}}``.
        path: where to save the PNG (None: do not save).

    Returns:
        The figure.
    """
    losses = [losses] if isinstance(losses, str) else list(losses)
    params = dict(params or {})
    reference = analysis.poly_coefficients("cross_entropy", n_terms)
    series = [analysis.poly_coefficients(name, n_terms, **params.get(name, {})) for name in losses]
    fig, (ax_loss, ax_grad) = _figure(2)
    ax_loss.plot(reference.powers, reference.coefficients, label="cross_entropy: 1/j", **_REFERENCE)
    ax_grad.plot(reference.gradient_powers, -reference.gradient_coefficients, label="cross_entropy: 1",
                 **_REFERENCE)
    all_values, grad_values = [reference.coefficients], [-reference.gradient_coefficients]
    for s in series:
        if s.loss == "cross_entropy":
            continue
        keep = s.coefficients != 0
        label = _describe(s.loss, s.params)
        if not keep.all():
            label += f" (0 from power {s.powers[~keep][0]:g} on)"
        (line,) = ax_loss.plot(s.powers[keep], s.coefficients[keep], label=label, **_SERIES)
        ax_grad.plot(s.gradient_powers[keep], -s.gradient_coefficients[keep], label=label,
                     color=line.get_color(), **_SERIES)
        grad_values.append(-s.gradient_coefficients)
        all_values.append(s.coefficients)
        _annotate_shift(ax_loss, s, line.get_color())
    values = np.concatenate(all_values)
    _positive_or_symlog(ax_loss, values)
    _positive_or_symlog(ax_grad, np.concatenate(grad_values))
    ax_loss.set_xlabel("power k of (1 - p_t)")
    ax_loss.set_ylabel("coefficient a_k in the loss")
    ax_loss.set_title("Loss = sum_k a_k (1 - p_t)^k")
    ax_grad.set_xlabel("power of (1 - p_t) in dL/dp_t")
    ax_grad.set_ylabel("|coefficient| in the gradient (a_k k)")
    ax_grad.set_title("-dL/dp_t = sum_k a_k k (1 - p_t)^(k-1)")
    for ax in (ax_loss, ax_grad):
        _grid(ax)
        ax.legend(fontsize="small")
    fig.suptitle("PolyLoss view: focal shifts the powers right, Poly-1 lifts the first coefficient")
    return _finish(fig, path)


def _annotate_shift(ax, s: analysis.PolyCoefficients, color) -> None:
    """An arrow from cross-entropy's first term (1, 1) to this loss's first term."""
    x, y = s.powers[0], s.coefficients[0]
    if y <= 0 or (x == 1.0 and y == 1.0):
        return
    text = "+gamma: horizontal shift" if y == 1.0 else (
        "epsilon: vertical shift" if x == 1.0 else "shifted")
    ax.annotate("", xy=(x, y), xytext=(1.0, 1.0),
                arrowprops=dict(arrowstyle="->", color=color, lw=1.5, shrinkA=4, shrinkB=4))
    ax.annotate(text, xy=((1.0 + x) / 2, np.sqrt(y)), xytext=(4, 6), textcoords="offset points",
                color=color, fontsize="small")


# --- Theorem 1: truncating the series -------------------------------------------------------------

_FLOOR = 1e-13  # below this, R_N from its closed form is float64 rounding noise


def plot_truncation(*, delta: float = 0.01, zeta: float = 1e-3,
                    p_values: Sequence[float] = (0.01, 0.05, 0.2, 0.5, 0.9),
                    max_terms: int | None = None, path=None) -> Figure:
    """How fast the series remainder ``R_N`` vanishes, and the terms Theorem 1 asks for.

    Left: ``R_N(p)`` against N for a few ``p``. Right: the worst case on ``[delta, 1]``
    (at ``p = delta``) of ``|R_N|`` and ``|R'_N|``, the tolerance ``zeta``, the bound
    ``log_(1-delta)(delta zeta)`` and the N found numerically. Values below 1e-13 (float64
    rounding of the closed form) are not drawn.

    Args:
        delta: smallest ``p_t`` to cover, in (0, 1).
        zeta: tolerance, > 0.
        p_values: the probabilities of the left panel, in (0, 1].
        max_terms: the largest N drawn (default: 1.3 times the bound, at least 50).
        path: where to save the PNG (None: do not save).

    Returns:
        The figure.
    """
    bound = analysis.theorem1_bound(zeta, delta)
    needed = analysis.terms_needed(zeta, delta)
    if max_terms is None:
        max_terms = max(50, int(1.3 * max(bound, needed)))
    n = np.arange(1, max_terms + 1)
    fig, (ax_p, ax_sup) = _figure(2)
    rem = analysis.remainders(np.asarray(p_values, dtype=np.float64), max_terms)
    for p, r in zip(p_values, rem):
        ax_p.plot(n, np.where(r > _FLOOR, r, np.nan), label=f"p = {p:g}")
    ax_p.set_xscale("log")
    ax_p.set_yscale("log")
    ax_p.set_xlabel("N, terms kept")
    ax_p.set_ylabel("remainder R_N(p)")
    ax_p.set_title("R_N(p) = -log p - sum_{j<=N} (1-p)^j / j")

    worst = analysis.remainders(delta, max_terms)
    worst_grad = np.abs(analysis.remainder_derivative(delta, 1)) * (1 - delta) ** (n - 1.0)
    ax_sup.plot(n, np.where(worst > _FLOOR, worst, np.nan), label=f"sup |R_N| on [{delta:g}, 1]")
    ax_sup.plot(n, np.where(worst_grad > _FLOOR, worst_grad, np.nan), label=f"sup |R'_N| on [{delta:g}, 1]")
    ax_sup.axhline(zeta, color="0.3", linestyle=":", label=f"zeta = {zeta:g}")
    if 0 < bound <= max_terms:
        ax_sup.axvline(bound, color="C3", linestyle="--",
                       label=f"Theorem 1: log_(1-delta)(delta zeta) = {bound:.1f}")
    ax_sup.axvline(needed, color="C2", linestyle=":", label=f"numerical N = {needed}")
    ax_sup.set_yscale("log")
    ax_sup.set_xlabel("N, terms kept")
    ax_sup.set_ylabel("worst case on [delta, 1]")
    ax_sup.set_title(f"Terms needed for zeta = {zeta:g}, delta = {delta:g}")
    for ax in (ax_p, ax_sup):
        _grid(ax)
        ax.legend(fontsize="small")
    fig.suptitle("Dropping high-order terms of cross-entropy (PolyLoss, Theorem 1)")
    return _finish(fig, path)


# --- the losses as functions of p_t ---------------------------------------------------------------

def plot_loss_curves(names: str | Sequence[str] | analysis.LossCurves = ("cross_entropy", "focal_loss",
                                                                         "poly1_cross_entropy"),
                     *, p=None, params: Mapping[str, Mapping] | None = None, versus: str = "p_t",
                     path=None) -> Figure:
    """Each loss and the magnitude of its gradient, as functions of ``p_t`` (or of the logit margin).

    Args:
        names: loss names (aliases allowed), or a :class:`~polyfocal.analysis.LossCurves`
            already computed.
        p: the grid of ``p_t`` (see :func:`~polyfocal.analysis.loss_curves`).
        params: loss name (as given) -> its keyword arguments.
        versus: ``"p_t"`` (gradient ``|dL/dp_t|``, log scale) or ``"margin"`` (the logit
            margin ``log(p_t / (1 - p_t))`` and ``|dL/d margin|``).
        path: where to save the PNG (None: do not save).

    Returns:
        The figure.

    Raises:
        ValueError: ``versus`` not one of ``"p_t"``, ``"margin"``, or the errors of
            :func:`~polyfocal.analysis.loss_curves`.
    """
    if versus not in ("p_t", "margin"):
        raise InputValueError(f"`versus` must be 'p_t' or 'margin'; got {versus!r}")
    if isinstance(names, analysis.LossCurves):
        curves = names
    else:
        curves = analysis.loss_curves(names, p, **dict(params or {}))
    x = curves.p_t if versus == "p_t" else curves.margin
    grads = curves.grad_p if versus == "p_t" else curves.grad_margin
    fig, (ax_loss, ax_grad) = _figure(2)
    for name in curves.loss:
        label = _describe(name, curves.params[name])
        ax_loss.plot(x, curves.loss[name], label=label)
        ax_grad.plot(x, np.where(grads[name] > 0, grads[name], np.nan), label=label)
    xlabel = "p_t, probability of the target" if versus == "p_t" else "logit margin log(p_t / (1 - p_t))"
    ax_loss.set_xlabel(xlabel)
    ax_loss.set_ylabel("loss L")
    ax_loss.set_title("Loss")
    ax_grad.set_xlabel(xlabel)
    if versus == "p_t":
        ax_grad.set_yscale("log")
        ax_grad.set_ylabel("|dL/dp_t|")
        ax_grad.set_title("Gradient magnitude w.r.t. p_t")
    else:
        ax_grad.set_ylabel("|dL/d margin|")
        ax_grad.set_title("Gradient magnitude w.r.t. the logit margin")
    for ax in (ax_loss, ax_grad):
        _grid(ax)
        ax.legend(fontsize="small")
    fig.suptitle("Losses of the cross-entropy family as functions of one example's confidence")
    return _finish(fig, path)


# --- Fig. 3b of PolyLoss: the first term's share of the gradient ----------------------------------

def plot_gradient_share(histories=None, *, ks: Sequence[int] = (1, 2, 5), path=None) -> Figure:
    """The share of cross-entropy's gradient carried by its first terms.

    Left: the closed form ``1 - (1 - p_t)^k`` for each ``k`` in ``ks`` (``k = 1``: the share
    is ``p_t``). Right (when ``histories`` is given): the batch-mean share recorded during
    training (PolyLoss Fig. 3b).

    Args:
        histories: None, a :class:`~polyfocal.analysis.GradientShareTracker`, a sequence of
            floats, or a mapping label -> tracker or sequence.
        ks: numbers of leading terms for the left panel, each >= 1.
        path: where to save the PNG (None: do not save).

    Returns:
        The figure.
    """
    if histories is None:
        series = {}
    elif isinstance(histories, Mapping):
        series = dict(histories)
    else:
        series = {"mean share": histories}
    fig, axes = _figure(2 if series else 1)
    ax_p = axes[0]
    p = np.linspace(0.0, 1.0, 201)
    for k in ks:
        ax_p.plot(p, analysis.gradient_share(p, k), label=f"first {k} term{'s' if k > 1 else ''}")
    ax_p.axhline(0.5, color="0.5", linestyle=":", lw=1)
    ax_p.set_xlabel("p_t, probability of the target")
    ax_p.set_ylabel("share of dCE/dp_t")
    ax_p.set_title("Share of -1/p_t carried by the first k terms")
    ax_p.set_ylim(0, 1.02)
    if series:
        ax_t = axes[1]
        for label, history in series.items():
            values = np.asarray(getattr(history, "history", history), dtype=np.float64)
            ax_t.plot(np.arange(len(values)), values, label=str(label))
        ax_t.axhline(0.5, color="0.5", linestyle=":", lw=1)
        ax_t.set_xlabel("training step")
        ax_t.set_ylabel("batch-mean share of the first term")
        ax_t.set_title("First-term share during training")
        ax_t.set_ylim(0, 1.02)
    for ax in axes:
        _grid(ax)
        ax.legend(fontsize="small")
    fig.suptitle("The constant first term of cross-entropy's gradient (PolyLoss, Fig. 3b)")
    return _finish(fig, path)


# --- GHM: the gradient-norm density ---------------------------------------------------------------

def plot_gradient_density(histogram: analysis.GradientNormHistogram, *, path=None) -> Figure:
    """GHM's picture: examples and gradient per bin of ``g = |sigmoid(x) - y|``, before and after harmonizing.

    Left: the number of examples per bin and the GHM weights summed per bin (log scale):
    harmonizing flattens the density. Right: the gradient norm each bin contributes,
    ``sum g`` and ``sum beta g``: the mass of easy examples at ``g ~ 0`` stops dominating.
    Whether the outliers at ``g ~ 1`` lose or gain weight depends on how many there are
    compared with the other regions (the paper's detectors have many).

    Args:
        histogram: from :func:`polyfocal.analysis.gradient_norm_histogram`.
        path: where to save the PNG (None: do not save).

    Returns:
        The figure.
    """
    h = histogram
    fig, (ax_n, ax_g) = _figure(2)
    pairs = ((ax_n, h.counts, h.harmonized, "examples per bin (GHM: summed weights)"),
             (ax_g, h.gradient, h.harmonized_gradient, "summed gradient norm per bin"))
    for ax, before, after, ylabel in pairs:
        ax.stairs(np.where(before > 0, before, np.nan), h.edges, baseline=None,
                  label="cross-entropy (weight 1)", lw=2)
        ax.stairs(np.where(after > 0, after, np.nan), h.edges, baseline=None,
                  label=f"after GHM ({h.ghm_bins} regions)", lw=2, linestyle="--")
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_xlabel("gradient norm g = |sigmoid(x) - y|")
        ax.set_ylabel(ylabel)
        _grid(ax)
        ax.legend(fontsize="small")
    ax_n.set_title(f"Gradient-norm density, N = {h.n:g}")
    ax_g.set_title("Gradient norm contributed per bin")
    fig.suptitle("GHM: weights 1 / density, so every occupied region of g gets the same total weight")
    return _finish(fig, path)


# --- calibration: reliability diagrams ---------------------------------------------------------------

def plot_reliability(panels: Mapping[str, tuple], *, bins: int = 15, path=None) -> Figure:
    """Reliability diagrams (accuracy against confidence per bin, with the gap to the diagonal) over
    confidence histograms, one column per set of predictions.

    Args:
        panels: title -> ``(probs (N, C), labels (N,))``, e.g. ``{"before": ..., "after temperature scaling": ...}``.
        bins: equal-width bins of the top probability.
        path: where to save the PNG (None: do not save).
    """
    from . import calibration  # noqa: PLC0415 (torchmetrics loads with it)

    fig = Figure(figsize=(4.6 * len(panels), 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(panels), squeeze=False, height_ratios=(3, 1))
    for column, (title, (probs, labels)) in enumerate(panels.items()):
        r = calibration.reliability(probs, labels, bins=bins)
        ece = calibration.expected_calibration_error(probs, labels, bins=bins)
        centers, width = (r.edges[:-1] + r.edges[1:]) / 2, r.edges[1] - r.edges[0]
        top, bottom = axes[0][column], axes[1][column]
        top.bar(centers, np.nan_to_num(r.accuracy), width=width * 0.95, color="C0", label="accuracy")
        low = np.nan_to_num(np.minimum(r.confidence, r.accuracy))
        top.bar(centers, np.nan_to_num(np.abs(r.confidence - r.accuracy)), bottom=low, width=width * 0.95,
                color="C3", alpha=0.35, label="gap to confidence")
        top.plot([0, 1], [0, 1], color="0.3", lw=1, ls="--", label="calibrated")
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{title}: ECE {ece:.3f}")
        top.legend(fontsize="small", loc="upper left")
        bottom.bar(centers, r.counts / max(r.counts.sum(), 1), width=width * 0.95, color="0.5")
        bottom.set(xlim=(0, 1), xlabel="confidence (top probability)", ylabel="share")
        for ax in (top, bottom):
            _grid(ax)
    fig.suptitle("Reliability: how often the top class is right, against how sure the model is")
    return _finish(fig, path)


def plot_focal_bound(*, gammas=(1.0, 2.0, 3.0), classes: int = 10, path=None) -> Figure:
    """Mukhoti et al.'s bound ``focal >= KL - gamma H`` (:func:`polyfocal.calibration.focal_bound`) along
    predictions whose target has probability ``p_t`` and whose other classes share the rest equally."""
    from . import calibration  # noqa: PLC0415

    p_t = np.linspace(0.02, 0.98, 97)
    rest = (1 - p_t) / (classes - 1)
    probs = torch.as_tensor(np.column_stack([p_t] + [rest] * (classes - 1)))
    labels = torch.zeros(len(p_t), dtype=torch.long)
    fig, (ax_loss, ax_entropy) = _figure(2)
    for i, gamma in enumerate(gammas):
        b = calibration.focal_bound(probs, labels, gamma=gamma)
        ax_loss.plot(p_t, b.focal, color=f"C{i}", label=f"focal loss, gamma={gamma:g}")
        ax_loss.plot(p_t, b.bound, color=f"C{i}", ls="--", label=f"KL - {gamma:g} H (bound)")
    ax_loss.plot(p_t, b.kl, color="k", lw=1, label="cross-entropy = KL(q || p)")
    ax_loss.set(xlabel="p_t (the other classes share the rest)", ylabel="loss", title="focal loss >= KL - gamma H")
    ax_entropy.plot(p_t, b.entropy, color="0.3")
    ax_entropy.set(xlabel="p_t", ylabel="H[p] (nats)", title=f"the entropy focal loss keeps up ({classes} classes)")
    for ax in (ax_loss, ax_entropy):
        _grid(ax)
    ax_loss.legend(fontsize="small")
    fig.suptitle("Why focal loss calibrates (Mukhoti et al. 2020)")
    return _finish(fig, path)
