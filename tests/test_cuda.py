"""Every loss on a real GPU: each engine on CUDA against the float64 reference on CPU.

Skipped without CUDA (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.
The kernels are then the ones a GPU user runs: Triton compiled for the device (not the
interpreter), inductor's Triton for the fused engine.
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

import polyfocal as pf
from test_numerics import FORMS, GAMMA_LOSSES, SINGLE_ENGINE, loss_call, make_target

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
SHAPES = {"rows": (300, 7), "dense": (4, 7, 9, 5)}


def to(value, device):
    if isinstance(value, (tuple, list)):
        return type(value)(to(v, device) for v in value)
    return value.to(device)


def as_float64(value):
    if isinstance(value, (tuple, list)):
        return type(value)(as_float64(v) for v in value)
    return value.double() if value.is_floating_point() else value


def engines(name, form):
    if name in SINGLE_ENGINE:
        return ("reference", "auto")
    triton = FORMS[name][0] == "softmax" and form in ("index", "smoothed")
    return ("reference", "eager", "fused", "auto") + (("triton",) if triton else ())


def cuda_cases():
    for name, (family, forms, _) in sorted(FORMS.items()):
        for form in forms:
            for layout in (("rows",) if family in ("distribution", "regression") else SHAPES):
                yield name, form, layout


@pytest.mark.parametrize("name, form, layout", list(cuda_cases()))
def test_every_engine_on_cuda_matches_float64(name, form, layout):
    g = torch.Generator().manual_seed(zlib.crc32(f"{name} {form} {layout}".encode()))
    x = torch.randn(SHAPES[layout], generator=g) * 3
    target = make_target(FORMS[name][0], form, x, g)
    gamma = 1.5 if name in GAMMA_LOSSES else None
    x64 = x.double().requires_grad_()
    want = loss_call(name, form, gamma, reduction="sum", backend="reference")(x64, as_float64(target))
    (want_grad,) = torch.autograd.grad(want, x64)
    for engine in engines(name, form):
        xc = x.to(CUDA).requires_grad_()
        got = loss_call(name, form, gamma, reduction="sum", backend=engine)(xc, to(target, CUDA))
        (grad,) = torch.autograd.grad(got, xc)
        scale = want.abs().item() + 1
        assert abs(got.item() - want.item()) <= 1e-5 * scale, (engine, got.item(), want.item())
        torch.testing.assert_close(grad.cpu().double(), want_grad, rtol=1e-4, atol=1e-5, msg=engine)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("engine", ["reference", "eager", "fused", "triton"])
@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss", "poly1_cross_entropy", "sigmoid_focal_loss"])
def test_half_precision_and_saturated_logits_on_cuda(name, engine, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.where(torch.rand(512, 80, generator=g) < 0.5, 1e4, -1e4)
    x[::2] = torch.randn(256, 80, generator=g) * 8
    family = FORMS[name][0]
    target = make_target(family, "index", x, g).clamp(min=0)
    want = loss_call(name, "index", reduction="none", backend="reference")(x.double(), target)
    xc = x.to(CUDA, dtype).requires_grad_()
    got = loss_call(name, "index", reduction="none", backend=engine)(xc, target.to(CUDA))
    (grad,) = torch.autograd.grad(got.float().sum(), xc)
    assert got.dtype == dtype and torch.isfinite(got).all() and torch.isfinite(grad).all()
    # half-precision inputs: compare with float64 on the same rounded inputs
    want = loss_call(name, "index", reduction="none", backend="reference")(xc.detach().double().cpu(), target)
    torch.testing.assert_close(got.double().cpu(), want, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss", "poly1_cross_entropy", "sigmoid_focal_loss"])
def test_a_compiled_model_with_the_loss_in_it_matches_eager(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 10)).to(CUDA)
    loss_fn = pf.get_loss_function(name)
    x, t = torch.randn(256, 32, device=CUDA), torch.randint(0, 10, (256,), device=CUDA)

    def step(inputs, labels):
        return loss_fn(model(inputs), labels)

    compiled = torch.compile(step, fullgraph=True)
    eager = step(x, t)
    torch.testing.assert_close(compiled(x, t), eager, rtol=1e-5, atol=1e-6)


def test_auto_takes_the_triton_row_kernels_at_large_sizes():
    x = torch.randn(1024, 1000, device=CUDA, requires_grad=True)  # above the eager crossover
    t = torch.randint(0, 1000, (1024,), device=CUDA)
    loss = pf.focal_loss(x, t)
    assert "SavedGradient" in type(loss.grad_fn).__name__
    want = pf.focal_loss(x.detach().double().cpu().requires_grad_(), t.cpu(), backend="reference")
    torch.testing.assert_close(loss.double().cpu(), want)
    assert F.cross_entropy(x, t).isfinite()
