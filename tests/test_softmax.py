"""Softmax family against the references, torch, and the family's identities."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import polyfocal as pf
import reference as ref


SHAPES = [(7, 5), (3, 4, 5), (2, 6, 3, 4)]  # odd sizes, extra spatial dims
REDUCTIONS = ["none", "sum", "mean"]


def make_inputs(shape, target_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).requires_grad_()
    n, c = shape[0], shape[1]
    rest = shape[2:]
    if target_kind == "probs":
        target = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 3, dim=1)
    else:
        target = torch.randint(0, c, (n,) + rest, generator=g)
        target.view(-1)[::4] = -100  # some ignored examples
    return logits, target


def grads(loss, logits):
    return torch.autograd.grad(loss.sum(), logits)[0]


@pytest.mark.parametrize("name", sorted(ref.SOFTMAX))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target_kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference(name, shape, target_kind, reduction):
    if target_kind == "probs" and name in ref.INDEX_ONLY:
        pytest.skip("class indices only (test_longtail: a probability target is a TypeError)")
    phi, params = ref.SOFTMAX[name]
    logits, target = make_inputs(shape, target_kind)
    weight = torch.rand(shape[1], dtype=torch.float64) + 0.5
    got = pf.get_loss_function(name)(logits, target, weight=weight, reduction=reduction, **params)
    want = ref.softmax_loss(phi, logits, target, weight=weight, reduction=reduction, **params)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grads(got, logits), grads(want, logits))


@pytest.mark.parametrize("name", sorted(ref.SOFTMAX))
def test_matches_reference_with_label_smoothing(name):
    phi, params = ref.SOFTMAX[name]
    logits, target = make_inputs((6, 4, 3), "index", seed=1)
    got = pf.get_loss_function(name)(logits, target, label_smoothing=0.2, **params)
    want = ref.softmax_loss(phi, logits, target, label_smoothing=0.2, **params)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grads(got, logits), grads(want, logits))


@pytest.mark.parametrize("alpha", [0.25, [0.1, 0.2, 0.3, 0.4, 0.5]])
def test_focal_alpha_is_a_class_factor_outside_the_mean(alpha):
    logits, target = make_inputs((9, 5), "index", seed=2)
    got = pf.focal_loss(logits, target, gamma=1.5, alpha=alpha)
    want = ref.softmax_loss(ref.focal, logits, target, alpha=alpha, gamma=1.5)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("target_kind", ["index", "probs"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_torch(target_kind, label_smoothing, use_weight, reduction):
    logits, target = make_inputs((5, 4, 6), target_kind, seed=3)
    weight = torch.rand(4, dtype=torch.float64) if use_weight else None
    kwargs = dict(weight=weight, label_smoothing=label_smoothing, reduction=reduction)
    got = pf.cross_entropy(logits, target, **kwargs)
    want = F.cross_entropy(logits, target, **kwargs)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grads(got, logits), grads(want, logits))


@pytest.mark.parametrize("name", sorted(ref.SOFTMAX))
def test_gradcheck(name):
    if name in ref.STOP_GRADIENT:
        pytest.skip("its gradient is not its value's derivative: test_dft_derivatives_are_p_t_times_cross_entropys")
    _, params = ref.SOFTMAX[name]
    logits, target = make_inputs((3, 4, 2), "index", seed=4)
    fn = pf.get_loss_function(name)
    assert torch.autograd.gradcheck(lambda x: fn(x, target, **params), (logits.detach().requires_grad_(),))
    if name in ref.INDEX_ONLY:
        return
    probs = torch.softmax(torch.randn(3, 4, 2, dtype=torch.float64), 1)
    assert torch.autograd.gradcheck(lambda x: fn(x, probs, **params), (logits.detach().requires_grad_(),))


@pytest.mark.parametrize("backend", ["reference", "eager", "fused"])
@pytest.mark.parametrize("form", ["index", "soft"])
def test_dft_derivatives_are_p_t_times_cross_entropys(form, backend):
    """DFT's weight sg(p_t) is a constant at every order: its gradient and Hessian-vector product are
    those of cross-entropy times a constant p_t (for a soft target, each class's term times its p_c)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 5, 3, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, 5, (6, 3), generator=g) if form == "index" else torch.softmax(torch.randn(6, 5, 3, generator=g, dtype=torch.float64), 1)
    log_p = torch.log_softmax(x, 1)
    if form == "index":
        twin = lambda z: log_p.exp().gather(1, target[:, None]).squeeze(1) * pf.cross_entropy(z, target, reduction="none")
    else:
        twin = lambda z: -(target * log_p.exp() * torch.log_softmax(z, 1)).sum(1)
    v, u = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(x.shape, generator=g, dtype=torch.float64)
    results = []
    for f in (lambda z: pf.dft_cross_entropy(z, target, reduction="none", backend=backend), twin):
        xin = x.clone().requires_grad_()
        loss = f(xin)
        (grad,) = torch.autograd.grad((loss * v).sum(), xin, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * u).sum(), xin)
        results.append((loss, grad, hvp))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# --- identities --------------------------------------------------------------------------------------


