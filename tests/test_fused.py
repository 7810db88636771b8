"""The fused engine against the paper-formula references and the reference engine.

Compiling is the slow part (a few seconds per kernel variant on 2 cores), so the fused engine
is checked on one odd 3-d shape in fp32 (plus fp16/bf16/fp64 spot checks) rather than the
whole shape matrix the reference engine runs; every loss, target form and reduction is covered.
"""

import gc
import warnings
import weakref

import pytest
import torch

import polyfocal as pf
import reference as ref
from polyfocal import _fused, _rows, _softmax_engine
from polyfocal._backend import use_backend

SHAPE = (5, 4, 3)
_ROW_EAGER = _softmax_engine._ROW_PATHS["eager"]
#: on a GPU these losses run as the Triton that inductor generates from the same math (the sigmoid
#: family, GHM, softmax probability targets): test_triton runs the marked tests under Triton's interpreter
INDUCTOR_TRITON = pytest.mark.inductor_triton


def is_fused(loss):
    """Whether the fused engine computed ``loss``: its gradient is a saved one, or a sum or multiple of saved
    ones (the single-label ASL adds two passes)."""
    return _from_saved_gradients(loss.grad_fn)


def _from_saved_gradients(node) -> bool:
    name = type(node).__name__
    if "SavedGradient" in name:
        return True
    inputs = [f for f, _ in getattr(node, "next_functions", ()) if f is not None]
    return name in ("AddBackward0", "MulBackward0") and bool(inputs) and all(map(_from_saved_gradients, inputs))


