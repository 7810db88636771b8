"""The numerical guarantees of every loss, stated as a table; a new registered loss is held to them
as soon as it has a row in ``FORMS``.

| property | losses | engines | target forms | bound |
|---|---|---|---|---|
| second derivatives (``gradgradcheck``, float64), gamma in {0, 0.5, 1.5, 2, 3}, logits of scale 2 and +-30 | every registered loss | reference, eager (softmax family), fused (and ``auto``) | every form of ``FORMS`` | finite differences |
| derivatives in a float target, to second order | sigmoid float forms, softmax probabilities | reference (``auto`` takes it when a target needs a gradient) | hard 0/1 and soft | finite differences |
| derivatives of every order finite | every registered loss | reference, eager (softmax family), fused | targets exactly 0 or 1, logits of +-1e4 | no NaN or inf |
| fp32 values per row / element | CE (plain, weighted, label-smoothed), BCE | reference, eager (CE), fused | class indices, float targets | <= 4x torch's error against float64 |
| fp32 gradients per row (norm-wise) | CE (plain, weighted, label-smoothed), BCE | reference, eager (CE), fused | as for values | <= 4x torch's error against float64 |
| fp32 values and gradients | every other loss but GHM-C (its bins are cut at edges) | each where ``auto`` takes it: fused (softmax at C = 128,000), eager (softmax below 262,144 logits), reference (below 65,536 logits) | every form | <= 1e-6 relative to float64; where the loss is ill-conditioned, 4x the change one rounding of the inputs makes in float64; a gradient, also 4x torch's own family loss's error on the same inputs, and 4x torch's error in the softmax's p_t |

Every fp32 figure is measured against float64 run on the same fp32-rounded inputs, so it is the
computation's error, not the inputs' rounding (the last row against the reference engine's float64).
The derivative rows run the fused engine's path with its kernels uncompiled (``fused_uncompiled``):
they test the engine's logic over the whole matrix, the same math as the compiled kernels, which
``test_fused.py`` holds to the references (values, gradients, saturated logits) one compiled variant
each; compiling the matrix's ~250 float64 variants cost most of a cold run of the suite. The fp32 row
compiles one loss of each kernel the fused engine builds (``COMPILED_PRECISION``) and runs the rest
uncompiled: compiling its 85 fp32 variants took a fifth of a cold run. ``backend="triton"`` computes
fp64 on the fused engine's compiled passes, so its second derivatives are the fused engine's; its
first ones are checked in ``test_triton.py``.
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

import polyfocal as pf
import reference as ref
from reference import INDEX_ONLY, STOP_GRADIENT, declared

GAMMAS = (0.0, 0.5, 1.5, 2.0, 3.0)
GAMMA_LOSSES = ("focal_loss", "poly_loss", "sigmoid_focal_loss", "poly1_focal_loss", "varifocal_loss")
SOFTMAX_FORMS = ("index", "one_hot", "soft", "smoothed")
SIGMOID_FORMS = ("index", "hard", "soft")
DETECTION_FORMS = SIGMOID_FORMS + ("scored",)
FAMILY_FORMS = {"softmax": SOFTMAX_FORMS, "sigmoid": SIGMOID_FORMS, "distribution": ("positions",),
                "regression": ("regression",), "region": ("index", "one_hot", "soft")}
#: sigmoid losses that also take GFL's (labels, scores) pairs
SCORED = ("quality_focal_loss", "varifocal_loss")
#: every declared loss: its family, its target forms, its hyperparameters
FORMS = {name: (pf.registry.declaration(name).family,
                DETECTION_FORMS if name in SCORED else ("index", "smoothed") if name in INDEX_ONLY
                else FAMILY_FORMS[pf.registry.declaration(name).family], params)
         for name, params in declared().items()}
#: one engine only: GFL's modulator couples a row's bins, and it always runs on autograd
SINGLE_ENGINE = {"generalized_focal_loss"}


def make_target(family: str, form: str, x: torch.Tensor, g: torch.Generator):
    """A target of ``form`` for logits ``x (N, C, *)`` (class indices include an ignored entry)."""
    n, c, rest = x.shape[0], x.shape[1], tuple(x.shape[2:])
    if form in ("index", "smoothed", "scored"):
        labels = torch.randint(0, c + (family == "sigmoid"), (n, *rest), generator=g)
        labels.view(-1)[0] = -100
        return (labels, torch.rand((n, *rest), generator=g, dtype=x.dtype)) if form == "scored" else labels
    if form == "one_hot":
        return F.one_hot(torch.randint(0, c, (n, *rest), generator=g), c).movedim(-1, 1).to(x.dtype)
    if form == "hard":
        return (torch.rand(x.shape, generator=g) < 0.4).to(x.dtype)
    if form == "soft":
        y = torch.rand(x.shape, generator=g, dtype=x.dtype)
        return y.softmax(1) if family == "softmax" else y
    if form == "positions":
        return torch.rand((n, *rest), generator=g, dtype=x.dtype) * (c - 1)
    return torch.randn(x.shape, generator=g, dtype=x.dtype)  # regression


def loss_call(name: str, form: str, gamma=None, **kwargs):
    """``f(x, target)`` for loss ``name`` with its table hyperparameters (``kwargs`` override them)."""
    params = dict(FORMS[name][2])
    if gamma is not None:
        params["gamma"] = gamma
    if form == "smoothed":
        params["label_smoothing"] = 0.1
    function = pf.get_loss_function(name)
    if FORMS[name][0] == "region" and kwargs.get("reduction") == "none" and name not in NONE_REDUCTION:
        kwargs["reduction"] = "sum"  # a region term plus a per-pixel term has no per-element form
    return lambda x, target: function(x, target, **{**params, **kwargs})


def cases(gammas=GAMMAS):
    for name, (_, forms, _) in sorted(FORMS.items()):
        for form in forms:
            for gamma in (gammas if name in GAMMA_LOSSES else (None,)):
                yield name, form, gamma


#: the region losses whose terms stand alone (``reduction="none"``: per image and class)
NONE_REDUCTION = {"dice_loss", "tversky_loss", "focal_tversky_loss"}


def engines(name):
    if name in SINGLE_ENGINE:
        return ("reference",)
    if FORMS[name][0] == "region":  # "eager": the written-out gradients whatever the size
        return ("reference", "eager")
    return ("reference", "eager", "fused") if FORMS[name][0] == "softmax" else ("reference", "fused")


# --- second derivatives ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("scale", [2.0, 30.0])
@pytest.mark.parametrize("name, form, gamma", list(cases()))
def test_second_derivatives_are_exact(name, form, gamma, scale, fused_uncompiled):
    if name in STOP_GRADIENT:
        pytest.skip("finite differences differentiate the value; test_softmax holds its derivatives to a twin's")
    family = FORMS[name][0]
    g = torch.Generator().manual_seed(zlib.crc32(f"{name} {form}".encode()))
    x = torch.randn(2, 3, 2, generator=g, dtype=torch.float64) * scale
    target = make_target(family, form, x, g)
    for engine in engines(name):
        f = loss_call(name, form, gamma, reduction="none", backend=engine)
        xin = x.clone().requires_grad_()
        assert torch.autograd.gradgradcheck(lambda z: f(z, target), (xin,), fast_mode=True), (name, form, gamma, engine)


@pytest.mark.parametrize("name, form, gamma", [c for c in cases((0.5, 2.0)) if FORMS[c[0]][0] != "distribution"])
def test_create_graph_on_the_fused_engine_equals_the_reference(name, form, gamma, fused_uncompiled):
    """The fused (and eager) engine's gradient, taken with create_graph, and a Hessian-vector product through
    it, equal the reference engine's (and the mean's Hessian is not lost: the issue's snippet)."""
    family = FORMS[name][0]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 5, 3, generator=g, dtype=torch.float64) * 3
    target, v = make_target(family, form, x, g), torch.randn(x.shape, generator=g, dtype=torch.float64)
    results = []
    for engine in engines(name):
        xin = x.clone().requires_grad_()
        loss = loss_call(name, form, gamma, backend=engine)(xin, target) + 0.5 * (xin ** 2).sum()
        (grad,) = torch.autograd.grad(loss, xin, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * v).sum(), xin)
        results.append((grad.detach(), hvp))
    (want_grad, want_hvp), *others = results
    for got_grad, got_hvp in others:
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got_hvp, want_hvp, rtol=1e-10, atol=1e-12)
    assert not torch.equal(want_hvp, v), "the loss's own curvature is part of the product"


