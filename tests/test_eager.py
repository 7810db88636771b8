"""The eager engine: class-index targets at ordinary sizes, with a written-out gradient (the
softmax family; the sigmoid family's labels without scores).

It is what ``backend="auto"`` runs below ``EAGER_MAX_ELEMENTS`` logits, so the rest of the suite
runs it too; here it is held to the reference engine directly, and its pieces (the written-out
slopes, the choice of engine, plain cross-entropy as ``F.cross_entropy``) are checked one by one.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import polyfocal as pf
from polyfocal import _backend, _fused, _math, _softmax_engine
from polyfocal._errors import InputTypeError, InputValueError
from test_numerics import FORMS, GAMMA_LOSSES

SOFTMAX = sorted(name for name, (family, _, _) in FORMS.items() if family == "softmax")


def is_saved_gradient(loss):
    return "SavedGradient" in type(loss.grad_fn).__name__


@pytest.mark.parametrize("phi, params", [
    *[(_math.poly_series, dict(gamma=g, coefficients=c, keep_tail=k)) for g in (0.0, 0.5, 2.0, 3.0)
      for c in ((), (2.0,), (1.0, 0.5), (2.0, 0.3, 0.1)) for k in (True, False)],
    *[(_math.soft_truncation, dict(k=k)) for k in (0.3, 1.0, 2.0)],
    *[(_math.hard_truncation, dict(margin=m)) for m in (0.5, 0.9)],
    *[(phi, {}) for phi in _math.SLOPES if not any(p.default is p.empty for p in inspect.signature(phi).parameters.values()
                                                    if p.kind is p.KEYWORD_ONLY)],
])
def test_written_out_slopes_equal_autograd(phi, params):
    z = torch.cat([torch.linspace(-40, 40, 401), torch.tensor([-1e4, 1e4, 0.0])]).double()
    prob = _fused.sigmoid_parts(z)
    want = _fused.log_slope(lambda p: phi(p, **params), prob, torch.ones_like(z))[1]
    got = _math.SLOPES[phi](prob, **params)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-300)
    if phi in _math.VALUES_AND_SLOPES:  # the eager engine's value and slope from one call: the same two
        value, slope = _math.VALUES_AND_SLOPES[phi](prob, **params)
        torch.testing.assert_close(value, phi(prob, **params), rtol=1e-15, atol=0)
        torch.testing.assert_close(slope, got, rtol=0, atol=0)


@pytest.mark.parametrize("math, params", [
    *[(_math.FOCAL, dict(gamma=g, alpha=a, epsilon=e)) for g in (0.0, 0.5, 2.0) for a in (None, 0.25)
      for e in (0.0, 1.0, 2.0)],
    (_math.BCE, dict(pos_weight=None)), (_math.BCE, dict(pos_weight=torch.tensor(3.0, dtype=torch.float64))),
    *[(_math.QUALITY_FOCAL, dict(beta=b)) for b in (0.5, 2.0)],
    *[(_math.VARIFOCAL, dict(alpha=0.75, gamma=g, iou_weighted=True)) for g in (0.5, 2.0)],
    (_math.SOFT_TRUNCATION, dict(k=2.0)), (_math.HARD_TRUNCATION, dict(margin=0.5)),
])
def test_written_out_binary_slopes_equal_autograd(math, params):
    z = torch.cat([torch.linspace(-40, 40, 401), torch.tensor([-1e4, 1e4, 0.0])]).double()
    y = (torch.arange(z.numel()) % 2).double()
    prob = _fused.sigmoid_parts(z)
    want = _fused.log_slope(lambda p: math.binary(p, y, **params), prob, torch.ones_like(z))[1]
    got = math.binary_slope(prob, y, **params)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-300)
    if math.binary_and_slope is not None:  # the eager engine's value and slope from one call: the same two
        value, slope = math.binary_and_slope(prob, y, **params)
        torch.testing.assert_close(value, math.binary(prob, y, **params), rtol=1e-15, atol=0)
        torch.testing.assert_close(slope, got, rtol=0, atol=0)


# by default one entry is ignored; "none_ignored" leaves every row in (the engines then build no mask),
# "ignore_class" makes a class the ignore_index (so the mask is built although every label is in range)
OPTIONS = [{}, {"weight": True}, {"alpha": True}, {"normalizer": 7.0}, {"ignore_all": True},
           {"none_ignored": True}, {"none_ignored": True, "weight": True}, {"none_ignored": True, "alpha": True},
           {"ignore_class": True}]


def eager_and_reference(name, shape, reduction, options):
    """Value and gradient of loss ``name`` on both engines, float64, class indices (with the
    sigmoid family's background class C) and one ignored entry, under the test's ``options``."""
    family = FORMS[name][0]
    g = torch.Generator().manual_seed(len(name) + shape[0])
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, shape[1] + (family == "sigmoid"), (shape[0], *shape[2:]), generator=g)
    kwargs = dict(FORMS[name][2], reduction=reduction)
    if options.get("ignore_class"):
        t.view(-1)[0] = kwargs["ignore_index"] = 1
    elif not options.get("none_ignored"):
        t.view(-1)[0] = -100
    if options.get("ignore_all"):
        t.fill_(-100)
    if name in GAMMA_LOSSES:
        kwargs["gamma"] = 0.5
    if options.get("weight"):  # per class (softmax) or per element (sigmoid)
        kwargs["weight"] = torch.rand(shape[1] if family == "softmax" else shape, generator=g, dtype=torch.float64)
    if options.get("alpha"):
        if name not in ("focal_loss", "poly_loss"):
            pytest.skip(f"{name} takes no alpha")
        kwargs["alpha"] = torch.rand(shape[1], generator=g, dtype=torch.float64)
    if "normalizer" in options:
        if reduction != "mean":
            pytest.skip("a normalizer replaces the mean's count")
        kwargs["normalizer"] = options["normalizer"]
    f = pf.get_loss_function(name)
    results = []
    for engine in ("reference", "eager"):
        xin = x.clone().requires_grad_()
        loss = f(xin, t, backend=engine, **kwargs)
        results.append((loss, torch.autograd.grad(loss.sum(), xin)[0]))
    return results


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(9, 5), (4, 5, 3)])
@pytest.mark.parametrize("name", SOFTMAX)
def test_eager_equals_the_reference(name, shape, reduction, options):
    want, got = eager_and_reference(name, shape, reduction, options)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    if options.get("ignore_all"):
        assert got[1].abs().max() == 0 and got[0].abs().max() == 0


SIGMOID = sorted(name for name, (family, _, _) in FORMS.items() if family == "sigmoid" and name != "ghm_c_loss")


@pytest.mark.parametrize("options", [{}, {"weight": True}, {"normalizer": 3.0}, {"ignore_all": True},
                                     {"none_ignored": True}, {"none_ignored": True, "weight": True},
                                     {"ignore_class": True}], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(9, 5), (4, 5, 3)])
@pytest.mark.parametrize("name", SIGMOID)
def test_sigmoid_eager_equals_the_reference(name, shape, reduction, options):
    """Class labels (C is background) on the eager engine of the sigmoid family."""
    want, got = eager_and_reference(name, shape, reduction, options)
    assert is_saved_gradient(got[0])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.25, 2.0])
def test_low_precision_and_saturated_logits(dtype, gamma):
    x = torch.where(torch.rand(64, 7) < 0.5, 1e4, -1e4)
    x[::2] = torch.randn(32, 7) * 8
    t = torch.randint(0, 7, (64,))
    for loss_fn in (pf.focal_loss, pf.sigmoid_focal_loss):
        results = []
        for engine in ("reference", "eager"):
            xin = x.to(dtype).requires_grad_()
            loss = loss_fn(xin, t, gamma=gamma, backend=engine)
            (grad,) = torch.autograd.grad(loss, xin)
            assert loss.dtype == dtype and torch.isfinite(loss) and torch.isfinite(grad).all()
            results.append((loss, grad))
        torch.testing.assert_close(results[1], results[0])


def test_values_without_a_gradient_take_no_gradient_pass():
    x, t = torch.randn(16, 5), torch.randint(0, 5, (16,))
    with torch.no_grad():
        loss = pf.focal_loss(x, t, backend="eager", reduction="none")
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, pf.focal_loss(x, t, backend="reference", reduction="none"))


def test_second_derivatives_through_the_eager_engine():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3, 0, -100])
    loss = pf.focal_loss(x, t, gamma=1.5, backend="eager")
    assert is_saved_gradient(loss)
    assert torch.autograd.gradgradcheck(lambda z: pf.focal_loss(z, t, gamma=1.5, backend="eager"), (x,))


def test_auto_takes_eager_below_the_crossover_and_fused_above(monkeypatch):
    monkeypatch.setitem(_backend.EAGER_MAX_ELEMENTS, "softmax", 100)
    t = torch.randint(0, 10, (9,))
    small, large = torch.randn(9, 10, requires_grad=True), torch.randn(11, 10, requires_grad=True)
    engine = _backend.engine_for
    assert engine("auto", small, eager="softmax") == "eager"
    assert engine("auto", large, eager="softmax") == ("fused" if _fused.available() else "eager")
    # the values alone: the fused kernel above the crossover too (its discarded gradient costs less than
    # the eager values-only pass there: focal 1024 x 1000, 0.78 against 1.35 ms)
    assert engine("auto", large.detach(), eager="softmax") == ("fused" if _fused.available() else "eager")
    assert engine("auto", small) == "reference"  # a loss without an eager engine
    assert engine("auto", small, eager="sigmoid") == "eager"  # below FUSED_MIN_ELEMENTS
    assert engine("eager", small) == "reference"
    assert engine("auto", small, (torch.rand(9, 10, requires_grad=True),), eager="softmax") == "reference"
    assert is_saved_gradient(pf.focal_loss(small, t))
    monkeypatch.setattr(_backend, "FUSED_MIN_ELEMENTS", 100)  # a loss without an eager engine, values alone
    assert engine("auto", large.detach()) == ("fused" if _fused.available() else "reference")


def test_plain_cross_entropy_has_its_own_crossover_to_the_fused_engine(monkeypatch):
    """Plain cross-entropy's eager engine is torch's own kernel, which the fused engine overtakes at a larger
    size than the softmax row engine (benchmarks/crossover.py): between the two crossovers a focal loss runs
    fused, cross-entropy torch's kernel; above both, cross-entropy runs fused too."""
    x, t = torch.randn(11, 10, requires_grad=True), torch.randint(0, 10, (11,))
    monkeypatch.setitem(_backend.EAGER_MAX_ELEMENTS, "softmax", 100)
    monkeypatch.setitem(_backend.EAGER_MAX_ELEMENTS, "cross_entropy", 1000)
    assert not is_saved_gradient(pf.cross_entropy(x, t))
    assert not is_saved_gradient(pf.cross_entropy(x, t, reduction="sum"))  # the contract's full path too
    assert is_saved_gradient(pf.focal_loss(x, t)) == _fused.available()
    monkeypatch.setitem(_backend.EAGER_MAX_ELEMENTS, "cross_entropy", 100)
    for reduction in ("mean", "sum"):
        loss = pf.cross_entropy(x, t, reduction=reduction)
        assert is_saved_gradient(loss) == _fused.available()
        torch.testing.assert_close(loss, F.cross_entropy(x, t, reduction=reduction))


def test_plain_cross_entropy_values_alone_are_torchs_kernel_above_the_crossover(monkeypatch):
    """Without a gradient, "auto" takes the fused engine above the crossover, except for plain
    cross-entropy, which is ``F.cross_entropy`` (a fused gradient would be work thrown away)."""
    from polyfocal import _rows

    monkeypatch.setitem(_backend.EAGER_MAX_ELEMENTS, "softmax", 100)
    monkeypatch.setattr(_rows, "softmax_rows", lambda *a, **k: pytest.fail("the row engine ran"))
    x, t = torch.randn(11, 10), torch.randint(0, 10, (11,))
    with torch.no_grad():
        torch.testing.assert_close(pf.cross_entropy(x, t), torch.nn.functional.cross_entropy(x, t))


def test_plain_cross_entropy_is_torchs_own_kernel():
    x, t = torch.randn(12, 5, requires_grad=True), torch.randint(0, 5, (12,))
    w = torch.rand(5) + 0.5
    loss = pf.cross_entropy(x, t, weight=w, label_smoothing=0.1, backend="eager")
    assert loss.grad_fn is not None and not is_saved_gradient(loss)
    torch.testing.assert_close(loss, F.cross_entropy(x, t, weight=w, label_smoothing=0.1))
    everything_ignored = torch.full((12,), -100)
    loss = pf.cross_entropy(x, everything_ignored, backend="eager")
    (grad,) = torch.autograd.grad(loss, x)
    assert loss == 0 and grad.abs().max() == 0  # torch gives NaN
    with pytest.raises(pf.InputValueError, match="outside"):
        pf.cross_entropy(x, torch.full((12,), 5), backend="eager")


def test_plain_cross_entropy_on_cuda_is_torchs_kernel_at_every_size(monkeypatch):
    """Where "auto" would take the Triton row kernels (CUDA, large inputs), plain cross-entropy is
    F.cross_entropy; forced, the row kernels still run. Shown on CPU with the engine choice of a GPU."""
    monkeypatch.setattr(_softmax_engine, "engine_for", lambda requested, *args, **kwargs: "triton")
    x, t = torch.randn(12, 5, requires_grad=True), torch.randint(0, 5, (12,))
    assert not is_saved_gradient(pf.cross_entropy(x, t))
    assert is_saved_gradient(pf.focal_loss(x, t))
    assert is_saved_gradient(pf.cross_entropy(x, t, backend="triton"))


class _Dispatched(TorchDispatchMode):
    """Records the aten ops a call dispatches (views included): on a GPU, about its kernel launches."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def dispatched(call) -> list[str]:
    with _Dispatched() as mode:
        call()
    return mode.ops


def test_plain_cross_entropy_is_torchs_kernel_and_one_read_of_its_value():
    """Plain cross-entropy's mean over class indices, every other option at its default: F.cross_entropy, whose
    kernel checks the labels on CPU, and one read of the value (NaN only for an all-ignored batch, which the
    contract makes 0, or NaN logits); ignored rows are torch's own mean. Before: an index check's pass, two reads."""
    x, t = torch.randn(32, 10, requires_grad=True), torch.randint(0, 10, (32,))
    pf.cross_entropy(x, t)
    ops, torch_ops = dispatched(lambda: pf.cross_entropy(x, t)), dispatched(lambda: F.cross_entropy(x, t))
    assert ops == torch_ops + ["aten._local_scalar_dense.default"]
    t[0] = -100  # one ignored row: torch's mean is the contract's
    assert dispatched(lambda: pf.cross_entropy(x, t)) == ops
    torch.testing.assert_close(pf.cross_entropy(x, t), F.cross_entropy(x, t))
    everything = torch.full_like(t, -100)  # torch's NaN; the contract's 0, with a zero gradient
    loss = pf.cross_entropy(x, everything)
    assert loss.item() == 0 and not torch.autograd.grad(loss, x)[0].any()
    nan = x.detach().clone()
    nan[3, 2] = float("nan")
    assert pf.cross_entropy(nan, t).isnan()


@pytest.mark.parametrize("loss_fn", [pf.focal_loss, pf.poly1_cross_entropy])
def test_a_loss_of_pt_with_an_ignored_label_leaves_the_default_call_for_the_contract(loss_fn):
    """The default call's row kernel takes every label as a class (its scatter refuses any other): an
    ignored label sends the call to the full contract, whose mean leaves that row out."""
    x, t = torch.randn(32, 10, dtype=torch.float64, requires_grad=True), torch.randint(0, 10, (32,))
    t[[0, 7]] = -100
    loss = loss_fn(x, t)
    want = loss_fn(x[t != -100], t[t != -100], backend="reference")
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0][t != -100], torch.autograd.grad(want, x)[0][t != -100])


@pytest.mark.parametrize("call, message", [
    (lambda x, t: pf.cross_entropy(x, t.index_fill(0, torch.tensor([5]), 10)), "class index 10, outside [0, 9]"),
    (lambda x, t: pf.cross_entropy(x, t.index_fill(0, torch.tensor([5]), -1)), "class index -1, outside [0, 9]"),
    (lambda x, t: pf.focal_loss(x, t.index_fill(0, torch.tensor([5]), 10)), "class index 10, outside [0, 9]"),
    (lambda x, t: pf.poly1_cross_entropy(x, t.index_fill(0, torch.tensor([5]), -1)), "class index -1, outside [0, 9]"),
    (lambda x, t: pf.focal_loss(x, t[:-1]), "must have shape (N, *) = (32,)"),
    (lambda x, t: pf.cross_entropy(x, t[:-1]), "must have shape (N, *) = (32,)"),
    (lambda x, t: pf.cross_entropy(x[:, :1], t.zero_()), "C >= 2 classes"),
    (lambda x, t: pf.cross_entropy(x, t, ignore_index=True), "`ignore_index` must be an int"),
    (lambda x, t: pf.cross_entropy(x, t, label_smoothing=False), "`label_smoothing` must be a real number"),
])
def test_plain_cross_entropy_on_torchs_kernel_words_the_contracts_errors(call, message):
    """Where torch's kernel (or the eager row kernel's first op on the labels, for a loss of ``p_t``) refuses an
    input, or would take it, the contract's checks run and word the error."""
    x, t = torch.randn(32, 10, requires_grad=True), torch.randint(0, 10, (32,))
    with pytest.raises((InputValueError, InputTypeError)) as caught:
        call(x, t)
    assert message in str(caught.value)