def assert_same_loss_and_grad(a_fn, b_fn, logits):
    a, b = a_fn(logits), b_fn(logits)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(grads(a, logits), grads(b, logits))


@pytest.mark.parametrize("target_kind", ["index", "probs"])
def test_focal_gamma0_and_poly1_eps0_are_cross_entropy(target_kind):
    logits, target = make_inputs((6, 5, 3), target_kind, seed=5)
    ce = lambda x: pf.cross_entropy(x, target, reduction="none")  # noqa: E731
    assert_same_loss_and_grad(lambda x: pf.focal_loss(x, target, gamma=0.0, reduction="none"), ce, logits)
    assert_same_loss_and_grad(lambda x: pf.poly1_cross_entropy(x, target, epsilon=0.0, reduction="none"), ce, logits)


@pytest.mark.parametrize("target_kind", ["index", "probs"])
def test_poly_loss_reproduces_the_family(target_kind):
    logits, target = make_inputs((6, 5, 3), target_kind, seed=6)
    cases = [
        (dict(coefficients=(1.0,)), lambda x: pf.cross_entropy(x, target)),
        (dict(coefficients=(1.0,), gamma=2.0, alpha=0.3), lambda x: pf.focal_loss(x, target, gamma=2.0, alpha=0.3)),
        (dict(coefficients=(3.5,)), lambda x: pf.poly1_cross_entropy(x, target, epsilon=2.5)),
        (dict(coefficients=(1.5, 0.5 - 0.2, 1 / 3 + 0.1)),
         lambda x: pf.polyn_cross_entropy(x, target, epsilons=(0.5, -0.2, 0.1))),
        (dict(coefficients=(1.0, 0.5, 1 / 3, 0.25), tail="drop"),
         lambda x: pf.truncated_cross_entropy(x, target, n_terms=4)),
    ]
    for params, other in cases:
        assert_same_loss_and_grad(lambda x: pf.poly_loss(x, target, **params), other, logits)


def test_reference_tail_is_the_literal_series():
    p = torch.linspace(0.05, 1.0, 40, dtype=torch.float64)
    for n_terms, gamma in [(0, 0.0), (2, 0.5), (5, 2.0)]:
        torch.testing.assert_close(ref.ce_tail(p, n_terms, gamma), ref.ce_tail(p, n_terms, gamma, n_series=2000))


def test_poly1_with_soft_labels_uses_pt_as_expected_probability():
    """PolyLoss's listing: CE with soft labels + epsilon (1 - sum_c y_c p_c)."""
    logits, target = make_inputs((8, 6), "probs", seed=7)
    p_t = (target * torch.softmax(logits, 1)).sum(1)
    want = F.cross_entropy(logits, target, reduction="none") + 1.7 * (1 - p_t)
    torch.testing.assert_close(pf.poly1_cross_entropy(logits, target, epsilon=1.7, reduction="none"), want)


def test_truncated_cross_entropy_converges_within_the_remainder_bound():
    logits, target = make_inputs((50, 3), "index", seed=8)
    target = target.clamp(min=0)
    p_t = torch.softmax(logits, 1).gather(1, target[:, None])[:, 0]
    ce = pf.cross_entropy(logits, target, reduction="none")
    previous = None
    for n in (1, 2, 5, 10, 40, 200):
        gap = ce - pf.truncated_cross_entropy(logits, target, n_terms=n, reduction="none")
        assert (gap >= -1e-12).all()
        assert (gap <= (1 - p_t) ** (n + 1) / p_t + 1e-12).all()  # R_N <= (1-p)^(N+1) / p
        if previous is not None:
            assert (gap <= previous + 1e-12).all()
        previous = gap
    assert previous[p_t > 0.1].max() < 1e-6  # confident examples converge fast; the others need many terms


def test_soft_truncation_k1_is_focal_gamma1():
    logits, target = make_inputs((7, 5, 2), "index", seed=9)
    assert_same_loss_and_grad(lambda x: pf.soft_truncated_loss(x, target, k=1.0),
                              lambda x: pf.focal_loss(x, target, gamma=1.0), logits)


def test_two_class_softmax_truncations_equal_the_binary_forms():
    logits, target = make_inputs((12, 2), "index", seed=10)
    target = target.clamp(min=0)
    margin = logits[:, 1] - logits[:, 0]  # logit of class 1
    y = target.to(logits.dtype)
    for soft, binary in [
        (lambda x: pf.soft_truncated_loss(x, target, k=2.5, reduction="none"),
         lambda m: pf.sigmoid_soft_truncated_loss(m, y, k=2.5, reduction="none")),
        (lambda x: pf.hard_truncated_loss(x, target, margin=0.7, reduction="none"),
         lambda m: pf.sigmoid_hard_truncated_loss(m, y, margin=0.7, reduction="none")),
    ]:
        torch.testing.assert_close(soft(logits), binary(margin))