def test_issue_snippet_auto_size_fused_hessian_row():
    torch.manual_seed(0)
    x = torch.randn(64, 1024, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5, (64, 1024))
    rows = []
    for engine in ("reference", "fused", "auto"):
        loss = pf.focal_loss(x.reshape(-1, 5), t.reshape(-1), backend=engine) + 0.5 * (x ** 2).sum()
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        rows.append(torch.autograd.grad(g.flatten()[0], x)[0])
    assert rows[0].flatten()[1:5].abs().min() > 0  # the loss couples a row's classes
    torch.testing.assert_close(rows[1], rows[0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(rows[2], rows[0], rtol=1e-12, atol=1e-15)


def test_create_graph_after_the_logits_changed_in_place_raises():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    logits = x * 1.0
    loss = pf.focal_loss(logits, torch.tensor([0, 1, 2, 0]), backend="fused")
    logits.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("engine", ["reference", "fused"])
def test_create_graph_of_a_per_row_loss_is_differentiable_in_grad_output(engine):
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(6, dtype=torch.float64, requires_grad=True)
    loss = pf.poly1_cross_entropy(x, torch.tensor([0, 1, 2, 3, 0, 1]), reduction="none", backend=engine)
    (grad,) = torch.autograd.grad(loss, x, w, create_graph=True)
    (dw,) = torch.autograd.grad(grad.pow(2).sum(), w)
    reference = torch.func.grad(lambda z: (pf.poly1_cross_entropy(z, torch.tensor([0, 1, 2, 3, 0, 1]),
                                                                  reduction="none", backend="reference")
                                           * w.detach()).sum())(x.detach())
    torch.testing.assert_close(grad.detach(), reference)
    assert torch.isfinite(dw).all() and dw.abs().sum() > 0


#: GHM-C's weights are a histogram over the batch, whose scatter-add vmap cannot batch over samples
NO_PER_SAMPLE = {"ghm_c_loss"}


@pytest.mark.parametrize("name", sorted(n for n, (family, forms, _) in FORMS.items()
                                        if family in ("softmax", "sigmoid") and "index" in forms))
def test_torch_func_transforms_differentiate_every_loss(name):
    """Inside ``torch.func`` (``grad``; ``vmap`` of ``grad``: per-sample gradients, as DP-SGD takes them) every
    loss runs the reference engine and skips the host reads of value checks: the saved-gradient Function
    cannot serve functorch's wrapped tensors, and a batched target cannot be read (every case raised before)."""
    family = FORMS[name][0]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) * 2
    target, f = make_target(family, "index", x, g), loss_call(name, "index")
    z = x.clone().requires_grad_()
    expected = torch.autograd.grad(f(z, target), z)[0]
    torch.testing.assert_close(torch.func.grad(lambda v: f(v, target))(x), expected)
    if name in NO_PER_SAMPLE:
        return
    per_sample = torch.func.vmap(torch.func.grad(lambda xi, ti: f(xi[None], ti[None])))(x, target)
    for i in range(x.shape[0]):
        z = x[i:i + 1].clone().requires_grad_()
        torch.testing.assert_close(per_sample[i], torch.autograd.grad(f(z, target[i:i + 1]), z)[0][0])


def test_torch_func_hessian_of_focal_loss_matches_autograds():
    x = torch.randn(3, 5, dtype=torch.float64)
    t = torch.tensor([0, 4, 2])
    hessian = torch.func.hessian(lambda z: pf.focal_loss(z, t, gamma=1.5))(x)
    z = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(pf.focal_loss(z, t, gamma=1.5, backend="reference"), z, create_graph=True)
    rows = [torch.autograd.grad(grad.reshape(-1)[k], z, retain_graph=True)[0] for k in range(grad.numel())]
    torch.testing.assert_close(hessian.reshape(grad.numel(), -1), torch.stack(rows).reshape(grad.numel(), -1))


# --- derivatives in the target, at targets exactly 0 or 1 ----------------------------------------

#: not differentiable in the target where it is exactly 0 or 1 (a branch on ``q > 0``, a cut at p_t)
TARGET_KINKS = {"varifocal_loss", "sigmoid_hard_truncated_loss", "ghm_c_loss"}


@pytest.mark.parametrize("form", ["hard", "soft"])
@pytest.mark.parametrize("name", sorted(n for n, (family, _, _) in FORMS.items()
                                        if family == "sigmoid" and n not in TARGET_KINKS))
@pytest.mark.parametrize("gamma", [0.5, 3.0])
def test_target_derivatives_to_second_order(name, form, gamma):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64) * 3
    y = make_target("sigmoid", form, x, g)
    f = loss_call(name, form, gamma if name in GAMMA_LOSSES else None, validate=False, reduction="sum")
    inputs = (x.clone().requires_grad_(), y.clone().requires_grad_())
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("form", ["one_hot", "soft"])
@pytest.mark.parametrize("name", sorted(n for n, (family, _, _) in FORMS.items() if family == "softmax"
                                        and n != "hard_truncated_loss" and n not in INDEX_ONLY))
