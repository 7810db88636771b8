"""EQLv2 and the equalized focal loss: the functions against the papers' formulas with a gradient ratio given,
the Modules' update rule against a literal loop, two gloo processes against one, and their state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import polyfocal as pf
import reference as ref
from _gloo import needs_gloo, run_ranks

C = 4
RATIO = torch.tensor([0.05, 0.4, 0.8, 1.0], dtype=torch.float64)
FUNCTIONS = {"eqlv2_loss": (ref.eqlv2, {"gamma": 12.0, "mu": 0.8, "alpha": 4.0}),
             "equalized_focal_loss": (ref.efl, {"gamma": 2.0, "scale_factor": 8.0, "alpha": 0.25})}


def batch(seed: int, n: int = 6, kind: str = "index"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, 3, generator=g, dtype=torch.float64) * 2
    if kind == "soft":
        return x, torch.rand(n, C, 3, generator=g, dtype=torch.float64)
    t = torch.randint(0, C + 1, (n, 3), generator=g)  # C: background
    t[0, 0] = -100
    return x, t


def value_and_grad(f, x):
    x = x.detach().requires_grad_()
    loss = f(x)
    return loss, torch.autograd.grad(loss.sum(), x)[0]


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("backend", ["reference", "eager", "fused"])
def test_the_functions_with_a_gradient_ratio_match_the_papers_formulas(name, kind, reduction, backend, request):
    f, params = FUNCTIONS[name]
    if backend == "fused" and (kind, reduction) != ("index", "mean"):
        # each loss's kernel with a gradient ratio compiled once (float64: a variant of this test alone); the
        # other forms run the fused engine's path with its kernels as written, the same math
        request.getfixturevalue("fused_uncompiled")
    x, t = batch(0, kind=kind)
    weight = torch.rand(6, 1, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    options = dict(gradient_ratio=RATIO, weight=weight, reduction=reduction, **params)
    got = value_and_grad(lambda z: pf.get_loss_function(name)(z, t, backend=backend, **options), x)
    want = value_and_grad(lambda z: ref.sigmoid_loss(f, z, t, **options), x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_gradcheck_and_gradgradcheck_with_a_gradient_ratio(name):
    x, t = batch(2, n=3)
    fn = pf.get_loss_function(name)
    z = x.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: fn(v, t, gradient_ratio=RATIO), (z,))
    assert torch.autograd.gradgradcheck(lambda v: fn(v, t, gradient_ratio=RATIO), (z,))


def literal_statistics(batches, weights_of):
    """The update rule written out from the papers, one element at a time: per batch, the loss with the
    weights of the statistics so far, then each element's ``|p - y|`` times its weight added to its class's
    positive or negative sum."""
    positive, negative, losses = [0.0] * C, [0.0] * C, []
    for step, (x, t) in enumerate(batches):
        ratio = None if step == 0 else torch.tensor([p / (n + 1e-10) for p, n in zip(positive, negative)],
                                                     dtype=torch.float64)
        losses.append(ratio)
        p = torch.sigmoid(x)
        for i in range(x.shape[0]):
            for loc in range(x.shape[2]):
                if t[i, loc] == -100:
                    continue
                for c in range(C):
                    y = float(t[i, loc] == c)
                    g = abs(float(p[i, c, loc]) - y) * weights_of(ratio, c, y)
                    if y:
                        positive[c] += g
                    else:
                        negative[c] += g
    return losses, torch.tensor(positive, dtype=torch.float64), torch.tensor(negative, dtype=torch.float64)


def eqlv2_element_weight(ratio, c, y):
    if ratio is None:
        return 1.0
    f = 1 / (1 + torch.exp(-12.0 * (ratio[c] - 0.8))).item()
    return 1 + 4.0 * (1 - f) if y else f


@pytest.mark.parametrize("module, weights_of, clamp", [
    (lambda: pf.EQLv2Loss(), eqlv2_element_weight, None),
    (lambda: pf.EqualizedFocalLoss(C), lambda ratio, c, y: 1.0, (0.0, 1.0)),
])
def test_the_modules_update_rule_is_the_papers_literal_loop(module, weights_of, clamp):
    batches = [batch(seed) for seed in range(3)]
    module = module()
    ratios, positive, negative = literal_statistics(batches, weights_of)
    name = "eqlv2_loss" if isinstance(module, pf.EQLv2Loss) else "equalized_focal_loss"
    for (x, t), ratio in zip(batches, ratios):
        if ratio is not None and clamp is not None:
            ratio = ratio.clamp(*clamp)
        want = pf.get_loss_function(name)(x, t, gradient_ratio=ratio, backend="reference")
        if name == "eqlv2_loss" and ratio is None:
            want = pf.binary_cross_entropy(x, t)
        torch.testing.assert_close(module(x, t), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(module.positive_gradient, positive, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(module.negative_gradient, negative, rtol=1e-10, atol=1e-12)


@needs_gloo
def test_two_gloo_processes_weight_as_one_process_on_the_whole_batch(tmp_path):
    """EQLv2 and EFL (sigmoid, with background labels) and seesaw (softmax): per batch, the ranks' summed losses
    and their gradients' halves are the one process's, and every rank holds the whole batch's statistics."""
    batches = [(batch(seed, n=8)[0].float(), batch(seed, n=8)[1]) for seed in range(3)]
    softmax_batches = [(x, t.clamp(max=C - 1)) for x, t in batches]
    data = {"batches": batches, "softmax_batches": softmax_batches}
    ranks = run_ranks(Path(__file__).with_name("_gradient_ratio_worker.py"), data, tmp_path)
    for name, module, steps in (("eqlv2", pf.EQLv2Loss(reduction="sum"), batches),
                                ("efl", pf.EqualizedFocalLoss(C, reduction="sum"), batches),
                                ("seesaw", pf.SeesawLoss(C, reduction="sum"), softmax_batches)):
        for step, (x, t) in enumerate(steps):
            loss, grad = value_and_grad(lambda z: module(z, t), x)
            torch.testing.assert_close(sum(r[name][0][step][0] for r in ranks), loss, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(torch.cat([r[name][0][step][1] for r in ranks]), grad, rtol=1e-5, atol=1e-6)
        statistics = [b for b in module.buffers() if b.dtype == torch.float64 and b.ndim == 1]
        assert len(statistics) == (1 if name == "seesaw" else 2)
        for r in ranks:
            for got, want in zip(r[name][1:], statistics, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_state_dict_statistics_load_size_and_stay_float64():
    module = pf.EQLv2Loss(C)
    for seed in range(2):
        module(*batch(seed))
    state = module.state_dict()
    assert set(state) == {"positive_gradient", "negative_gradient", "steps"}
    lazy = pf.EQLv2Loss()
    lazy.load_state_dict(state)
    torch.testing.assert_close(lazy.gradient_ratio(), module.gradient_ratio())
    x, t = batch(5)
    torch.testing.assert_close(lazy(x, t), module(x, t))
    assert pf.EqualizedFocalLoss(C).half().positive_gradient.dtype == torch.float64
    before = {k: v.clone() for k, v in pf.EqualizedFocalLoss(3).state_dict().items()}
    wrong = pf.EqualizedFocalLoss(3)
    with pytest.raises(ValueError, match=r"statistics of \[4\] classes; this Module has num_classes=3"):
        wrong.load_state_dict(pf.EqualizedFocalLoss(C).state_dict())
    assert all(torch.equal(v, before[k]) for k, v in wrong.state_dict().items())
    with pytest.raises(ValueError, match=r"holds statistics of 3 classes; got logits of shape \(6, 4, 3\)"):
        wrong(*batch(0))


@pytest.mark.parametrize("call, message", [
    (lambda: pf.EqualizedFocalLoss(0), "`num_classes` must be >= 1"),
    (lambda: pf.EqualizedFocalLoss(gamma=0.0), r"`gamma` must be in \(0.0, inf\]"),
    (lambda: pf.EqualizedFocalLoss(scale_factor=-1.0), "`scale_factor`"),
    (lambda: pf.EQLv2Loss(reduction="avg"), "`reduction` must be one of"),
    (lambda: pf.EQLv2Loss(alpha=-1.0), "`alpha` must be in"),
    (lambda: pf.equalized_focal_loss(*batch(0), gradient_ratio=torch.tensor([0.1, 0.2, 1.5, 0.3])),
     r"`gradient_ratio` must lie in \[0, 1\]; got 1.5"),
    (lambda: pf.eqlv2_loss(*batch(0), gradient_ratio=torch.tensor([0.1, -0.2, 1.5, 0.3])),
     r"`gradient_ratio` must lie in \[0, inf\); got -0.2"),
    (lambda: pf.eqlv2_loss(*batch(0), gradient_ratio=torch.tensor([0.1, 0.2])), r"`gradient_ratio` must have shape"),
])
def test_bad_input_is_an_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_rare_class_is_weighted_up_after_a_few_batches():
    """On a long-tailed stream, class 3 rarely positive: its ratio falls, EQLv2 suppresses its negatives and
    EFL focuses it harder than the frequent class 0."""
    g = torch.Generator().manual_seed(7)
    eql, efl = pf.EQLv2Loss(C), pf.EqualizedFocalLoss(C)
    for _ in range(5):
        x = torch.randn(64, C, generator=g)
        t = torch.multinomial(torch.tensor([0.7, 0.2, 0.08, 0.02]), 64, replacement=True, generator=g)
        eql(x, t), efl(x, t)
    assert eql.gradient_ratio()[3] < eql.gradient_ratio()[0]
    assert efl.gradient_ratio()[3] < efl.gradient_ratio()[0]
