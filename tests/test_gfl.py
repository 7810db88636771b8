"""Generalized Focal Loss (QFL, DFL, GFL), Varifocal loss and decode_distribution.

References are written here straight from the papers' formulas (arXiv:2006.04388,
arXiv:2008.13367) with plain probabilities (sigmoid / softmax, then log) in float64,
location by location, so they share no code and no numerical trick with the library.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import polyfocal as pf


REDUCTIONS = ["none", "sum", "mean"]
SIGMOID_SHAPES = [(7,), (5, 3), (3, 4, 5), (2, 3, 4, 5)]  # odd sizes, extra spatial dims
DIST_SHAPES = [(7, 5), (3, 6, 4), (2, 4, 3, 5)]  # (N, n, *): n bins along dim 1


# --- references ----------------------------------------------------------------------------------


def ref_qfl(x, y, beta):
    """QFL = -|y - sigma|^beta ((1-y) log(1-sigma) + y log sigma)."""
    s = torch.sigmoid(x)
    return -((y - s).abs() ** beta) * ((1 - y) * torch.log(1 - s) + y * torch.log(s))


def ref_vfl(x, q, alpha, gamma, iou_weighted):
    """VFL = -q (q log p + (1-q) log(1-p)) for q > 0, -alpha p^gamma log(1-p) for q = 0."""
    p = torch.sigmoid(x)
    factor = q if iou_weighted else torch.ones_like(q)
    positive = -factor * (q * torch.log(p) + (1 - q) * torch.log(1 - p))
    negative = -alpha * p**gamma * torch.log(1 - p)
    return torch.where(q > 0, positive, negative)


def _bins_last(logits):
    """(N, n, *) -> (M, n) with M = N * prod(*), and the (N, *) shape."""
    n = logits.shape[1]
    shape = (logits.shape[0],) + tuple(logits.shape[2:])
    return logits.movedim(1, -1).reshape(-1, n), shape


def ref_dfl(logits, target, beta=None):
    """DFL = -((y_r - y) log S_l + (y - y_l) log S_r); with beta, GFL's |y - y_hat|^beta in front.

    Location by location: y clamped into [0, n-1], y_l = floor(y) kept <= n-2 so y_r = y_l + 1
    is a bin, y_hat = sum_i i * S_i.
    """
    x, shape = _bins_last(logits)
    n = x.shape[1]
    ys = target.reshape(-1)
    losses = []
    for i in range(x.shape[0]):
        s = torch.softmax(x[i], dim=0)
        y = min(max(float(ys[i]), 0.0), n - 1.0)
        yl = min(math.floor(y), n - 2)
        yr = yl + 1
        loss = -((yr - y) * torch.log(s[yl]) + (y - yl) * torch.log(s[yr]))
        if beta is not None:
            y_hat = sum(j * s[j] for j in range(n))
            loss = (y - y_hat).abs() ** beta * loss
        losses.append(loss)
    return torch.stack(losses).reshape(shape)


def ref_gfl(logits, target, beta):
    return ref_dfl(logits, target, beta=beta)


def reduce(loss, reduction, count):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / count


def dense_from_labels(labels, num_classes, scores=None, ignore_index=-100):
    """Index targets (N, *) -> dense (N, C, *) float targets and the (N, 1, *) valid mask."""
    valid = labels != ignore_index
    safe = torch.where(valid, labels, num_classes)
    y = F.one_hot(safe, num_classes + 1)[..., :num_classes].movedim(-1, 1).to(torch.float64)
    if scores is not None:
        y = y * scores.unsqueeze(1)
    return y, valid.unsqueeze(1)


def grad(loss, x):
    return torch.autograd.grad(loss.sum(), x)[0]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def sig_inputs(shape, seed=0, dtype=torch.float64):
    g = gen(seed)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 2).requires_grad_()
    y = torch.rand(shape, generator=g, dtype=dtype)
    # some hard targets: exactly 0 and exactly 1
    y.view(-1)[::5] = 0.0
    y.view(-1)[1::7] = 1.0
    return x, y


def vfl_target(shape, seed=0):
    g = gen(seed)
    q = torch.rand(shape, generator=g, dtype=torch.float64) * 0.95 + 0.05
    q = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.5, torch.zeros_like(q), q)
    q.view(-1)[2::9] = 1.0
    return q


def dist_inputs(shape, seed=0, dtype=torch.float64, spread=True):
    g = gen(seed)
    n = shape[1]
    logits = (torch.randn(shape, generator=g, dtype=dtype) * 1.5).requires_grad_()
    tshape = (shape[0],) + tuple(shape[2:])
    target = torch.rand(tshape, generator=g, dtype=dtype) * (n - 1)
    if spread:
        flat = target.view(-1)
        flat[::6] = torch.floor(flat[::6])  # exactly on a bin
        flat[1::6] = n - 1  # exactly the last bin
        flat[2::6] = 0.0  # exactly the first bin
    return logits, target


# --- 1. QFL / VFL against the paper's formulas ------------------------------------------------------


@pytest.mark.parametrize("shape", SIGMOID_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_qfl_matches_reference(shape, reduction, weighted):
    x, y = sig_inputs(shape, seed=1)
    weight = torch.rand(shape[-1], generator=gen(2), dtype=torch.float64) + 0.5 if weighted else None
    got = pf.quality_focal_loss(x, y, beta=2.0, weight=weight, reduction=reduction)
    want = ref_qfl(x, y, 2.0)
    if weighted:
        want = want * weight
    want = reduce(want, reduction, x.numel())  # weight is not part of the mean's count
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, x), grad(want, x))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_qfl_matches_reference_for_beta(beta):
    x, y = sig_inputs((4, 6, 3), seed=3)
    got = pf.quality_focal_loss(x, y, beta=beta, reduction="none")
    want = ref_qfl(x, y, beta)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, x), grad(want, x))


def test_qfl_default_beta_is_two():
    x, y = sig_inputs((5, 4), seed=4)
    torch.testing.assert_close(pf.quality_focal_loss(x, y), pf.quality_focal_loss(x, y, beta=2.0))
    torch.testing.assert_close(pf.quality_focal_loss(x, y), ref_qfl(x, y, 2.0).mean())


@pytest.mark.parametrize("shape", SIGMOID_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("iou_weighted", [True, False])
def test_vfl_matches_reference(shape, reduction, iou_weighted):
    x, _ = sig_inputs(shape, seed=5)
    q = vfl_target(shape, seed=6)
    weight = torch.rand(shape, generator=gen(7), dtype=torch.float64) + 0.5
    got = pf.varifocal_loss(x, q, alpha=0.6, gamma=1.5, iou_weighted=iou_weighted, weight=weight,
                            reduction=reduction)
    want = reduce(ref_vfl(x, q, 0.6, 1.5, iou_weighted) * weight, reduction, x.numel())
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, x), grad(want, x))


@pytest.mark.parametrize("iou_weighted", [True, False])
def test_vfl_defaults_and_negative_branch(iou_weighted):
    x, _ = sig_inputs((6, 5), seed=8)
    q = vfl_target((6, 5), seed=9)
    got = pf.varifocal_loss(x, q, iou_weighted=iou_weighted, reduction="none")
    want = ref_vfl(x, q, 0.75, 2.0, iou_weighted)
    torch.testing.assert_close(got, want)
    # negatives: -alpha p^gamma log(1 - p) spelled out once more, independent of iou_weighted
    p = torch.sigmoid(x)
    neg = q == 0
    assert neg.any() and (~neg).any()
    torch.testing.assert_close(got[neg], (-0.75 * p**2 * torch.log(1 - p))[neg])
    # positives with iou_weighted: q times the BCE with soft target q
    bce = F.binary_cross_entropy_with_logits(x, q, reduction="none")
    factor = q if iou_weighted else torch.ones_like(q)
    torch.testing.assert_close(got[~neg], (factor * bce)[~neg])


def test_vfl_iou_weighting_only_changes_positives():
    x, _ = sig_inputs((5, 7), seed=10)
    q = vfl_target((5, 7), seed=11)
    a = pf.varifocal_loss(x, q, iou_weighted=True, reduction="none")
    b = pf.varifocal_loss(x, q, iou_weighted=False, reduction="none")
    pos = q > 0
    torch.testing.assert_close(a[~pos], b[~pos])
    torch.testing.assert_close(a[pos], q[pos] * b[pos])


# --- 1. DFL / GFL against the paper's formulas ------------------------------------------------------


@pytest.mark.parametrize("shape", DIST_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_dfl_matches_reference(shape, reduction, weighted):
    logits, target = dist_inputs(shape, seed=12)
    tshape = target.shape
    weight = torch.rand(tshape, generator=gen(13), dtype=torch.float64) + 0.5 if weighted else None
    got = pf.distribution_focal_loss(logits, target, weight=weight, reduction=reduction)
    want = ref_dfl(logits, target)
    if weighted:
        want = want * weight
    want = reduce(want, reduction, target.numel())  # N * prod(*), weight not counted
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, logits), grad(want, logits))


@pytest.mark.parametrize("shape", DIST_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_gfl_matches_reference(shape, reduction, beta):
    logits, target = dist_inputs(shape, seed=14)
    weight = torch.rand(target.shape, generator=gen(15), dtype=torch.float64) + 0.5
    got = pf.generalized_focal_loss(logits, target, beta=beta, weight=weight, reduction=reduction)
    want = reduce(ref_gfl(logits, target, beta) * weight, reduction, target.numel())
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, logits), grad(want, logits))


def test_gfl_default_beta_is_two():
    logits, target = dist_inputs((5, 7), seed=16)
    torch.testing.assert_close(pf.generalized_focal_loss(logits, target),
                               ref_gfl(logits, target, 2.0).mean())


@pytest.mark.parametrize("fn", ["dfl", "gfl"])
def test_distribution_weight_broadcasts(fn):
    logits, target = dist_inputs((4, 6, 3, 5), seed=17)
    w_small = torch.rand(5, generator=gen(18), dtype=torch.float64) + 0.5  # broadcasts to (N, *)
    loss = (lambda **kw: pf.distribution_focal_loss(logits, target, **kw)) if fn == "dfl" else \
        (lambda **kw: pf.generalized_focal_loss(logits, target, beta=1.5, **kw))
    got = loss(weight=w_small, reduction="mean")
    full = loss(reduction="none")
    torch.testing.assert_close(got, (full * w_small).sum() / target.numel())
    torch.testing.assert_close(loss(weight=w_small.expand(target.shape).clone(), reduction="mean"), got)


# --- normalizer -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qfl", "vfl", "dfl", "gfl"])
@pytest.mark.parametrize("normalizer", [3.0, 7, torch.tensor(2.5, dtype=torch.float64)])
def test_normalizer_replaces_the_count(name, normalizer):
    if name in ("qfl", "vfl"):
        x, y = sig_inputs((4, 3, 5), seed=19)
        f = pf.quality_focal_loss if name == "qfl" else pf.varifocal_loss
    else:
        x, y = dist_inputs((4, 6, 5), seed=19)
        f = pf.distribution_focal_loss if name == "dfl" else pf.generalized_focal_loss
    got = f(x, y, reduction="mean", normalizer=normalizer)
    want = f(x, y, reduction="sum") / normalizer
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, x), grad(want, x))


# --- 2. target forms: indices, background, ignore_index, detection (labels, scores) --------------


def _index_inputs(shape, seed, ignore_index=-100):
    g = gen(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).requires_grad_()
    n, c = shape[0], shape[1]
    labels = torch.randint(0, c + 1, (n,) + tuple(shape[2:]), generator=g)  # c = background
    flat = labels.view(-1)
    flat[::5] = ignore_index
    flat[1::5] = c  # make sure background is present
    flat[2::5] = 0
    scores = torch.rand(labels.shape, generator=g, dtype=torch.float64)
    scores.view(-1)[3::7] = 0.0
    scores.view(-1)[4::7] = 1.0
    return x, labels, scores


@pytest.mark.parametrize("name", ["qfl", "vfl"])
@pytest.mark.parametrize("shape", [(7, 4), (3, 5, 4), (2, 3, 4, 3)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, -1, 255])
def test_index_target_matches_dense_reference(name, shape, reduction, ignore_index):
    x, labels, _ = _index_inputs(shape, seed=20, ignore_index=ignore_index)
    y, valid = dense_from_labels(labels, shape[1], ignore_index=ignore_index)
    if name == "qfl":
        got = pf.quality_focal_loss(x, labels, beta=1.5, ignore_index=ignore_index, reduction=reduction)
        per = ref_qfl(x, y, 1.5)
    else:
        got = pf.varifocal_loss(x, labels, ignore_index=ignore_index, reduction=reduction)
        per = ref_vfl(x, y, 0.75, 2.0, True)
    per = torch.where(valid, per, torch.zeros_like(per))
    count = valid.sum()  # non-ignored locations, NOT times C
    want = reduce(per, reduction, count)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, x), grad(want, x))
    if reduction == "none":
        assert got.shape == x.shape
        assert (got * (~valid)).abs().sum() == 0  # ignored locations give exactly 0


@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_background_label_means_all_classes_negative(name):
    c = 4
    x = torch.randn(6, c, generator=gen(21), dtype=torch.float64)
    labels = torch.full((6,), c)
    f = pf.quality_focal_loss if name == "qfl" else pf.varifocal_loss
    got = f(x, labels, reduction="none")
    want = f(x, torch.zeros_like(x), reduction="none")
    torch.testing.assert_close(got, want)
    # mean over locations (6), not elements (24)
    torch.testing.assert_close(f(x, labels), want.sum() / 6)


@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_all_ignored_gives_zero_and_zero_grad(name):
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.full((3, 2), -100)
    f = pf.quality_focal_loss if name == "qfl" else pf.varifocal_loss
    loss = f(x, labels)
    assert loss.item() == 0.0
    g = grad(loss, x)
    assert torch.isfinite(g).all() and (g == 0).all()


@pytest.mark.parametrize("name", ["qfl", "vfl"])
@pytest.mark.parametrize("shape", [(7, 4), (3, 5, 4), (2, 3, 4, 3)])
@pytest.mark.parametrize("ignore_index", [-100, 255])
def test_detection_form_equals_dense_float_target(name, shape, ignore_index):
    x, labels, scores = _index_inputs(shape, seed=22, ignore_index=ignore_index)
    y, valid = dense_from_labels(labels, shape[1], scores=scores, ignore_index=ignore_index)
    f = pf.quality_focal_loss if name == "qfl" else pf.varifocal_loss
    # dense form has no ignore: mask the ignored locations through the weight
    w = valid.to(x.dtype).expand_as(x)
    det_none = f(x, (labels, scores), ignore_index=ignore_index, reduction="none")
    dense_none = f(x, y, weight=w, reduction="none")
    torch.testing.assert_close(det_none, dense_none)
    det_sum = f(x, (labels, scores), ignore_index=ignore_index, reduction="sum")
    dense_sum = f(x, y, weight=w, reduction="sum")
    torch.testing.assert_close(det_sum, dense_sum)
    g_dense_sum = grad(dense_sum, x)
    torch.testing.assert_close(grad(det_sum, x), g_dense_sum)
    # mean: detection form divides by non-ignored locations, dense form by all elements
    det_mean = f(x, (labels, scores), ignore_index=ignore_index)
    dense_mean = f(x, y, weight=w)
    torch.testing.assert_close(det_mean, dense_sum / valid.sum())
    torch.testing.assert_close(dense_mean, dense_sum / x.numel())
    torch.testing.assert_close(grad(det_mean, x), g_dense_sum / valid.sum())


def test_detection_form_against_reference_directly():
    x, labels, scores = _index_inputs((5, 3, 4), seed=23)
    y, valid = dense_from_labels(labels, 3, scores=scores)
    got = pf.quality_focal_loss(x, (labels, scores), beta=2.0)
    per = torch.where(valid, ref_qfl(x, y, 2.0), torch.zeros_like(x))
    torch.testing.assert_close(got, per.sum() / valid.sum())
    got = pf.varifocal_loss(x, (labels, scores), alpha=0.5, gamma=1.0)
    per = torch.where(valid, ref_vfl(x, y, 0.5, 1.0, True), torch.zeros_like(x))
    torch.testing.assert_close(got, per.sum() / valid.sum())


@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_detection_form_with_unit_scores_equals_index_form(name):
    x, labels, _ = _index_inputs((6, 4, 3), seed=24)
    f = pf.quality_focal_loss if name == "qfl" else pf.varifocal_loss
    ones = torch.ones(labels.shape, dtype=torch.float64)
    for reduction in REDUCTIONS:
        torch.testing.assert_close(f(x, (labels, ones), reduction=reduction), f(x, labels, reduction=reduction))


def test_detection_form_score_dtype_may_differ_from_logits():
    x, labels, scores = _index_inputs((4, 3, 2), seed=25)
    a = pf.quality_focal_loss(x.float(), (labels, scores.float()))
    b = pf.quality_focal_loss(x.float(), (labels, scores))
    torch.testing.assert_close(a, b)


def test_index_mean_weight_not_counted():
    x, labels, _ = _index_inputs((5, 4, 3), seed=26)
    weight = torch.rand(x.shape, generator=gen(27), dtype=torch.float64) + 0.5
    got = pf.quality_focal_loss(x, labels, weight=weight)
    valid = (labels != -100).sum()
    torch.testing.assert_close(got, pf.quality_focal_loss(x, labels, weight=weight, reduction="sum") / valid)


# --- 3. identities ------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_qfl_beta0_is_bce_with_soft_targets(reduction):
    x, y = sig_inputs((4, 5, 3), seed=30)
    got = pf.quality_focal_loss(x, y, beta=0.0, reduction=reduction)
    want = F.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, x), grad(want, x))
    torch.testing.assert_close(got, pf.binary_cross_entropy(x, y, reduction=reduction))


def test_vfl_with_alpha1_gamma0_unweighted_is_bce():
    x, _ = sig_inputs((6, 5), seed=31)
    q = vfl_target((6, 5), seed=32)
    got = pf.varifocal_loss(x, q, alpha=1.0, gamma=0.0, iou_weighted=False, reduction="none")
    want = F.binary_cross_entropy_with_logits(x, q, reduction="none")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, x), grad(want, x))


@pytest.mark.parametrize("shape", DIST_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gfl_beta0_is_dfl(shape, reduction):
    logits, target = dist_inputs(shape, seed=33)
    weight = torch.rand(target.shape, generator=gen(34), dtype=torch.float64) + 0.5
    got = pf.generalized_focal_loss(logits, target, beta=0.0, weight=weight, reduction=reduction)
    want = pf.distribution_focal_loss(logits, target, weight=weight, reduction=reduction)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, logits), grad(want, logits))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gfl_with_two_bins_is_qfl(beta, reduction):
    x, y = sig_inputs((5, 3, 4), seed=35)
    stacked = torch.stack([torch.zeros_like(x), x], dim=1)  # (N, 2, *): logits (0, x)
    got = pf.generalized_focal_loss(stacked, y, beta=beta, reduction=reduction)
    want = pf.quality_focal_loss(x, y, beta=beta, reduction=reduction)
    # GFL's mean is over (N, *), which is exactly QFL's element count here
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, x), grad(want, x))
    torch.testing.assert_close(got, reduce(ref_qfl(x, y, beta), reduction, x.numel()))


def test_dfl_is_soft_cross_entropy_with_the_two_hot_distribution():
    logits, target = dist_inputs((6, 7, 3), seed=36)
    n = logits.shape[1]
    y = target.clamp(0, n - 1)
    left = torch.floor(y).clamp(max=n - 2).long()
    wr = y - left
    hot = F.one_hot(left, n) * (1 - wr).unsqueeze(-1) + F.one_hot(left + 1, n) * wr.unsqueeze(-1)
    hot = hot.movedim(-1, 1)
    torch.testing.assert_close(hot.sum(1), torch.ones_like(y, dtype=torch.float64))
    got = pf.distribution_focal_loss(logits, target, reduction="none")
    want = F.cross_entropy(logits, hot, reduction="none")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, logits), grad(want, logits))


def test_dfl_at_integer_targets_is_cross_entropy():
    n = 8
    logits = torch.randn(3, n, 5, generator=gen(37), dtype=torch.float64, requires_grad=True)
    k = torch.randint(0, n, (3, 5), generator=gen(38))
    k.view(-1)[::3] = n - 1  # the last bin: the right bin must stay in range
    k.view(-1)[1::3] = 0
    got = pf.distribution_focal_loss(logits, k.to(torch.float64), reduction="none")
    want = F.cross_entropy(logits, k, reduction="none")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, logits), grad(want, logits))
    # GFL at an integer target: the same CE times |k - y_hat|^beta
    y_hat = pf.decode_distribution(logits)
    gfl = pf.generalized_focal_loss(logits, k.to(torch.float64), beta=2.0, reduction="none")
    torch.testing.assert_close(gfl, want * (k - y_hat) ** 2)


@pytest.mark.parametrize("n", [2, 3, 16])
def test_dfl_last_bin_edge(n):
    logits = torch.randn(4, n, generator=gen(39), dtype=torch.float64, requires_grad=True)
    target = torch.full((4,), float(n - 1), dtype=torch.float64)
    got = pf.distribution_focal_loss(logits, target, reduction="none")
    torch.testing.assert_close(got, -torch.log_softmax(logits, 1)[:, n - 1])
    g = grad(got, logits)
    assert torch.isfinite(g).all()
    # just below the last bin: y_l = n-2, y_r = n-1
    eps = 1e-3
    got = pf.distribution_focal_loss(logits, target - eps, reduction="none")
    lp = torch.log_softmax(logits, 1)
    torch.testing.assert_close(got, -(eps * lp[:, n - 2] + (1 - eps) * lp[:, n - 1]))
    # GFL too
    gfl = pf.generalized_focal_loss(logits, target, reduction="none")
    y_hat = (torch.softmax(logits, 1) * torch.arange(n, dtype=torch.float64)).sum(1)
    torch.testing.assert_close(gfl, -lp[:, n - 1] * (n - 1 - y_hat) ** 2)


def test_dfl_is_continuous_across_bin_boundaries():
    logits = torch.randn(1, 6, generator=gen(40), dtype=torch.float64)
    for k in range(1, 5):
        below = pf.distribution_focal_loss(logits, torch.tensor([k - 1e-9], dtype=torch.float64))
        at = pf.distribution_focal_loss(logits, torch.tensor([float(k)], dtype=torch.float64))
        above = pf.distribution_focal_loss(logits, torch.tensor([k + 1e-9], dtype=torch.float64))
        torch.testing.assert_close(below, at, atol=1e-7, rtol=0)
        torch.testing.assert_close(above, at, atol=1e-7, rtol=0)


@pytest.mark.parametrize("n", [2, 5, 17])
def test_decode_distribution_of_peaked_distribution_is_that_bin(n):
    k = torch.arange(n)
    logits = 40.0 * F.one_hot(k, n).to(torch.float64)  # row k peaked at bin k
    torch.testing.assert_close(pf.decode_distribution(logits), k.to(torch.float64))
    # very peaked (1e4) stays exact and finite
    torch.testing.assert_close(pf.decode_distribution(logits * 250), k.to(torch.float64))


def test_decode_distribution_is_the_expectation_and_respects_dim():
    x = torch.randn(3, 7, 4, 2, generator=gen(41), dtype=torch.float64)
    want = (torch.softmax(x, 1) * torch.arange(7, dtype=torch.float64).view(1, 7, 1, 1)).sum(1)
    torch.testing.assert_close(pf.decode_distribution(x), want)
    torch.testing.assert_close(pf.decode_distribution(x, dim=1), want)
    torch.testing.assert_close(pf.decode_distribution(x.movedim(1, -1), dim=-1), want)
    torch.testing.assert_close(pf.decode_distribution(x.movedim(1, 2), dim=2), want)
    torch.testing.assert_close(pf.decode_distribution(x.log_softmax(1), log_probs=True), want)
    torch.testing.assert_close(pf.decode_distribution(x + 100.0), want)  # shift invariance
    assert pf.decode_distribution(x).shape == (3, 4, 2)


def test_decode_of_the_two_hot_distribution_is_the_target():
    n = 9
    y = torch.tensor([0.0, 0.25, 3.0, 4.5, 7.999, 8.0], dtype=torch.float64)
    left = torch.floor(y).clamp(max=n - 2).long()
    wr = y - left
    hot = F.one_hot(left, n) * (1 - wr).unsqueeze(-1) + F.one_hot(left + 1, n) * wr.unsqueeze(-1)
    logits = torch.log(hot).clamp_min(-200.0)
    torch.testing.assert_close(pf.decode_distribution(logits), y)


def _two_hot_logits(target, n):
    y = target.clamp(0, n - 1)
    left = torch.floor(y).clamp(max=n - 2).long()
    wr = y - left
    hot = F.one_hot(left, n) * (1 - wr).unsqueeze(-1) + F.one_hot(left + 1, n) * wr.unsqueeze(-1)
    return torch.log(hot.movedim(-1, 1)).clamp_min(-60.0), wr


def test_dfl_is_minimised_by_the_two_hot_distribution():
    n = 7
    target = torch.tensor([0.3, 2.5, 4.9, 1.0, 6.0, 5.75], dtype=torch.float64)
    logits, wr = _two_hot_logits(target, n)
    logits.requires_grad_()
    loss = pf.distribution_focal_loss(logits, target, reduction="none")
    # at the optimum the loss is the binary entropy of the right bin's weight
    entropy = -(torch.xlogy(wr, wr) + torch.xlogy(1 - wr, 1 - wr))
    torch.testing.assert_close(loss, entropy, atol=1e-12, rtol=0)
    # and the gradient (softmax - two-hot) vanishes
    torch.testing.assert_close(grad(loss, logits), torch.zeros_like(logits), atol=1e-12, rtol=0)
    # any perturbation increases it (Gibbs)
    g = gen(42)
    for _ in range(20):
        other = logits.detach() + torch.randn(logits.shape, generator=g, dtype=torch.float64)
        assert (pf.distribution_focal_loss(other, target, reduction="none") >= loss.detach() - 1e-12).all()
    # GFL is zero there (y_hat = y), its minimum (it is >= 0)
    gfl = pf.generalized_focal_loss(logits, target, reduction="none")
    torch.testing.assert_close(gfl, torch.zeros_like(gfl), atol=1e-12, rtol=0)


def test_qfl_minimum_is_at_sigma_equal_target():
    y = torch.tensor([0.1, 0.3, 0.5, 0.77, 0.95], dtype=torch.float64)
    x = torch.logit(y).requires_grad_()
    for beta in (0.0, 1.0, 2.0):
        if beta != 1.0:  # beta = 1: a kink at the minimum, not a stationary point
            loss = pf.quality_focal_loss(x, y, beta=beta, reduction="sum")
            torch.testing.assert_close(grad(loss, x), torch.zeros_like(x), atol=1e-12, rtol=0)
        for d in (-0.5, -0.01, 0.01, 0.5):
            moved = pf.quality_focal_loss(x.detach() + d, y, beta=beta, reduction="none")
            assert (moved > pf.quality_focal_loss(x.detach(), y, beta=beta, reduction="none")).all()
    # with beta > 0 the loss is exactly zero at the minimum
    assert pf.quality_focal_loss(torch.tensor([0.0]), torch.tensor([0.5]), beta=2.0).item() == 0.0


def test_losses_are_non_negative():
    x, y = sig_inputs((50,), seed=43)
    assert (pf.quality_focal_loss(x, y, reduction="none") >= 0).all()
    assert (pf.varifocal_loss(x, vfl_target((50,), seed=44), reduction="none") >= 0).all()
    logits, target = dist_inputs((20, 6), seed=45)
    assert (pf.distribution_focal_loss(logits, target, reduction="none") >= 0).all()
    assert (pf.generalized_focal_loss(logits, target, reduction="none") >= 0).all()


# --- 4. clamping and no mutation of the caller's tensors --------------------------------------------


@pytest.mark.parametrize("name", ["dfl", "gfl"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_targets_outside_range_are_clamped_on_a_copy(name, dtype):
    n = 6
    logits = torch.randn(6, n, 2, generator=gen(46), dtype=dtype).requires_grad_()
    target = torch.tensor([[-3.0, -0.1], [0.0, 2.5], [5.0, 5.5], [100.0, 4.2], [-1e6, 1e6], [1.0, 5.0]],
                          dtype=torch.float64 if dtype == torch.float16 else dtype)
    before = target.clone()
    clamped = target.clamp(0, n - 1)
    f = pf.distribution_focal_loss if name == "dfl" else pf.generalized_focal_loss
    got = f(logits, target, reduction="none")
    want = f(logits, clamped, reduction="none")
    assert torch.equal(target, before), "the caller's target was modified"
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad(got, logits), grad(want, logits))
    assert torch.isfinite(got).all()
    if dtype == torch.float64:
        ref = ref_dfl(logits, target) if name == "dfl" else ref_gfl(logits, target, 2.0)
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("name", ["qfl", "vfl", "dfl", "gfl"])
def test_inputs_are_not_modified(name):
    if name in ("qfl", "vfl"):
        x, y = sig_inputs((4, 3, 5), seed=47)
    else:
        x, y = dist_inputs((4, 6, 5), seed=47)
    f = {"qfl": pf.quality_focal_loss, "vfl": pf.varifocal_loss,
         "dfl": pf.distribution_focal_loss, "gfl": pf.generalized_focal_loss}[name]
    w = torch.rand(y.shape, dtype=torch.float64) + 0.5
    xs, ys, ws = x.detach().clone(), y.clone(), w.clone()
    f(x, y, weight=w).backward()
    assert torch.equal(x.detach(), xs) and torch.equal(y, ys) and torch.equal(w, ws)


def test_detection_form_inputs_are_not_modified():
    x, labels, scores = _index_inputs((4, 3, 5), seed=48)
    ls, ss = labels.clone(), scores.clone()
    pf.varifocal_loss(x, (labels, scores)).backward()
    pf.quality_focal_loss(x, (labels, scores)).backward()
    assert torch.equal(labels, ls) and torch.equal(scores, ss)


# --- 5. gradcheck ---------------------------------------------------------------------------------


def test_gradcheck_qfl():
    x, y = sig_inputs((3, 4, 2), seed=50)
    assert torch.autograd.gradcheck(lambda t: pf.quality_focal_loss(t, y, beta=2.0, reduction="none"), (x,))
    assert torch.autograd.gradcheck(lambda t: pf.quality_focal_loss(t, y, beta=1.5), (x,))
    x, labels, scores = _index_inputs((3, 4, 2), seed=51)
    assert torch.autograd.gradcheck(lambda t: pf.quality_focal_loss(t, (labels, scores)), (x,))


@pytest.mark.parametrize("iou_weighted", [True, False])
def test_gradcheck_vfl(iou_weighted):
    x, _ = sig_inputs((3, 4, 2), seed=52)
    q = vfl_target((3, 4, 2), seed=53)
    assert torch.autograd.gradcheck(
        lambda t: pf.varifocal_loss(t, q, iou_weighted=iou_weighted, reduction="none"), (x,))
    assert torch.autograd.gradcheck(
        lambda t: pf.varifocal_loss(t, q, gamma=0.5, alpha=0.3, iou_weighted=iou_weighted), (x,))


def test_gradcheck_dfl():
    logits, target = dist_inputs((3, 5, 2), seed=54)
    w = torch.rand(target.shape, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(
        lambda t: pf.distribution_focal_loss(t, target, reduction="none"), (logits,))
    assert torch.autograd.gradcheck(lambda t: pf.distribution_focal_loss(t, target, weight=w), (logits,))


@pytest.mark.parametrize("beta", [2.0, 1.5, 3.0])
def test_gradcheck_gfl(beta):
    logits, target = dist_inputs((3, 5, 2), seed=55, spread=False)
    assert torch.autograd.gradcheck(
        lambda t: pf.generalized_focal_loss(t, target, beta=beta, reduction="none"), (logits,))


def test_gradcheck_decode_distribution():
    x = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: pf.decode_distribution(t), (x,))
    assert torch.autograd.gradgradcheck(lambda t: pf.decode_distribution(t), (x,))


# --- 6. extremes --------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_qfl_extreme_logits_hard_targets(beta, dtype):
    x = torch.tensor([1e4, -1e4, 1e4, -1e4, 0.0, 50.0, -50.0, 90.0, -90.0], dtype=dtype, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0], dtype=dtype)
    loss = pf.quality_focal_loss(x, y, beta=beta, reduction="none")
    g = grad(loss, x)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all(), (loss, g)
    # confident and right: exactly zero loss and gradient (|y - sigma| = 0 must not give NaN at beta < 1)
    assert loss[0] == 0 and loss[1] == 0 and g[0] == 0 and g[1] == 0
    # confident and wrong: |y - sigma| = 1, BCE = 1e4
    torch.testing.assert_close(loss[2:4], torch.full((2,), 1e4, dtype=dtype))
    torch.testing.assert_close(g[2:4], torch.tensor([1.0, -1.0], dtype=dtype))


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_qfl_gap_exactly_zero_has_zero_not_nan_gradient(beta):
    # sigma(0) = 0.5 = y exactly: |y - sigma| = 0
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    y = torch.full((3,), 0.5, dtype=torch.float64)
    loss = pf.quality_focal_loss(x, y, beta=beta, reduction="sum")
    g = grad(loss, x)
    assert loss.item() == 0.0
    assert torch.isfinite(g).all() and (g == 0).all()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("iou_weighted", [True, False])
def test_vfl_extreme_logits_hard_targets(gamma, iou_weighted):
    x = torch.tensor([1e4, -1e4, 1e4, -1e4, 90.0, -90.0], requires_grad=True)
    q = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.5])
    loss = pf.varifocal_loss(x, q, gamma=gamma, iou_weighted=iou_weighted, reduction="none")
    g = grad(loss, x)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all(), (loss, g)
    assert loss[0] == 0 and loss[1] == 0 and g[0] == 0 and g[1] == 0
    torch.testing.assert_close(loss[2], torch.tensor(0.75 * 1e4))  # alpha p^gamma (-log(1-p)), p = 1
    torch.testing.assert_close(loss[3], torch.tensor(1e4))
    torch.testing.assert_close(loss[4], torch.tensor(0.75 * 90.0))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
def test_dfl_gfl_extreme_logits(beta):
    n = 4
    big = 1e4
    # peaked on bin 0, bin 3, bin 1 and bin 2
    logits = torch.full((4, n), -big)
    for i, k in enumerate([0, 3, 1, 2]):
        logits[i, k] = big
    logits.requires_grad_()
    target = torch.tensor([0.0, 3.0, 0.0, 2.5])  # right, right, wrong, half
    dfl = pf.distribution_focal_loss(logits, target, reduction="none")
    gfl = pf.generalized_focal_loss(logits, target, beta=beta, reduction="none")
    for loss in (dfl, gfl):
        g = torch.autograd.grad(loss.sum(), logits, retain_graph=True)[0]
        assert torch.isfinite(loss).all() and torch.isfinite(g).all(), (loss, g)
    assert dfl[0] == 0 and dfl[1] == 0
    assert gfl[0] == 0 and gfl[1] == 0
    torch.testing.assert_close(dfl[2], torch.tensor(2 * big))
    torch.testing.assert_close(gfl[2], torch.tensor(2 * big * 1.0**beta))  # |0 - 1|^beta
    torch.testing.assert_close(gfl[3], torch.tensor(0.5 * 2 * big * 0.5**beta))
    g = grad(gfl[:2].sum(), logits)
    assert (g == 0).all()


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_gfl_gap_exactly_zero_has_finite_gradient(beta):
    # uniform over 3 bins: y_hat = 1 exactly; target 1
    logits = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    target = torch.ones(2, dtype=torch.float64)
    loss = pf.generalized_focal_loss(logits, target, beta=beta, reduction="sum")
    assert loss.item() == 0.0
    g = grad(loss, logits)
    assert torch.isfinite(g).all() and (g == 0).all()


def test_moderately_large_logits_fp32_finite():
    x = torch.linspace(-120, 120, 241).requires_grad_()
    for beta in (0.25, 0.5, 2.0):
        for y in (0.0, 1.0, 0.3):
            loss = pf.quality_focal_loss(x, torch.full_like(x, y), beta=beta, reduction="sum")
            assert torch.isfinite(loss) and torch.isfinite(grad(loss, x)).all(), (beta, y)


# --- 7. dtypes ----------------------------------------------------------------------------------


def _all_losses():
    sx, sy = sig_inputs((4, 5, 3), seed=60, dtype=torch.float32)
    q = vfl_target((4, 5, 3), seed=61).float()
    dx, dy = dist_inputs((4, 6, 3), seed=62, dtype=torch.float32)
    return [
        ("qfl", pf.quality_focal_loss, sx, sy, {"beta": 2.0}),
        ("qfl_b05", pf.quality_focal_loss, sx, sy, {"beta": 0.5}),
        ("vfl", pf.varifocal_loss, sx, q, {}),
        ("dfl", pf.distribution_focal_loss, dx, dy, {}),
        ("gfl", pf.generalized_focal_loss, dx, dy, {"beta": 2.0}),
    ]


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_low_precision_returns_input_dtype_close_to_fp32(dtype, tol, reduction):
    for name, f, x, y, kw in _all_losses():
        low = x.detach().to(dtype).requires_grad_()
        up = low.detach().float().requires_grad_()  # the same values in fp32
        got = f(low, y, reduction=reduction, **kw)
        want = f(up, y, reduction=reduction, **kw)
        assert got.dtype == dtype, name
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol, msg=name)
        g_low, g_up = grad(got, low), grad(want, up)
        assert g_low.dtype == dtype, name
        assert torch.isfinite(g_low).all(), name
        torch.testing.assert_close(g_low.float(), g_up, rtol=4 * tol, atol=tol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_targets_and_weights(dtype):
    # targets and weights in low precision with fp32 logits give the fp32 result on those values
    logits, target = dist_inputs((4, 6, 3), seed=63, dtype=torch.float32)
    t_low = target.to(dtype)
    torch.testing.assert_close(pf.distribution_focal_loss(logits, t_low),
                               pf.distribution_focal_loss(logits, t_low.float()))
    x, y = sig_inputs((4, 5), seed=64, dtype=torch.float32)
    torch.testing.assert_close(pf.quality_focal_loss(x, y.to(dtype)), pf.quality_focal_loss(x, y.to(dtype).float()))


def test_float64_is_computed_in_float64():
    x, y = sig_inputs((3, 4), seed=65)
    got = pf.quality_focal_loss(x, y, reduction="none")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref_qfl(x, y, 2.0), rtol=1e-12, atol=1e-13)
    logits, target = dist_inputs((3, 5), seed=66)
    got = pf.generalized_focal_loss(logits, target, reduction="none")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref_gfl(logits, target, 2.0), rtol=1e-12, atol=1e-13)
    assert pf.decode_distribution(logits).dtype == torch.float64


def test_autocast_low_precision_returns_fp32():
    x, y = sig_inputs((4, 5), seed=67, dtype=torch.float32)
    low = x.detach().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pf.quality_focal_loss(low, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, pf.quality_focal_loss(low.float(), y))


# --- 8. bad inputs --------------------------------------------------------------------------------


def _x():
    return torch.randn(4, 3, 2)


def _d():
    return torch.randn(4, 5, 2), torch.rand(4, 2) * 4


BAD = [
    # hyperparameters
    ("qfl beta<0", lambda: pf.quality_focal_loss(_x(), torch.rand(4, 3, 2), beta=-0.5), ValueError, "beta"),
    ("qfl beta nan", lambda: pf.quality_focal_loss(_x(), torch.rand(4, 3, 2), beta=float("nan")), ValueError, "beta"),
    ("qfl beta str", lambda: pf.quality_focal_loss(_x(), torch.rand(4, 3, 2), beta="2"), TypeError, "beta"),
    ("qfl beta bool", lambda: pf.quality_focal_loss(_x(), torch.rand(4, 3, 2), beta=True), TypeError, "beta"),
    ("vfl gamma<0", lambda: pf.varifocal_loss(_x(), torch.rand(4, 3, 2), gamma=-1.0), ValueError, "gamma"),
    ("vfl alpha<0", lambda: pf.varifocal_loss(_x(), torch.rand(4, 3, 2), alpha=-0.25), ValueError, "alpha"),
    ("vfl alpha inf", lambda: pf.varifocal_loss(_x(), torch.rand(4, 3, 2), alpha=float("inf")), ValueError, "alpha"),
    ("gfl beta<0", lambda: pf.generalized_focal_loss(*_d(), beta=-1.0), ValueError, "beta"),
    ("gfl beta None", lambda: pf.generalized_focal_loss(*_d(), beta=None), TypeError, "beta"),
    # shapes
    ("qfl target shape", lambda: pf.quality_focal_loss(_x(), torch.rand(4, 3)), ValueError, "target"),
    ("qfl index shape", lambda: pf.quality_focal_loss(_x(), torch.zeros(4, 3, dtype=torch.long)), ValueError, "target"),
    ("vfl target shape", lambda: pf.varifocal_loss(_x(), torch.rand(3, 2)), ValueError, "target"),
    ("qfl scores shape", lambda: pf.quality_focal_loss(_x(), (torch.zeros(4, 2, dtype=torch.long), torch.rand(4, 3))),
     ValueError, "scores"),
    ("dfl target shape", lambda: pf.distribution_focal_loss(torch.randn(4, 5, 2), torch.rand(4, 5, 2)), ValueError, "target"),
    ("gfl target shape", lambda: pf.generalized_focal_loss(torch.randn(4, 5, 2), torch.rand(4)), ValueError, "target"),
    ("dfl logits 1d", lambda: pf.distribution_focal_loss(torch.randn(4), torch.rand(4)), ValueError, "logits"),
    ("dfl one bin", lambda: pf.distribution_focal_loss(torch.randn(4, 1), torch.rand(4)), ValueError, "logits"),
    ("gfl one bin", lambda: pf.generalized_focal_loss(torch.randn(4, 1), torch.rand(4)), ValueError, "logits"),
    ("dfl weight shape", lambda: pf.distribution_focal_loss(*_d(), weight=torch.rand(3)), ValueError, "weight"),
    ("gfl weight shape", lambda: pf.generalized_focal_loss(*_d(), weight=torch.rand(4, 5, 2)), ValueError, "weight"),
    ("qfl weight shape", lambda: pf.quality_focal_loss(_x(), torch.rand(4, 3, 2), weight=torch.rand(5)), ValueError, "weight"),
    ("qfl weight list", lambda: pf.quality_focal_loss(_x(), torch.rand(4, 3, 2), weight=[1.0, 2.0]), TypeError, "weight"),
    # dtypes
    ("dfl int target", lambda: pf.distribution_focal_loss(torch.randn(4, 5), torch.tensor([0, 1, 2, 3])), TypeError, "target"),
    ("gfl int target", lambda: pf.generalized_focal_loss(torch.randn(4, 5), torch.tensor([0, 1, 2, 3])), TypeError, "target"),
    ("dfl int logits", lambda: pf.distribution_focal_loss(torch.ones(4, 5, dtype=torch.long), torch.rand(4)), TypeError, "logits"),
    ("qfl int logits", lambda: pf.quality_focal_loss(torch.ones(4, 3, dtype=torch.long), torch.rand(4, 3)), TypeError, "logits"),
    ("qfl bool target", lambda: pf.quality_focal_loss(_x(), torch.ones(4, 3, 2, dtype=torch.bool)), TypeError, "target"),
    ("qfl list target", lambda: pf.quality_focal_loss(_x(), [[0.0]]), TypeError, "target"),
    ("dfl list target", lambda: pf.distribution_focal_loss(torch.randn(4, 5), [0.0] * 4), TypeError, "target"),
    ("qfl int scores", lambda: pf.quality_focal_loss(_x(), (torch.zeros(4, 2, dtype=torch.long),
                                                           torch.ones(4, 2, dtype=torch.long))), TypeError, "target"),
    ("qfl float labels", lambda: pf.quality_focal_loss(_x(), (torch.zeros(4, 2), torch.rand(4, 2))), TypeError, "labels"),
    ("qfl 3-tuple", lambda: pf.quality_focal_loss(_x(), (torch.zeros(4, 2, dtype=torch.long), torch.rand(4, 2),
                                                         torch.rand(4, 2))), ValueError, "target"),
    ("decode int", lambda: pf.decode_distribution(torch.ones(3, 4, dtype=torch.long)), TypeError, "logits"),
    ("qfl ignore_index float", lambda: pf.quality_focal_loss(_x(), torch.zeros(4, 2, dtype=torch.long), ignore_index=1.5),
     TypeError, "ignore_index"),
    # reductions
    ("qfl bogus", lambda: pf.quality_focal_loss(_x(), torch.rand(4, 3, 2), reduction="bogus"), ValueError, "reduction"),
    ("vfl bogus", lambda: pf.varifocal_loss(_x(), torch.rand(4, 3, 2), reduction="bogus"), ValueError, "reduction"),
    ("dfl bogus", lambda: pf.distribution_focal_loss(*_d(), reduction="bogus"), ValueError, "reduction"),
    ("gfl bogus", lambda: pf.generalized_focal_loss(*_d(), reduction="bogus"), ValueError, "reduction"),
    ("qfl normalizer sum", lambda: pf.quality_focal_loss(_x(), torch.rand(4, 3, 2), reduction="sum", normalizer=2.0),
     ValueError, "normalizer"),
    ("vfl normalizer none", lambda: pf.varifocal_loss(_x(), torch.rand(4, 3, 2), reduction="none", normalizer=2.0),
     ValueError, "normalizer"),
    ("dfl normalizer sum", lambda: pf.distribution_focal_loss(*_d(), reduction="sum", normalizer=2.0), ValueError, "normalizer"),
    ("gfl normalizer sum", lambda: pf.generalized_focal_loss(*_d(), reduction="sum", normalizer=2.0), ValueError, "normalizer"),
    ("dfl normalizer 0", lambda: pf.distribution_focal_loss(*_d(), normalizer=0.0), ValueError, "normalizer"),
    ("gfl normalizer <0", lambda: pf.generalized_focal_loss(*_d(), normalizer=-1.0), ValueError, "normalizer"),
    ("qfl normalizer tensor shape", lambda: pf.quality_focal_loss(_x(), torch.rand(4, 3, 2), normalizer=torch.ones(2)),
     ValueError, "normalizer"),
    # values (validate)
    ("qfl target > 1", lambda: pf.quality_focal_loss(_x(), torch.full((4, 3, 2), 1.5), validate=True), ValueError, "target"),
    ("qfl target < 0", lambda: pf.quality_focal_loss(_x(), torch.full((4, 3, 2), -0.1), validate=True), ValueError, "target"),
    ("qfl target nan", lambda: pf.quality_focal_loss(_x(), torch.full((4, 3, 2), float("nan")), validate=True),
     ValueError, "target"),
    ("qfl target > 1 default", lambda: pf.quality_focal_loss(_x(), torch.full((4, 3, 2), 1.5)), ValueError, "target"),
    ("vfl target > 1", lambda: pf.varifocal_loss(_x(), torch.full((4, 3, 2), 2.0), validate=True), ValueError, "target"),
    ("qfl scores > 1", lambda: pf.quality_focal_loss(_x(), (torch.zeros(4, 2, dtype=torch.long), torch.full((4, 2), 1.2)),
                                                     validate=True), ValueError, "target scores"),
    ("qfl label > C", lambda: pf.quality_focal_loss(_x(), torch.full((4, 2), 4, dtype=torch.long), validate=True),
     ValueError, "target"),
    ("qfl label < 0", lambda: pf.quality_focal_loss(_x(), torch.full((4, 2), -1, dtype=torch.long), validate=True),
     ValueError, "target"),
    ("dfl target nan", lambda: pf.distribution_focal_loss(torch.randn(4, 5), torch.tensor([0.0, float("nan"), 1.0, 2.0]),
                                                          validate=True), ValueError, "target"),
    ("gfl target inf", lambda: pf.generalized_focal_loss(torch.randn(4, 5), torch.tensor([0.0, float("inf"), 1.0, 2.0]),
                                                         validate=True), ValueError, "target"),
]


@pytest.mark.parametrize("call,exc,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_inputs_raise_naming_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_validate_false_skips_value_checks():
    x = torch.randn(4, 3, 2)
    pf.quality_focal_loss(x, torch.full((4, 3, 2), 1.5), validate=False)  # no error
    pf.varifocal_loss(x, (torch.zeros(4, 2, dtype=torch.long), torch.full((4, 2), 1.2)), validate=False)


def test_index_target_background_is_valid_and_ignore_index_is_not_checked():
    x = torch.randn(4, 3, 2)
    labels = torch.tensor([[3, 3], [0, 2], [-7, 1], [3, -7]])
    pf.quality_focal_loss(x, labels, ignore_index=-7, validate=True)
    with pytest.raises(ValueError, match="target"):
        pf.quality_focal_loss(x, labels, validate=True)  # -7 is not the ignore_index here


def test_empty_batch_gives_zero():
    x = torch.randn(0, 5, 3, requires_grad=True)
    t = torch.rand(0, 3)
    for f in (pf.distribution_focal_loss, pf.generalized_focal_loss):
        loss = f(x, t)
        assert loss.item() == 0.0
        g = grad(loss, x)
        assert g.shape == x.shape
    loss = pf.quality_focal_loss(x, torch.zeros(0, 3, dtype=torch.long))
    assert loss.item() == 0.0


# --- 9. Modules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("module,function,kwargs,kind", [
    (pf.QualityFocalLoss, pf.quality_focal_loss, {"beta": 2.0}, "sig"),
    (pf.QualityFocalLoss, pf.quality_focal_loss, {"beta": 0.5, "reduction": "sum"}, "sig"),
    (pf.QualityFocalLoss, pf.quality_focal_loss, {}, "det"),
    (pf.VarifocalLoss, pf.varifocal_loss, {"alpha": 0.5, "gamma": 1.0, "iou_weighted": False}, "sig"),
    (pf.VarifocalLoss, pf.varifocal_loss, {"reduction": "none"}, "det"),
    (pf.DistributionFocalLoss, pf.distribution_focal_loss, {}, "dist"),
    (pf.DistributionFocalLoss, pf.distribution_focal_loss, {"reduction": "none"}, "dist"),
    (pf.GeneralizedFocalLoss, pf.generalized_focal_loss, {"beta": 1.0, "normalizer": 3.0}, "dist"),
])
def test_module_equals_function(module, function, kwargs, kind):
    if kind == "sig":
        x, y = sig_inputs((4, 3, 5), seed=70)
    elif kind == "det":
        x, labels, scores = _index_inputs((4, 3, 5), seed=70)
        y = (labels, scores)
    else:
        x, y = dist_inputs((4, 6, 5), seed=70)
    got = module(**kwargs)(x, y)
    want = function(x, y, **kwargs)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(grad(got, x), grad(want, x), rtol=0, atol=0)


def test_module_tensor_weight_is_a_buffer():
    x, y = dist_inputs((4, 6, 5), seed=71)
    w = torch.rand(4, 5, dtype=torch.float64)
    m = pf.DistributionFocalLoss(weight=w)
    assert "weight" in dict(m.named_buffers())
    assert "weight" in m.state_dict()
    torch.testing.assert_close(m(x, y), pf.distribution_focal_loss(x, y, weight=w))
    m = pf.GeneralizedFocalLoss(weight=w, beta=1.5)
    torch.testing.assert_close(m(x, y), pf.generalized_focal_loss(x, y, weight=w, beta=1.5))


@pytest.mark.parametrize("module", [pf.QualityFocalLoss, pf.VarifocalLoss, pf.DistributionFocalLoss,
                                    pf.GeneralizedFocalLoss])
def test_module_rejects_unknown_arguments(module):
    with pytest.raises(TypeError, match="bogus_arg"):
        module(bogus_arg=1.0)


def test_module_hyperparameter_errors_surface_when_built():
    """A bad value is an error where the Module is made (issue 14), not at its first call."""
    with pytest.raises(ValueError, match="beta"):
        pf.QualityFocalLoss(beta=-1.0)


# --- extra: label dtypes, decode in low precision ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64])
def test_any_integer_label_dtype(dtype):
    x = torch.randn(4, 3, 2, generator=gen(80), dtype=torch.float64)
    labels = torch.tensor([[3, 0], [1, 2], [0, 3], [2, 2]])
    scores = torch.rand(4, 2, generator=gen(81), dtype=torch.float64)
    torch.testing.assert_close(pf.quality_focal_loss(x, labels.to(dtype)), pf.quality_focal_loss(x, labels))
    torch.testing.assert_close(pf.varifocal_loss(x, (labels.to(dtype), scores)), pf.varifocal_loss(x, (labels, scores)))


def test_index_target_needs_class_dim():
    with pytest.raises(ValueError, match="logits"):
        pf.quality_focal_loss(torch.randn(4), torch.tensor([0, 1, 0, 1]))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 8e-2)])
def test_decode_distribution_low_precision(dtype, tol):
    x = torch.randn(6, 9, 3, generator=gen(82)).to(dtype)
    got = pf.decode_distribution(x)
    assert got.dtype == dtype and got.shape == (6, 3)
    torch.testing.assert_close(got.float(), pf.decode_distribution(x.float()), rtol=0, atol=tol)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_qfl_fp32_confident_positive_keeps_relative_accuracy(beta):
    # y = 1, large x: |y - sigma| = sigmoid(-x), which 1 - sigmoid(x) loses in fp32 (it rounds to 0
    # beyond x ~ 17). The loss must stay accurate in relative terms against an fp64 reference.
    x64 = torch.linspace(5.0, 20.0, 31, dtype=torch.float64)
    x = x64.float().requires_grad_()
    y = torch.ones_like(x)
    got = pf.quality_focal_loss(x, y, beta=beta, reduction="none")
    ref_x = x.detach().double().requires_grad_()
    want = ref_qfl(ref_x, torch.ones_like(ref_x), beta)
    assert (got > 0).all()
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=0)
    torch.testing.assert_close(grad(got, x).double(), grad(want, ref_x), rtol=1e-4, atol=0)


@pytest.mark.parametrize("backend", ["fused", "triton"])
def test_generalized_focal_loss_refuses_a_forced_engine_it_does_not_have(backend):
    logits, target = torch.randn(4, 5), torch.rand(4) * 4
    with pytest.raises(ValueError, match=f"has no {backend} engine"):
        pf.generalized_focal_loss(logits, target, backend=backend)
    with pf.use_backend("fused"):  # a process-wide preference is not a forced engine
        assert torch.isfinite(pf.generalized_focal_loss(logits, target))