def test_probability_target_derivatives_to_second_order(name, form):
    if name in STOP_GRADIENT:
        pytest.skip("finite differences differentiate the value; test_softmax holds its derivatives to a twin's")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64) * 3
    y = make_target("softmax", form, x, g)
    f = loss_call(name, form, 1.5 if name in GAMMA_LOSSES else None, validate=False, reduction="sum")
    inputs = (x.clone().requires_grad_(), y.clone().requires_grad_())
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("name, form, gamma", list(cases((0.5, 1.5))))
def test_every_derivative_is_finite_at_hard_targets_and_saturated_logits(name, form, gamma, fused_uncompiled):
    """First and second derivatives (a Hessian-vector product) at logits of +-1e4, float64 and fp32."""
    family = FORMS[name][0]
    if form in ("soft", "positions", "regression", "scored"):
        pytest.skip("targets exactly 0 or 1 only")
    for dtype in (torch.float64, torch.float32):
        g = torch.Generator().manual_seed(4)
        x = torch.where(torch.rand(4, 3, 2, generator=g) < 0.5, 1e4, -1e4).to(dtype)
        target = make_target(family, form, x, g)
        for engine in engines(name):
            xin = x.clone().requires_grad_()
            loss = loss_call(name, form, gamma, backend=engine)(xin, target)
            (grad,) = torch.autograd.grad(loss, xin, create_graph=True)
            (hvp,) = torch.autograd.grad(grad.sum(), xin)
            assert torch.isfinite(grad).all() and torch.isfinite(hvp).all(), (name, form, engine, dtype)