def test_focal_to_ce_ratio_is_modulator():
    logits, target = make_inputs((10, 4, 3), "index", seed=11)
    target = target.clamp(min=0)
    alpha = torch.tensor([0.1, 0.4, 0.7, 1.0], dtype=torch.float64)
    ratio = pf.focal_loss(logits, target, gamma=2.0, alpha=alpha, reduction="none") / pf.cross_entropy(
        logits, target, reduction="none")
    p_t = torch.softmax(logits, 1).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(ratio, alpha[target] * (1 - p_t) ** 2)


def test_hard_truncation_stops_gradient_past_margin():
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0], [-2.0, 1.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 0, 0])
    loss = pf.hard_truncated_loss(logits, target, margin=0.5, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert loss[0] == 0 and (grad[0] == 0).all()
    torch.testing.assert_close(loss[1], torch.tensor(math.log(2), dtype=torch.float64))  # p_t = 0.5 still counts
    assert (grad[2] != 0).all()


def one_hot(t, num_classes):
    return F.one_hot(t, num_classes).movedim(-1, 1).to(torch.float64)


@pytest.mark.parametrize("name", sorted(set(ref.SOFTMAX) - ref.INDEX_ONLY))
@pytest.mark.parametrize("shape", [(7, 5), (2, 4, 3, 5)])
def test_an_exact_one_hot_target_is_the_class_index_loss(name, shape):
    """An exactly one-hot float target (torchvision's habit) takes the class-index path: the same loss, value
    and gradient bit for bit, with the row engine's memory; `alpha`, `sample_weight` and every reduction hold."""
    logits, t = make_inputs(shape, "index")
    t = t.clamp_min(0)
    f, kwargs = pf.get_loss_function(name), dict(ref.SOFTMAX[name][1])
    if name == "focal_loss":
        kwargs["alpha"] = torch.rand(shape[1], dtype=torch.float64)
    hot = one_hot(t, shape[1])  # classes last in memory, as F.one_hot makes them; and contiguous
    for reduction, target in itertools.product(REDUCTIONS, (hot, hot.contiguous())):
        by_index, by_one_hot = (f(logits, y, reduction=reduction, **kwargs) for y in (t, target))
        assert torch.equal(by_index, by_one_hot), (name, reduction)
        assert torch.equal(grads(by_index, logits), grads(by_one_hot, logits))
    # ignore_index is a class index: a probability target's rows all count
    torch.testing.assert_close(f(logits, hot, ignore_index=0, **kwargs),
                               f(logits, hot, ignore_index=0, validate=False, **kwargs))


def test_what_is_not_exactly_one_hot_keeps_the_probability_target():
    """A target one-hot only to rounding, one that needs a gradient, or one not read (``validate=False``) is a
    probability target; with `weight` too, whose mean divides by the rows (not by the labels' weights)."""
    from polyfocal._checks import one_hot_labels

    logits, t = make_inputs((6, 3), "index")
    t = t.clamp_min(0)
    y = one_hot(t, 3)
    assert torch.equal(one_hot_labels(y, None), t)
    near = y.clone()
    near[0, (t[0] + 1) % 3] = 1e-30  # the row still sums to 1 in fp64
    for target, validate in ((near, None), (y.clone().requires_grad_(), None), (y, False)):
        assert one_hot_labels(target, validate) is None
        torch.testing.assert_close(pf.focal_loss(logits, target, validate=validate),
                                   ref.softmax_loss(ref.focal, logits, target.detach(), gamma=2.0))
    y.requires_grad_()
    assert torch.autograd.grad(pf.focal_loss(logits, y), y)[0].abs().sum() > 0
    w = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(pf.cross_entropy(logits, y.detach(), weight=w),
                               F.cross_entropy(logits, y.detach(), weight=w))
    assert not torch.allclose(pf.cross_entropy(logits, t, weight=w), F.cross_entropy(logits, y.detach(), weight=w))


def test_one_hot_labels_are_exact_in_half_precision_with_many_classes():
    """bf16 holds integers exactly only to 256 and fp16 to 2048: the labels are read in fp32."""
    from polyfocal._checks import one_hot_labels

    t = torch.randint(0, 3000, (64, 3), generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float16, torch.bfloat16):
        hot = F.one_hot(t, 3000).movedim(-1, 1).to(dtype)
        for y in (hot, hot.contiguous()):
            assert torch.equal(one_hot_labels(y, None), t), dtype
