"""The PolyLoss lens: numbers against closed forms, and the figures drawn from them."""

import math

import numpy as np
import pytest
import torch

import polyfocal as pf
from polyfocal import analysis as A

P = np.array([0.01, 0.05, 0.2, 0.5, 0.9, 0.999])


# --- coefficients ---------------------------------------------------------------------------------

def test_cross_entropy_coefficients_are_one_over_j():
    c = A.poly_coefficients("cross_entropy", 12)
    j = np.arange(1, 13)
    np.testing.assert_allclose(c.powers, j)
    np.testing.assert_allclose(c.coefficients, 1.0 / j)
    np.testing.assert_allclose(c.gradient_powers, j - 1)
    np.testing.assert_allclose(c.gradient_coefficients, -1.0)  # dCE/dp_t = -sum (1-p)^(j-1)
    assert c.exact_tail


@pytest.mark.parametrize("gamma", [0.5, 2.0, 3.7])
def test_focal_is_the_horizontal_shift(gamma):
    ce, fl = A.poly_coefficients("cross_entropy", 8), A.poly_coefficients("focal", 8, gamma=gamma)
    np.testing.assert_allclose(fl.coefficients, ce.coefficients)
    np.testing.assert_allclose(fl.powers, ce.powers + gamma)
    np.testing.assert_allclose(fl.gradient_coefficients, -(np.arange(1, 9) + gamma) / np.arange(1, 9))
    assert fl.params == {"gamma": gamma}


def test_focal_default_gamma_is_the_functions():
    assert A.poly_coefficients("focal_loss", 3).params["gamma"] == 2.0


def test_poly1_is_the_vertical_shift():
    ce, p1 = A.poly_coefficients("ce", 6), A.poly_coefficients("poly1", 6, epsilon=2.0)
    assert p1.coefficients[0] == 3.0
    np.testing.assert_allclose(p1.coefficients[1:], ce.coefficients[1:])
    np.testing.assert_allclose(p1.powers, ce.powers)


def test_polyn_poly_loss_and_truncated():
    pn = A.poly_coefficients("polyn_cross_entropy", 5, epsilons=(1.0, -0.25))
    np.testing.assert_allclose(pn.coefficients, [2.0, 0.25, 1 / 3, 1 / 4, 1 / 5])
    drop = A.poly_coefficients("poly_loss", 5, coefficients=(2.0, 1.0), gamma=1.0, tail="drop")
    np.testing.assert_allclose(drop.coefficients, [2.0, 1.0, 0, 0, 0])
    np.testing.assert_allclose(drop.powers, np.arange(2, 7))
    assert not drop.exact_tail
    tail = A.poly_coefficients("poly_loss", 4, coefficients=(2.0,))
    np.testing.assert_allclose(tail.coefficients, [2.0, 1 / 2, 1 / 3, 1 / 4])
    tr = A.poly_coefficients("truncated_cross_entropy", 6, n_terms=3)
    np.testing.assert_allclose(tr.coefficients, [1, 1 / 2, 1 / 3, 0, 0, 0])
    assert not tr.exact_tail


@pytest.mark.parametrize("name, params", [
    ("cross_entropy", {}), ("focal_loss", {"gamma": 1.5}), ("poly1_cross_entropy", {"epsilon": 2.0}),
    ("polyn_cross_entropy", {"epsilons": (0.5, -0.2)}),
    ("poly_loss", {"coefficients": (1.5, 0.4), "gamma": 1.0}),
    ("truncated_cross_entropy", {"n_terms": 4}),
])
def test_series_sums_to_the_library_loss(name, params):
    # p_t >= 0.3: 400 terms leave less than 0.7^401 / 0.3 of the tail.
    p = np.array([0.3, 0.5, 0.8, 0.97])
    series = A.poly_coefficients(name, 400, **params)
    logits = torch.tensor(np.stack([np.log(p) - np.log1p(-p), np.zeros_like(p)], 1))
    loss = pf.get_loss_function(name)(logits, torch.zeros(len(p), dtype=torch.long), reduction="none", **params)
    np.testing.assert_allclose(series.partial_sum(p), loss.detach().numpy(), rtol=1e-10, atol=1e-12)
    curves = A.loss_curves([name], p=p, **{name: params})
    np.testing.assert_allclose(-series.gradient_partial_sum(p), curves.grad_p[name], rtol=1e-9, atol=1e-12)