# --- fp32 precision against float64 --------------------------------------------------------------

def _value_and_grad(f, x: torch.Tensor, target, cotangent: torch.Tensor):
    x = x.clone().requires_grad_()
    value = f(x, _as_float(target, x.dtype))
    (grad,) = torch.autograd.grad(value, x, cotangent.to(value.dtype))
    return value.detach().double(), grad.double().flatten(1)


def _relative(got, want) -> tuple[float, float]:
    """Worst per-row relative error of values and (norm-wise) gradients."""
    (v, g), (v64, g64) = got, want
    return (((v - v64).abs() / v64.abs().clamp_min(1e-300)).max().item(),
            ((g - g64).norm(dim=1) / g64.norm(dim=1).clamp_min(1e-300)).max().item())


def _errors(f, x32: torch.Tensor, target, cotangent: torch.Tensor, f64=None):
    """``f``'s fp32 errors (:func:`_relative`) against float64 (``f64``, by default ``f`` itself) on the
    same inputs."""
    want = _value_and_grad(f if f64 is None else f64, x32.double(), target, cotangent)
    return _relative(_value_and_grad(f, x32, target, cotangent), want)


def _conditioning(f, x32: torch.Tensor, target, cotangent: torch.Tensor, tries: int = 3):
    """How far float64 moves when the fp32 inputs move by one rounding: the error no fp32 computation
    avoids where the loss is ill-conditioned (``|y - y_hat|`` near 0, a gradient that cancels). A relative
    2^-24 each, at random; and every logit up and down by 2^-24 times ``max(|x|, 1)``: an fp32 probability
    near 1/2 is known to its own rounding, which is that much in its logit, so an element that close to
    a jump of the gradient (reduced focal loss's threshold, a truncation's margin) is on either side."""
    x = x32.double()
    want = _value_and_grad(f, x, target, cotangent)
    g = torch.Generator().manual_seed(0)
    step = EPS32 * x.abs().clamp_min(1)
    inputs = [x * (1 + EPS32 / 2 * (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1)) for _ in range(tries)]
    moved = [_relative(_value_and_grad(f, z, target, cotangent), want) for z in (*inputs, x + step, x - step)]
    return max(m[0] for m in moved), max(m[1] for m in moved)