@pytest.mark.parametrize("loss_fn, budget", [(pf.focal_loss, 35), (pf.poly1_cross_entropy, 34),
                                             (pf.sigmoid_focal_loss, 33)])
def test_eager_engine_dispatches_at_most_its_measured_ops(loss_fn, budget):
    """The eager engine's forward pass, ops counted as the README's table counts them (60-66 before
    the unmasked path and the host-known count; 41, 41, 38 before the row kernel checked the labels itself
    and the value and slope shared their terms; the target of 15 needs one fused kernel)."""
    x, t = torch.randn(32, 10, requires_grad=True), torch.randint(0, 10, (32,))
    loss_fn(x, t)
    ops = dispatched(lambda: loss_fn(x, t))
    assert len(ops) <= budget, ops
    assert "aten.ne.Scalar" not in ops  # no ignore mask where no label is ignored


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("target_form", ["labels", "labels, one ignored", "float 0/1", "soft"])
@pytest.mark.parametrize("weighted", [False, True])
def test_ghm_c_eager_equals_the_reference(target_form, reduction, weighted):
    """GHM-C's harmonised pass on the eager engine: the variant's written-out gradient, saved."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 5, 3, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 6, (12, 3), generator=g)
    target = {"labels": labels, "labels, one ignored": labels.index_put((torch.tensor(0), torch.tensor(0)),
                                                                       torch.tensor(-100)),
              "float 0/1": (torch.rand(x.shape, generator=g) < 0.3).double(),
              "soft": torch.rand(x.shape, generator=g, dtype=torch.float64)}[target_form]
    weight = torch.rand(x.shape, generator=g, dtype=torch.float64) if weighted else None
    results = []
    for engine in ("reference", "eager"):
        xin = x.clone().requires_grad_()
        loss = pf.ghm_c_loss(xin, target, weight=weight, reduction=reduction, backend=engine)
        results.append((loss, torch.autograd.grad(loss.sum(), xin)[0]))
        assert is_saved_gradient(loss) == (engine == "eager")
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-14)


def test_the_per_signature_caches_stay_out_of_compiled_code():
    """The cached 0-d stand-in, class indices and GHM bin edges are made fresh inside torch.compile:
    dynamo warns about every lru_cache it traces through."""
    x, t = torch.randn(8, 5), torch.randint(0, 5, (8,))

    def losses(x, t):
        return pf.focal_loss(x, t) + pf.sigmoid_focal_loss(x, t) + pf.ghm_c_loss(x, t)

    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = torch.compile(losses, fullgraph=True)(x, t)
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    torch.testing.assert_close(got, losses(x, t))


def test_ghm_c_with_a_target_laid_out_unlike_the_logits_does_not_warn():
    """bucketize warned on a strided statistic (torch warns once per process: this test catches a
    regression where it is the first to reach that warning, as when run alone)."""
    x = torch.randn(4, 3, 5, requires_grad=True)
    y = (torch.rand(4, 5, 3) < 0.3).float().transpose(1, 2)  # strided: as F.one_hot(...).permute makes it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = pf.ghm_c_loss(x, y)
        loss.backward()
    torch.testing.assert_close(loss, pf.ghm_c_loss(x.detach(), y.contiguous(), backend="reference"))


def test_a_float_one_hot_target_takes_the_labels_eager_engine_and_a_soft_one_does_not():
    """On CPU the value check reads a float target anyway; one that holds only 0 and 1 (a one-hot, as
    torchvision users pass) then runs the binary form with its saved gradient, as class labels do."""
    x, labels = torch.randn(16, 5, requires_grad=True), torch.randint(0, 5, (16,))
    one_hot = F.one_hot(labels, 5).float()
    loss = pf.sigmoid_focal_loss(x, one_hot, reduction="sum")  # the mean's counts differ: elements, locations
    assert is_saved_gradient(loss)
    torch.testing.assert_close(loss, pf.sigmoid_focal_loss(x, labels, reduction="sum"))
    assert not is_saved_gradient(pf.sigmoid_focal_loss(x, one_hot * 0.9))  # soft: the reference
    assert not is_saved_gradient(pf.sigmoid_focal_loss(x, one_hot, validate=False))  # values unread