# --- truncation and Theorem 1 ---------------------------------------------------------------------

def test_remainder_closed_forms():
    np.testing.assert_allclose(A.remainder(0.5, 1), math.log(2) - 0.5)
    np.testing.assert_allclose(A.remainder(1.0, 7), 0.0)
    np.testing.assert_allclose(A.remainder_derivative(P, 5), -(1 - P) ** 5 / P, rtol=1e-12)
    assert A.remainder(P, 3).shape == P.shape


@pytest.mark.parametrize("n", [1, 5, 40, 300])
def test_remainder_matches_a_long_direct_sum(n):
    p = np.array([0.1, 0.3, 0.6, 0.95])
    j = np.arange(n + 1, 3000)[:, None]
    direct = ((1 - p) ** j / j).sum(0)  # 0.9^3000 is far below float64's resolution of R_N
    np.testing.assert_allclose(A.remainder(p, n), direct, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(A.remainders(p, n)[:, -1], A.remainder(p, n), rtol=1e-9, atol=1e-14)


def test_remainder_vanishes_as_n_grows_and_obeys_its_bound():
    r = A.remainders(P, 2000)
    assert (np.diff(r, axis=-1) <= 1e-15).all()  # decreasing in N
    assert (r[:, -1] < 1e-6).all()
    n = np.arange(1, 2001)
    bound = (1 - P[:, None]) ** (n + 1) / P[:, None]
    assert (r <= bound + 1e-13).all()


@pytest.mark.parametrize("zeta, delta", [(1e-3, 0.01), (1e-6, 0.1), (1e-2, 0.5), (1e-9, 0.3), (0.05, 0.05)])
def test_terms_needed_against_theorem1(zeta, delta):
    bound = A.theorem1_bound(zeta, delta)
    assert bound == pytest.approx(math.log(delta * zeta) / math.log(1 - delta))
    n = A.terms_needed(zeta, delta)
    assert n <= bound + 1
    grid = np.linspace(delta, 1.0, 501)
    guaranteed = math.floor(bound) + 1  # the smallest N > bound: Theorem 1 says it suffices
    assert np.abs(A.remainder(grid, guaranteed)).max() < zeta
    assert np.abs(A.remainder_derivative(grid, guaranteed)).max() < zeta
    if n > 1:  # and N - 1 is not enough
        assert max(A.remainder(delta, n - 1), abs(A.remainder_derivative(delta, n - 1))) >= zeta


def test_paper_scale_bound():
    # e.g. covering p_t >= 0.01 to 1e-3 needs about 1146 terms: the order of the paper's ~600 on ImageNet.
    assert A.terms_needed(1e-3, 0.01) == 1146


# --- gradient share -------------------------------------------------------------------------------

def test_first_term_share_equals_p_t():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 7, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, 7, (64,), generator=g)
    s = A.first_term_share(logits, target)
    p_t = logits.softmax(1).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(s.per_example, p_t)
    torch.testing.assert_close(s.mean, p_t.mean())


@pytest.mark.parametrize("k", [1, 2, 5, 30])
def test_k_term_share_closed_form(k):
    p = np.linspace(0, 1, 101)
    np.testing.assert_allclose(A.gradient_share(p, k), 1 - (1 - p) ** k, atol=1e-12)