def _as_float(target, dtype: torch.dtype):
    """A float target (or the scores of a ``(labels, scores)`` pair) in ``dtype``; indices as they are."""
    if isinstance(target, tuple):
        return target[0], target[1].to(dtype)
    return target.to(dtype) if target.is_floating_point() else target


EPS32 = torch.finfo(torch.float32).eps


def _torch_cross_entropy(weight=None, label_smoothing=0.0):
    def f(x, t):
        w = None if weight is None else weight.to(x.dtype)
        return F.cross_entropy(x, t, weight=w, label_smoothing=label_smoothing, reduction="none")
    return f


class _Uncompiled(dict):
    """In place of the fused engine's table of compiled kernels: every kernel runs as written, as a
    variant past the recompile limit does."""

    def __contains__(self, kernel):
        return True

    def __getitem__(self, kernel):
        return kernel


@pytest.fixture(params=["reference", "eager", "fused", "fused, uncompiled"])
def engine(request, monkeypatch):
    if request.param == "fused, uncompiled":
        monkeypatch.setattr(pf._fused, "_compiled", _Uncompiled())
    return request.param.split(",")[0]


@pytest.mark.parametrize("layout", ["rows", "dense"])
@pytest.mark.parametrize("classes", [1000, 32000, 128000])
@pytest.mark.parametrize("options", [{}, {"weight": True}, {"label_smoothing": 0.1},
                                     {"label_smoothing": 0.1, "weight": True}], ids=str)
def test_fp32_cross_entropy_within_4x_torch(classes, options, layout, engine):
    """Against torch's own error on ``(N, C)`` rows; the dense layout ``(N, C, L)`` holds the same
    rows (torch's own softmax along an inner dimension is 10-40x less exact: not the yardstick)."""
    g = torch.Generator().manual_seed(classes)
    n = 24 if classes < 100000 else 12
    x = torch.randn(n, classes, generator=g) * 3
    t = torch.randint(0, classes, (n,), generator=g)
    cotangent = torch.randn(n, generator=g, dtype=torch.float64)
    weight = torch.rand(classes, generator=g) + 0.5 if options.get("weight") else None
    smoothing = options.get("label_smoothing", 0.0)
    torch_value, torch_grad = _errors(_torch_cross_entropy(weight, smoothing), x, t, cotangent)

    def f(z, target):
        w = None if weight is None else weight.to(z.dtype)
        if layout == "dense":  # rows (n/3, 3) laid out as (n/3, C, 3)
            z, target = z.view(-1, 3, classes).transpose(1, 2), target.view(-1, 3)
        loss = pf.cross_entropy(z, target, weight=w, label_smoothing=smoothing, reduction="none", backend=engine)
        return loss.reshape(-1)

    value, grad = _errors(f, x, t, cotangent)
    assert value <= 4 * torch_value + EPS32, (value, torch_value)
    assert grad <= 4 * torch_grad + EPS32, (grad, torch_grad)