def softmax_inputs(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 2
    if kind == "probs":
        return logits, torch.softmax(torch.randn(SHAPE, generator=g, dtype=torch.float64) * 3, 1)
    target = torch.randint(0, SHAPE[1], (SHAPE[0], SHAPE[2]), generator=g)
    target[0, 1] = -100
    return logits, target


def sigmoid_inputs(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 2
    if kind == "soft":
        return logits, torch.rand(SHAPE, generator=g, dtype=torch.float64)
    target = torch.randint(0, SHAPE[1] + 1, (SHAPE[0], SHAPE[2]), generator=g)
    target[1, 0] = -100
    return logits, target


def fused_vs(want_fn, got_fn, logits64, rtol=1e-5, atol=1e-6):
    """Run ``got_fn`` on the fused engine in fp32 and compare value and gradient with ``want_fn`` in fp64."""
    x64 = logits64.clone().requires_grad_()
    x32 = logits64.float().requires_grad_()
    want = want_fn(x64)
    with use_backend("fused"):
        got = got_fn(x32)
    assert is_fused(got)
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)
    (g_want,) = torch.autograd.grad(want.sum(), x64)
    (g_got,) = torch.autograd.grad(got.sum(), x32)
    torch.testing.assert_close(g_got.double(), g_want, rtol=rtol, atol=atol)


#: the losses whose reduction="mean" kernels test_triton's rerun also runs as inductor's Triton: the summed
#: kernel is the per-element one inside a reduction, which inductor writes alike for every loss (and the
#: label-smoothing test runs every softmax loss's summed kernel)
TRITON_SUMMED = ("focal_loss", "sigmoid_focal_loss", "binary_cross_entropy")


def matrix(names, kinds, triton_kinds):
    """``(name, kind, reduction)`` for every name, kind and reduction, marked for the Triton rerun where
    ``kind`` is in ``triton_kinds`` and the reduction is ``"none"`` or the loss is one of TRITON_SUMMED."""
    return [pytest.param(name, kind, reduction, marks=INDUCTOR_TRITON if kind in triton_kinds and (
                reduction == "none" or name in TRITON_SUMMED) else ())
            for reduction in ("none", "mean") for kind in kinds for name in sorted(names)]


@pytest.mark.parametrize("name, kind, reduction", matrix(ref.SOFTMAX, ("index", "probs"), ("probs",)))
def test_softmax_losses(name, kind, reduction):
    if kind == "probs" and name in ref.INDEX_ONLY:
        pytest.skip("class indices only")
    phi, params = ref.SOFTMAX[name]
    logits, target = softmax_inputs(kind)
    weight = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    target32 = target.float() if kind == "probs" else target
    fused_vs(lambda x: ref.softmax_loss(phi, x, target, weight=weight, reduction=reduction, **params),
             lambda x: pf.get_loss_function(name)(x, target32, weight=weight.float(), reduction=reduction, **params),
             logits)


@INDUCTOR_TRITON
@pytest.mark.parametrize("name", sorted(ref.SOFTMAX))
def test_softmax_label_smoothing_and_alpha(name):
    phi, params = ref.SOFTMAX[name]
    logits, target = softmax_inputs("index", seed=1)
    fused_vs(lambda x: ref.softmax_loss(phi, x, target, label_smoothing=0.1, **params),
             lambda x: pf.get_loss_function(name)(x, target, label_smoothing=0.1, **params), logits)
    alpha = [0.1, 0.2, 0.3, 0.4]
    fused_vs(lambda x: ref.softmax_loss(ref.focal, x, target, alpha=alpha, gamma=1.5),
             lambda x: pf.focal_loss(x, target, alpha=alpha, gamma=1.5), logits)


@pytest.mark.parametrize("name, kind, reduction", matrix(ref.SIGMOID, ("index", "soft"), ("index", "soft")))
def test_sigmoid_losses(name, kind, reduction):
    f, params = ref.SIGMOID[name]
    logits, target = sigmoid_inputs(kind)
    weight = torch.rand(SHAPE[1], 1, dtype=torch.float64)
    target32 = target.float() if kind == "soft" else target
    fused_vs(lambda x: ref.sigmoid_loss(f, x, target, weight=weight, reduction=reduction, **params),
             lambda x: pf.get_loss_function(name)(x, target32, weight=weight.float(), reduction=reduction,
                                                  **ref.library_params(name, params)),
             logits)


@INDUCTOR_TRITON
@pytest.mark.parametrize("name", ["quality_focal_loss", "varifocal_loss"])
@pytest.mark.parametrize("kind", ["index", "soft", "labels_scores"])
def test_quality_losses_match_the_reference_engine(name, kind):
    logits, target = sigmoid_inputs("soft" if kind == "soft" else "index", seed=2)
    if kind == "labels_scores":
        target = (target, torch.rand(target.shape, dtype=torch.float64))
    fn = pf.get_loss_function(name)
    with use_backend("reference"):
        want_fn = lambda x: fn(x, target)  # noqa: E731
        fused_vs(want_fn, lambda x: fn(x, target if kind != "soft" else target.float()), logits)


def test_binary_cross_entropy_pos_weight():
    logits, target = sigmoid_inputs("soft", seed=3)
    pos_weight = torch.rand(SHAPE[1], 1, dtype=torch.float64) * 3
    fused_vs(lambda x: torch.nn.functional.binary_cross_entropy_with_logits(x, target, pos_weight=pos_weight),
             lambda x: pf.binary_cross_entropy(x, target.float(), pos_weight=pos_weight.float()), logits)


@pytest.mark.parametrize("name", ["focal_loss", "poly1_cross_entropy", "soft_truncated_loss", "sigmoid_focal_loss",
                                  "poly1_focal_loss", "quality_focal_loss", "varifocal_loss",
                                  "sigmoid_soft_truncated_loss"])
def test_saturated_logits_stay_finite_and_equal_the_reference_engine(name):
    g = torch.Generator().manual_seed(4)
    x = torch.where(torch.rand(SHAPE, generator=g) < 0.5, 1e4, -1e4)
    softmax = name in ref.SOFTMAX
    target = torch.randint(0, SHAPE[1] + (0 if softmax else 1), (SHAPE[0], SHAPE[2]), generator=g)
    fn = pf.get_loss_function(name)
    kwargs = {"gamma": 0.5} if name in ("focal_loss", "sigmoid_focal_loss", "poly1_focal_loss") else {}
    results = {}
    for engine in ("reference", "fused"):
        xr = x.clone().requires_grad_()
        with use_backend(engine):
            loss = fn(xr, target, **kwargs)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(xr.grad).all()
        results[engine] = (loss, xr.grad)
    torch.testing.assert_close(results["fused"], results["reference"])


@pytest.mark.parametrize("call", [
    lambda x, y: pf.sigmoid_focal_loss(x, y, reduction="none"),
    lambda x, y: pf.ghm_c_loss(x, y, reduction="none"),
    lambda x, y: pf.focal_loss(x, y.softmax(1), reduction="none"),
])
def test_a_target_laid_out_unlike_the_logits_gives_the_same_loss(call):
    """A one-hot target as ``F.one_hot(labels).permute(0, 3, 1, 2).float()`` makes it (channels last) is
    copied into the logits' layout before the compiled loop: the same values and gradients as a
    contiguous target."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 5, 4, generator=g)
    labels = torch.randint(0, 7, (2, 5, 4), generator=g)
    permuted = torch.nn.functional.one_hot(labels, 7)[..., :6].permute(0, 3, 1, 2).float()
    assert not permuted.is_contiguous()
    assert _fused.full_3d(permuted, x).stride() == x.reshape(2, 6, 20).stride()  # the logits' layout
    results = []
    for y in (permuted, permuted.contiguous()):
        logits = x.clone().requires_grad_()
        with use_backend("fused"):
            loss = call(logits, y)
        assert is_fused(loss)
        results.append((loss.detach(), *torch.autograd.grad(loss.sum(), logits)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@INDUCTOR_TRITON
@pytest.mark.parametrize("name", ["focal_loss", "poly1_cross_entropy", "poly_loss", "soft_truncated_loss",
                                  "hard_truncated_loss"])
@pytest.mark.parametrize("target", ["probs", "smoothing"])
def test_saturated_logits_with_probability_targets(name, target):
    """The written-out gradient of probability targets at +-1e4: where 1 - p underflows for the top
    class, its chain-rule term through log(1 - p) vanishes instead of dividing by 0."""
    g = torch.Generator().manual_seed(5)
    x = torch.where(torch.rand(SHAPE, generator=g) < 0.3, 1e4, -1e4)
    labels = torch.randint(0, SHAPE[1], (SHAPE[0], SHAPE[2]), generator=g)
    probs = torch.softmax(torch.randn(SHAPE, generator=g) * 3, 1)
    kwargs = {"label_smoothing": 0.1} if target == "smoothing" else {}
    if name == "focal_loss":
        kwargs["gamma"] = 0.5
    fn = pf.get_loss_function(name)
    results = {}
    for engine in ("reference", "fused"):
        xr = x.clone().requires_grad_()
        with use_backend(engine):
            loss = fn(xr, labels if target == "smoothing" else probs, **kwargs)
        assert is_fused(loss) == (engine == "fused")
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(xr.grad).all()
        results[engine] = (loss, xr.grad)
    torch.testing.assert_close(results["fused"], results["reference"])


@pytest.mark.parametrize("name, target_fn", [
    ("focal_loss", lambda: torch.randint(0, 4, (5, 3))),
    ("sigmoid_focal_loss", lambda: torch.randint(0, 5, (5, 3))),
    ("quality_focal_loss", lambda: torch.rand(SHAPE)),
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(name, target_fn, dtype):
    torch.manual_seed(5)
    x, target = torch.randn(SHAPE).to(dtype), target_fn()
    fn = pf.get_loss_function(name)
    results = {}
    for engine in ("reference", "fused"):
        xr = x.clone().requires_grad_()
        with use_backend(engine):
            loss = fn(xr, target, reduction="none")
        loss.sum().backward()
        assert loss.dtype == dtype and xr.grad.dtype == dtype
        results[engine] = (loss, xr.grad)
    torch.testing.assert_close(results["fused"], results["reference"])


def test_gradcheck_through_the_fused_engine():
    logits, target = softmax_inputs("index", seed=6)
    with use_backend("fused"):
        assert torch.autograd.gradcheck(lambda x: pf.focal_loss(x, target, gamma=0.5),
                                        (logits.clone().requires_grad_(),))
        labels = torch.randint(0, 5, (5, 3))
        assert torch.autograd.gradcheck(lambda x: pf.sigmoid_focal_loss(x, labels, reduction="none"),
                                        (logits.clone().requires_grad_(),))


def saved_bytes(fn, x):
    """Bytes of tensors the autograd graph of ``fn(x)`` still holds after the forward, ``x`` excluded
    (tensors saved by short-lived helper graphs inside the forward are freed and not counted)."""
    saved = []

    def pack(t):
        saved.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn(x)
    gc.collect()
    alive = {}
    for ref_ in saved:
        t = ref_()
        if t is not None and t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            alive[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    del loss
    return sum(alive.values())


@pytest.mark.parametrize("name, target", [("focal_loss", torch.randint(0, 4, (64, 8))),
                                          ("sigmoid_focal_loss", torch.randint(0, 5, (64, 8)))])
def test_saves_one_logits_sized_gradient(name, target):
    x = torch.randn(64, 4, 8, requires_grad=True)
    fn = pf.get_loss_function(name)
    with use_backend("fused"):
        assert saved_bytes(lambda z: fn(z, target), x) == x.numel() * x.element_size()
    with use_backend("reference"):
        assert saved_bytes(lambda z: fn(z, target), x) > x.numel() * x.element_size()


def test_backward_multiplies_grad_output():
    logits, target = softmax_inputs("index", seed=7)
    x = logits.float().requires_grad_()
    with use_backend("fused"):
        rows = pf.poly1_cross_entropy(x, target, reduction="none")
        total = pf.poly1_cross_entropy(x, target, reduction="sum")
    upstream = torch.randn(rows.shape)
    (g_rows,) = torch.autograd.grad(rows, x, upstream)
    (g_total,) = torch.autograd.grad(total * 3.0, x)
    with use_backend("reference"):
        (want_rows,) = torch.autograd.grad(pf.poly1_cross_entropy(x, target, reduction="none"), x, upstream)
        (want_total,) = torch.autograd.grad(pf.poly1_cross_entropy(x, target, reduction="sum") * 3.0, x)
    torch.testing.assert_close(g_rows, want_rows)
    torch.testing.assert_close(g_total, want_total)


@pytest.mark.parametrize("name", ["focal_loss", "sigmoid_focal_loss"])
def test_empty_and_all_ignored(name):
    fn = pf.get_loss_function(name)
    with use_backend("fused"):
        for x, t in [(torch.randn(0, 4, 3), torch.zeros(0, 3, dtype=torch.long)),
                     (torch.randn(5, 4, 3), torch.full((5, 3), -100))]:
            x.requires_grad_()
            loss = fn(x, t)
            (grad,) = torch.autograd.grad(loss, x)
            assert loss.item() == 0 and (grad == 0).all()


def test_new_hyperparameters_do_not_recompile():
    from torch._dynamo.utils import counters

    x, t = torch.randn(SHAPE, requires_grad=True), torch.randint(0, 5, (SHAPE[0], SHAPE[2]))
    with use_backend("fused"):
        pf.sigmoid_focal_loss(x, t, gamma=1.5, alpha=0.3)  # not 0, 1 or 2: those compile as constants
        before = counters["stats"]["unique_graphs"]
        pf.sigmoid_focal_loss(x, t, gamma=3.0, alpha=0.6)
        pf.sigmoid_focal_loss(torch.randn(7, 4, 9, requires_grad=True), torch.randint(0, 5, (7, 9)), gamma=0.5)
    assert counters["stats"]["unique_graphs"] == before
    # the softmax row engine: one kernel for every gamma (but 0, 1 and 2), size and reduction
    t = torch.randint(0, 4, (SHAPE[0], SHAPE[2]))
    with use_backend("fused"):
        pf.focal_loss(x, t, gamma=1.5)
        before = counters["stats"]["unique_graphs"]
        for gamma, reduction in ((0.5, "mean"), (3.0, "none"), (2.5, "sum")):
            pf.focal_loss(x, t, gamma=gamma, reduction=reduction)
        pf.focal_loss(torch.randn(7, 4, 9, requires_grad=True), torch.randint(0, 4, (7, 9)), gamma=0.7)
    assert counters["stats"]["unique_graphs"] == before


def test_auto_backend_picks_fused_for_large_inputs_with_gradients(monkeypatch):
    compiled = []
    monkeypatch.setattr(_rows, "run", lambda *args: compiled.append(args[0]) or _fused.run(*args))
    big = torch.randn(512, 600, requires_grad=True)  # above the softmax family's eager crossover
    t = torch.randint(0, 600, (512,))
    assert is_fused(pf.focal_loss(big, t)) and len(compiled) == 1
    assert is_fused(pf.focal_loss(big[:8], t[:8])) and len(compiled) == 1  # the eager engine: no compiling
    assert pf.focal_loss(big.detach(), t).grad_fn is None  # no gradient wanted
    with use_backend("reference"):
        assert not is_fused(pf.focal_loss(big, t))


def test_compile_failure_falls_back_to_the_eager_engine_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.delenv("POLYFOCAL_STRICT", raising=False)
    monkeypatch.setattr(_fused, "_compiled", {})
    monkeypatch.setattr(_fused, "_broken", None)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    eager = []
    monkeypatch.setitem(_softmax_engine._ROW_PATHS, "eager",
                        lambda *args, **kw: eager.append(1) or _ROW_EAGER(*args, **kw))
    x, t = torch.randn(SHAPE, requires_grad=True), torch.randint(0, 4, (SHAPE[0], SHAPE[2]))
    y = torch.softmax(torch.randn(SHAPE), 1)
    with use_backend("fused"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss, dense_loss = pf.focal_loss(x, t), pf.focal_loss(x, y)
    assert [str(w.message) for w in caught if "fused engine is unavailable" in str(w.message)] == [
        "polyfocal: the fused engine is unavailable (RuntimeError: no C++ compiler); using the eager engine (the "
        "reference for a loss without one)"]
    assert eager == [1] and not _fused.available()
    assert not is_fused(dense_loss)  # probability targets have no eager engine: the reference's autograd
    with use_backend("reference"):
        torch.testing.assert_close(loss, pf.focal_loss(x, t))
        torch.testing.assert_close(dense_loss, pf.focal_loss(x, y))


def test_variants_past_the_recompile_limit_run_uncompiled_and_keep_the_engine(monkeypatch):
    def scaled(x, factor):
        return x * factor

    monkeypatch.setattr(_fused, "RECOMPILE_LIMIT", 1)
    monkeypatch.setattr(_fused, "_limit_warned", set())
    x = torch.randn(6)
    torch.testing.assert_close(_fused.run(scaled, x, 2.0), x * 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _fused.run(scaled, x.double(), 3.0)  # a new dtype: a second variant
        _fused.run(scaled, x.half(), 3.0)
    torch.testing.assert_close(got, x.double() * 3)
    assert [str(w.message) for w in caught] == [
        "polyfocal: 1 variants of the fused kernel scaled are compiled in this process; further ones run uncompiled"]
    assert _fused.available()
    # with no variant allowed, a loss still keeps the fused engine's contract: its gradient saved, the
    # reference's values and gradients
    monkeypatch.setattr(_fused, "RECOMPILE_LIMIT", 0)
    logits64, target = sigmoid_inputs("index", seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fused_vs(lambda x: pf.sigmoid_focal_loss(x, target, gamma=2.5, reduction="none"),
                 lambda x: pf.sigmoid_focal_loss(x, target, gamma=2.5, reduction="none"), logits64)
    assert any("_value_and_grad_kernel" in str(w.message) for w in caught)


def test_unknown_backend():
    with pytest.raises(ValueError, match="`backend` must be one of"):
        with use_backend("cuda"):
            pass


@INDUCTOR_TRITON
@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_ghm_matches_the_reference_engine_over_steps(kind, reduction):
    batches = [sigmoid_inputs(kind, seed=s) for s in (8, 9, 10)]
    weight = torch.rand(SHAPE[1], 1)
    results = {}
    for engine in ("reference", "fused"):
        modules = (pf.GHMCLoss(momentum=0.75, reduction=reduction), pf.GHMRLoss(momentum=0.5, reduction=reduction))
        outputs = []
        for logits, target in batches:
            x = logits.float().requires_grad_()
            target = target.float() if kind == "soft" else target
            with use_backend(engine):
                c = modules[0](x, target, weight)
                r = modules[1](x, torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)), weight)
            if engine == "fused":
                assert is_fused(c) and is_fused(r)
            (grad,) = torch.autograd.grad(c.sum() + r.sum(), x)
            outputs.append((c, r, grad))
        results[engine] = (outputs, [m.counts.float() for m in modules])
    # fp32 histograms summed in another order: counts agree to fp32 rounding
    torch.testing.assert_close(results["fused"], results["reference"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", pf.available_losses())
def test_every_loss_takes_a_backend_argument(name):
    import inspect

    assert "backend" in inspect.signature(pf.get_loss_function(name)).parameters
    x = torch.randn(SHAPE, requires_grad=True)
    target = torch.rand(SHAPE) if name == "ghm_r_loss" else torch.rand(SHAPE[0], SHAPE[2]) * 2 \
        if "distribution" in name or "generalized" in name else torch.randint(0, 4, (SHAPE[0], SHAPE[2]))
    fn = pf.get_loss_function(name)
    kwargs = {"n_terms": 3} if name == "truncated_cross_entropy" else {}
    with pytest.raises(ValueError, match="`backend` must be one of"):
        fn(x, target, backend="gpu", **kwargs)
    assert not is_fused(fn(x, target, backend="reference", **kwargs))


def test_other_inputs_needing_gradients_take_the_reference_engine():
    x = torch.randn(64, 40, 30, requires_grad=True)  # above the auto threshold
    teacher = torch.softmax(torch.randn(64, 40, 30), 1).requires_grad_()
    loss = pf.cross_entropy(x, teacher)
    assert not is_fused(loss)
    (g_teacher,) = torch.autograd.grad(loss, teacher)
    assert g_teacher.abs().sum() > 0
    assert is_fused(pf.cross_entropy(x, teacher.detach()))
    with pytest.raises(ValueError, match="differentiates `logits` only"):
        pf.sigmoid_focal_loss(x, torch.rand(64, 40, 30), weight=torch.ones(40, 1, requires_grad=True),
                              backend="fused")


@pytest.mark.parametrize("name", ["focal_loss", "sigmoid_focal_loss", "ghm_c_loss"])
def test_first_call_under_saved_tensor_hooks_compiles(monkeypatch, name):
    """save_on_cpu (activation offloading) around the first call: torch.func cannot trace under
    saved-tensor hooks, so the engine lifts them for its kernels; the saved gradient still goes
    through them, and the engine stays available."""
    monkeypatch.setenv("POLYFOCAL_STRICT", "1")
    monkeypatch.setattr(_fused, "_compiled", {})  # force a fresh compile inside the hooks
    monkeypatch.setattr(_fused, "_broken", None)
    fn = pf.get_loss_function(name)
    x, t = torch.randn(SHAPE, requires_grad=True), torch.randint(0, 4, (SHAPE[0], SHAPE[2]))
    packed = []

    def pack(tensor):
        packed.append(tensor.shape)
        return tensor

    with use_backend("fused"), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = fn(x, t)
    (grad,) = torch.autograd.grad(loss, x)
    assert is_fused(loss) and _fused.available()
    assert packed == [x.shape]  # the gradient, saved through the caller's hook
    with use_backend("reference"):
        torch.testing.assert_close(grad, torch.autograd.grad(fn(x, t), x)[0])


def test_out_of_memory_is_raised_not_taken_for_a_broken_engine(monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("too big")

    monkeypatch.delenv("POLYFOCAL_STRICT", raising=False)
    monkeypatch.setattr(_fused, "_compiled", {})
    monkeypatch.setattr(_fused, "_broken", None)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: oom)
    x, t = torch.randn(SHAPE, requires_grad=True), torch.randint(0, 4, (SHAPE[0], SHAPE[2]))
    with use_backend("fused"), pytest.raises(torch.OutOfMemoryError):
        pf.focal_loss(x, t)
    assert _fused.available()


# --- the hand-carried gradients: autograd of the loss's phi alone, taken to the logits ------------

EXTREME = torch.tensor([-1e4, -100.0, -20.0, -3.0, -0.5, 0.0, 0.5, 3.0, 20.0, 100.0, 1e4])


def _forms(y, exponent):
    from polyfocal import _math

    return {
        "binary focal": lambda prob: _math.binary_focal(prob, y.round(), gamma=exponent, alpha=0.25, epsilon=1.0),
        "soft focal": lambda prob: _math.sigmoid_focal(prob, y, gamma=exponent, alpha=0.25, epsilon=1.0),
        "quality focal": lambda prob: _math.quality_focal(prob, y, beta=exponent),  # through p and 1-p
        "varifocal": lambda prob: _math.varifocal(prob, y, alpha=0.75, gamma=exponent, iou_weighted=True),
    }


@pytest.mark.parametrize("form", ["binary focal", "soft focal", "quality focal", "varifocal"])
@pytest.mark.parametrize("exponent", [0.0, 0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("as_tensor", [True, False], ids=["tensor", "number"])  # numbers 0-2 are specialised
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_sigmoid_slope_equals_autograd_through_logsigmoid(form, exponent, as_tensor, dtype):
    from polyfocal._numerics import sigmoid_probability

    z = EXTREME.to(dtype)
    y = torch.tensor([0.0, 1.0, 0.3, 1.0, 0.0, 0.5, 1.0, 0.0, 0.9, 0.0, 1.0], dtype=dtype)
    phi = _forms(y, torch.tensor(exponent, dtype=dtype) if as_tensor else exponent)[form]

    value, slope = _fused.log_sigmoid_slope(phi, z, torch.full_like(z, 0.5))
    zr = z.clone().requires_grad_()
    want = phi(sigmoid_probability(zr))
    (want_slope,) = torch.autograd.grad(want, zr, torch.full_like(z, 0.5))
    assert torch.isfinite(value).all() and torch.isfinite(slope).all()
    torch.testing.assert_close(value, want.detach())
    torch.testing.assert_close(slope, want_slope)


def test_is_class_with_given_classes_equals_the_built_one():
    from polyfocal._numerics import is_class

    x, labels = torch.randn(6, 5, 4), torch.tensor([[0, 4, 5, -100]] * 6)
    torch.testing.assert_close(is_class(x, labels, _fused.class_indices(5, x.device)), is_class(x, labels))


SIGMOID_CASES = [
    ("sigmoid_focal_loss", {"gamma": 0.0}), ("sigmoid_focal_loss", {"gamma": 0.5}),
    ("sigmoid_focal_loss", {"gamma": 1.0, "alpha": None}), ("poly1_focal_loss", {"gamma": 2.0, "epsilon": 2.0}),
    ("quality_focal_loss", {"beta": 0.5}), ("varifocal_loss", {}), ("binary_cross_entropy", {}),
    ("sigmoid_soft_truncated_loss", {}),
]


@pytest.mark.parametrize("name, kwargs", SIGMOID_CASES)
# inductor's Triton (test_triton's rerun) for one target form: test_sigmoid_losses and the quality tests
# run every form's Triton, and the logits' values do not change the code inductor writes
@pytest.mark.parametrize("kind", [pytest.param("index", marks=INDUCTOR_TRITON), "labels_scores", "soft"])
def test_sigmoid_engine_at_extreme_logits_with_weights_ignore_and_normalizer(name, kwargs, kind):
    g = torch.Generator().manual_seed(11)
    x = EXTREME[torch.randint(0, EXTREME.numel(), SHAPE, generator=g)].double()
    labels = torch.randint(0, SHAPE[1] + 1, (SHAPE[0], SHAPE[2]), generator=g)
    labels[0, 0] = -1
    target = {"index": labels, "labels_scores": (labels, torch.rand(labels.shape, generator=g, dtype=torch.float64)),
              "soft": torch.rand(SHAPE, generator=g, dtype=torch.float64).round()}[kind]
    if kind == "soft":
        target[0, 0, 0] = 0.3
    weight = torch.rand(SHAPE[1], 1, generator=g, dtype=torch.float64)
    fn = pf.get_loss_function(name)
    options = dict(weight=weight, normalizer=torch.tensor(3.0, dtype=torch.float64), **kwargs)
    if kind != "soft":
        options["ignore_index"] = -1
    results = {}
    for engine in ("reference", "fused"):
        xr = x.clone().requires_grad_()
        with use_backend(engine):
            loss = fn(xr, target, **options)
        if engine == "fused":
            assert is_fused(loss)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(xr.grad).all()
        results[engine] = (loss, xr.grad)
    torch.testing.assert_close(results["fused"], results["reference"])


@INDUCTOR_TRITON
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name, target_fn", [
    ("poly1_focal_loss", lambda: torch.randint(0, 5, (5, 3))),
    ("quality_focal_loss", lambda: (torch.randint(0, 5, (5, 3)), torch.rand(5, 3))),
    ("focal_loss", lambda: torch.randint(0, 4, (5, 3))),
])
def test_low_precision_with_hand_carried_gradients(name, target_fn, dtype):
    torch.manual_seed(12)
    x, target = (torch.randn(SHAPE) * 4).to(dtype), target_fn()
    fn = pf.get_loss_function(name)
    results = {}
    for engine in ("reference", "fused"):
        xr = x.clone().requires_grad_()
        with use_backend(engine):
            loss = fn(xr, target, weight=torch.rand(SHAPE[1], 1, generator=torch.Generator().manual_seed(0))
                      if name != "focal_loss" else None)
        loss.backward()
        assert loss.dtype == dtype and xr.grad.dtype == dtype
        results[engine] = (loss, xr.grad)
    torch.testing.assert_close(results["fused"], results["reference"])