def test_share_ignores_and_soft_targets():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 3.0]])
    s = A.first_term_share(logits, torch.tensor([0, -100, 1]), k=2)
    p = torch.sigmoid(torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(s.per_example.float(), torch.stack([1 - (1 - p[0]) ** 2, torch.tensor(0.0),
                                                                   1 - (1 - p[1]) ** 2]))
    torch.testing.assert_close(s.mean.float(), (1 - (1 - p) ** 2).mean())
    soft = A.first_term_share(logits[:1], torch.tensor([[0.25, 0.75]]))
    assert float(soft.mean) == pytest.approx(0.25 * float(p[0]) + 0.75 * (1 - float(p[0])))


def test_tracker_records_history():
    tracker = A.GradientShareTracker()
    tracker.update(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    tracker.update(torch.tensor([[10.0, 0.0]]), torch.tensor([0]))
    assert tracker.history[0] == pytest.approx(0.5)
    assert tracker.history[1] == pytest.approx(1 / (1 + math.exp(-10)))
    assert tracker.steps.tolist() == [0, 1]


# --- curves ---------------------------------------------------------------------------------------

def test_curves_closed_forms():
    p = np.array([0.1, 0.5, 0.9])
    c = A.loss_curves(["ce", "bce", "focal", "sigmoid_focal"], p=p, focal={"gamma": 2.0},
                      sigmoid_focal={"gamma": 2.0, "alpha": None})
    for name in ("cross_entropy", "binary_cross_entropy"):
        np.testing.assert_allclose(c.loss[name], -np.log(p), rtol=1e-12)
        np.testing.assert_allclose(c.grad_p[name], 1 / p, rtol=1e-10)
        np.testing.assert_allclose(c.grad_margin[name], 1 - p, rtol=1e-10)
    fl = -(1 - p) ** 2 * np.log(p)
    dfl = 2 * (1 - p) * np.log(p) - (1 - p) ** 2 / p
    for name in ("focal_loss", "sigmoid_focal_loss"):  # softmax with C = 2 and sigmoid agree
        np.testing.assert_allclose(c.loss[name], fl, rtol=1e-10)
        np.testing.assert_allclose(c.grad_p[name], np.abs(dfl), rtol=1e-9)
    np.testing.assert_allclose(c.margin, np.log(p / (1 - p)))
    assert c.params["sigmoid_focal_loss"] == {"gamma": 2.0, "alpha": None}


def test_curves_versus_margin_grid():
    c = A.loss_curves("poly1", margin=[-2.0, 0.0, 3.0])
    np.testing.assert_allclose(c.margin, [-2.0, 0.0, 3.0], atol=1e-12)
    assert c.params["poly1_cross_entropy"] == {"epsilon": 1.0}


# --- GHM density ----------------------------------------------------------------------------------

def test_gradient_norm_histogram_counts_and_harmonizing():
    logits, target = A.synthetic_imbalanced_batch(20_000, seed=1)
    h = A.gradient_norm_histogram(logits, target, bins=10)
    g = (torch.sigmoid(logits.double()) - target).abs().numpy()
    counts, _ = np.histogram(np.minimum(g, 1 - 1e-12), bins=10, range=(0, 1))
    np.testing.assert_allclose(h.counts, counts)
    assert h.n == 20_000 and h.counts.sum() == 20_000
    occupied = h.counts > 0
    # beta = N / GD: every occupied region of g gets the same total weight N / (occupied regions)
    np.testing.assert_allclose(h.harmonized[occupied], 20_000 / occupied.sum())
    np.testing.assert_allclose(h.log10_counts[occupied], np.log10(h.counts[occupied]))
    assert np.isnan(h.log10_counts[~occupied]).all()
    assert h.counts[0] > 0.5 * h.n  # the easy-negative peak at g ~ 0


def test_histogram_with_class_index_targets():
    logits = torch.tensor([[[-3.0, 2.0]], [[0.0, 1.0]]])  # (N=2, C=1, 2) with background label 1
    target = torch.tensor([[0, 1], [1, -100]])
    h = A.gradient_norm_histogram(logits, target, bins=4)
    assert h.n == 3 and h.counts.sum() == 3


# --- bad inputs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("call, argument", [
    (lambda: A.poly_coefficients("nope", 5), "`loss`"),
    (lambda: A.poly_coefficients("focal", 0), "`n_terms`"),
    (lambda: A.poly_coefficients("focal", 3, gamma=-1.0), "`gamma`"),
    (lambda: A.poly_coefficients("focal", 3, epsilon=1.0), "epsilon"),
    (lambda: A.poly_coefficients("truncated", 3), "`n_terms`"),
    (lambda: A.poly_coefficients("sigmoid_focal", 3), "`loss`"),
    (lambda: A.remainder(0.5, 0), "`n_terms`"),
    (lambda: A.remainder(0.0, 3), "`p`"),
    (lambda: A.theorem1_bound(0.0, 0.1), "`zeta`"),
    (lambda: A.terms_needed(-1e-3, 0.1), "`zeta`"),
    (lambda: A.terms_needed(1e-3, 1.0), "`delta`"),
    (lambda: A.gradient_share(0.5, 0), "`k`"),
    (lambda: A.loss_curves(["ce", "unknown_loss"]), "`names`"),
    (lambda: A.loss_curves(["ghm_c_loss"]), "`names`"),
    (lambda: A.loss_curves(["ce"], p=[0.5, 1.0]), "`p`"),
    (lambda: A.gradient_norm_histogram(torch.zeros(3), torch.zeros(3), bins=0), "`bins`"),
])
def test_bad_inputs_name_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument.replace("`", "`?")):
        call()