@pytest.mark.parametrize("form", ["hard", "index", "soft"])
def test_fp32_binary_cross_entropy_within_4x_torch(form):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(256, 80, generator=g) * 3
    target = make_target("sigmoid", form, x, g)
    if form == "index":
        target.view(-1)[0] = 0
        y = F.one_hot(target, 81)[:, :80].float()
    else:
        y = target
    cotangent = torch.randn(x.shape, generator=g, dtype=torch.float64)
    torch_value, torch_grad = _errors(
        lambda z, t: F.binary_cross_entropy_with_logits(z, y.to(z.dtype), reduction="none"), x, y, cotangent)
    for engine in ("reference", "fused"):
        value, grad = _errors(lambda z, t: pf.binary_cross_entropy(z, t, reduction="none", backend=engine),
                              x, target, cotangent)
        assert value <= 4 * torch_value + EPS32, (engine, value, torch_value)
        assert grad <= 4 * torch_grad + EPS32, (engine, grad, torch_grad)


def _precision_cases():
    for name, form, gamma in cases((0.5, 2.0)):
        family = FORMS[name][0]
        # cross-entropy and BCE have rows of their own (above); GHM's weights are piecewise constant in
        # the logits, so an element within rounding of a bin edge is binned apart in fp32 and float64
        if name in ("cross_entropy", "binary_cross_entropy", "ghm_c_loss") or family in ("regression", "region"):
            continue  # the region family's precision: test_region.test_fp32_within_1e6_of_float64
        yield name, form, gamma


def _torch_twin(family: str, form: str, target):
    """torch's own loss of the family on the same target: F.cross_entropy (probabilities, smoothing;
    DFL's bins as classes) or F.binary_cross_entropy_with_logits (a dense 0/1 or scored target)."""
    if family == "sigmoid":
        def bce(z, t):
            if form in ("index", "scored"):
                labels, scores = t if form == "scored" else (t, None)
                hot = F.one_hot(labels.clamp_min(0), z.shape[1] + 1)[:, : z.shape[1]].to(z.dtype)
                t = hot if scores is None else hot * scores.to(z.dtype).unsqueeze(1)
            return F.binary_cross_entropy_with_logits(z, t.to(z.dtype), reduction="none")
        return bce
    if family == "distribution":
        return lambda z, t: F.cross_entropy(z, t.round().long(), reduction="none")
    smoothing = 0.1 if form == "smoothed" else 0.0
    return lambda z, t: F.cross_entropy(z, t.clamp_min(0) if form in ("index", "smoothed") else t.to(z.dtype),
                                        label_smoothing=smoothing, reduction="none")


def _target_probability_error(x: torch.Tensor, target: torch.Tensor) -> float:
    """torch's worst relative error in ``softmax(x)`` at the target class (every class a float target
    gives weight), fp32 against float64."""
    p32, p64 = (torch.softmax(z, 1).double() for z in (x, x.double()))
    if target.is_floating_point():
        return ((p32 - p64).abs() / p64)[target > 0].max().item()
    at = target.clamp_min(0).unsqueeze(1)
    return ((p32.gather(1, at) - p64.gather(1, at)).abs() / p64.gather(1, at)).max().item()


def _ldam_twin(twin, form: str, params: dict):
    def moved(z, t):
        y = t.to(z.dtype) if form in ("one_hot", "soft") else F.one_hot(t.clamp_min(0), z.shape[1]).to(z.dtype)
        return twin(ref.ldam(z, y, **params), t)
    return moved


def _seesaw_twin(twin, form: str, params: dict):
    """Seesaw's negatives moved by its compensation ``q log(sigma_j / sigma_i) = q (z_j - z_i)`` where that is
    positive, held constant as seesaw holds it (no class counts here, so no mitigation): a logit moved by
    up to ``1 + q`` times its own rounding, which torch's loss of the moved logits carries too."""
    assert params.get("class_counts") is None
    q = params.get("q", 2.0)

    def moved(z, t):
        at = z.gather(1, t.clamp_min(0).unsqueeze(1)).detach()
        return twin(z + q * (z.detach() - at).clamp_min(0), t)
    return moved


#: losses of logits they move first, and torch's twin of the moved logits
MOVED_LOGITS = {"ldam_loss": _ldam_twin, "seesaw_loss": _seesaw_twin}


#: losses whose value is p_t times a factor (DFT's sg(p_t) CE): no more exact than torch's p_t, in
#: value as in gradient
PROBABILITY_WEIGHTED = {"dft_cross_entropy"}


#: Poly-1 with epsilon = -alpha_t drops the series' first term by cancellation, -log p_t - (1 - p_t), so
#: near p_t = 1 its relative error grows like 1 / (1 - p_t) (its absolute error stays at fp32 rounding);
#: the precision rows take a Poly-1 epsilon that adds
PRECISION_PARAMS = {"poly1_focal_loss": {"epsilon": 1.0}}
#: each engine where ``auto`` takes it: fused for a gradient of 65,536 logits or more (262,144 for
#: the softmax family), eager (the softmax family) or reference below
PRECISION_SHAPES = {
    "fused": {"softmax": (12, 128000), "sigmoid": (1024, 80), "distribution": (4096, 17)},
    "eager": {"softmax": (64, 1000)},
    "reference": {"softmax": (64, 1000), "sigmoid": (256, 80), "distribution": (512, 17)},
}


#: the losses whose fp32 row compiles the fused engine's kernels: one of each kernel the engine builds (the
#: row engine and the soft rows: focal; the wide rows: dual focal; the element kernel: sigmoid focal, QFL,
#: DFL). The others run the fused engine's path with its kernels as written (the same math, and the same
#: assertions; test_fused.py holds each loss's compiled kernels to the references in fp32)
COMPILED_PRECISION = {"focal_loss", "dual_focal_loss", "sigmoid_focal_loss", "quality_focal_loss",
                      "distribution_focal_loss"}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["reference", "eager", "fused"])
@pytest.mark.parametrize("name, form, gamma", list(_precision_cases()))
def test_fp32_within_1e6_of_float64(name, form, gamma, engine, request):
    family = FORMS[name][0]
    if engine not in engines(name):
        pytest.skip(f"{name} has one engine")
    if engine == "fused" and name not in COMPILED_PRECISION:
        request.getfixturevalue("fused_uncompiled")
    shape = PRECISION_SHAPES[engine][family]
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=g) * 2
    target = make_target(family, form, x, g)
    cotangent = torch.randn(shape if family == "sigmoid" else shape[:1], generator=g, dtype=torch.float64)
    kwargs = {**PRECISION_PARAMS.get(name, {}), "reduction": "none"}
    # against the reference engine's float64: a compiled engine's fp32 variant is the one it builds for
    # this loss in training; its float64 variant would be one more kernel to compile for the test alone
    value, grad = _errors(loss_call(name, form, gamma, backend=engine, **kwargs), x, target, cotangent,
                          loss_call(name, form, gamma, backend="reference", **kwargs))
    value_floor = grad_floor = 1e-6
    if grad > grad_floor:
        # a gradient is no more exact than torch's own loss of its family, nor than the probability
        # p_t it is made of (a loss whose gradient is p_t times a factor: |log p_t| roundings at fp32)
        twin = _torch_twin(family, form, target)
        if name in MOVED_LOGITS:  # torch's loss of the logits as the loss moves them (LDAM's s (z - Delta y))
            twin = MOVED_LOGITS[name](twin, form, FORMS[name][2])
        grad_floor = max(grad_floor, 4 * _errors(twin, x, target, cotangent)[1])
        # (a one-hot target is its class indices' loss: the CPU value check reads it, the row engine runs)
        if family == "softmax" and form in ("index", "smoothed", "one_hot"):
            grad_floor = max(grad_floor, 4 * _target_probability_error(x, target))
    if name in PROBABILITY_WEIGHTED:
        floor = 4 * _target_probability_error(x, target)
        value_floor, grad_floor = max(value_floor, floor), max(grad_floor, floor)
    if value > value_floor or grad > grad_floor:  # where the loss itself is ill-conditioned
        conditioning = _conditioning(loss_call(name, form, gamma, backend="reference", **kwargs), x, target, cotangent)
        value_floor, grad_floor = max(value_floor, 4 * conditioning[0]), max(grad_floor, 4 * conditioning[1])
    assert value <= value_floor and grad <= grad_floor, (value, value_floor, grad, grad_floor)