# --- figures --------------------------------------------------------------------------------------

plots = pytest.importorskip("polyfocal.plots")


def _check_png(fig, path):
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert ax.get_legend() is not None


def test_plot_coefficients(tmp_path):
    path = tmp_path / "coef.png"
    fig = plots.plot_coefficients(["focal", "poly1", "truncated"], n_terms=8,
                                  params={"focal": {"gamma": 2.0}, "truncated": {"n_terms": 4}}, path=path)
    _check_png(fig, path)
    assert fig.axes[0].get_xlabel() == "power k of (1 - p_t)"
    assert fig.axes[0].get_yscale() == "log"


def test_plot_coefficients_negative_coefficient_uses_symlog():
    fig = plots.plot_coefficients("poly1", params={"poly1": {"epsilon": -2.0}})
    assert fig.axes[0].get_yscale() == "symlog"


def test_plot_truncation(tmp_path):
    path = tmp_path / "sub" / "trunc.png"
    fig = plots.plot_truncation(delta=0.1, zeta=1e-4, path=path)
    _check_png(fig, path)
    assert fig.axes[1].get_xlabel() == "N, terms kept"


@pytest.mark.parametrize("versus", ["p_t", "margin"])
def test_plot_loss_curves(tmp_path, versus):
    path = tmp_path / "curves.png"
    fig = plots.plot_loss_curves(["ce", "focal", "poly1", "qfl"], params={"poly1": {"epsilon": 2.0}},
                                 versus=versus, path=path)
    _check_png(fig, path)
    assert ("p_t" if versus == "p_t" else "margin") in fig.axes[0].get_xlabel()
    with pytest.raises(ValueError, match="`versus`"):
        plots.plot_loss_curves(["ce"], versus="logit")


def test_plot_gradient_share(tmp_path):
    tracker = A.GradientShareTracker()
    for scale in (0.0, 1.0, 2.0):
        tracker.update(torch.tensor([[scale, 0.0]] * 3), torch.tensor([0, 0, 0]))
    path = tmp_path / "share.png"
    fig = plots.plot_gradient_share({"ce": tracker, "list": [0.2, 0.4]}, path=path)
    _check_png(fig, path)
    assert fig.axes[1].get_xlabel() == "training step"
    assert len(plots.plot_gradient_share().axes) == 1


def test_plot_gradient_density(tmp_path):
    h = A.gradient_norm_histogram(*A.synthetic_imbalanced_batch(5_000), bins=20, ghm_bins=10)
    path = tmp_path / "density.png"
    fig = plots.plot_gradient_density(h, path=path)
    _check_png(fig, path)
    assert fig.axes[0].get_yscale() == "log"
    assert fig.axes[0].get_xlabel() == "gradient norm g = |sigmoid(x) - y|"


def test_figure_without_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plots.plot_coefficients("focal")
    assert list(tmp_path.iterdir()) == []


def test_core_library_does_not_import_plots_or_cli():
    import subprocess
    import sys
    code = ("import sys, polyfocal, polyfocal.analysis; "
            "bad = [m for m in ('polyfocal.plots', 'polyfocal.cli', 'matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
