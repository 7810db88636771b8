"""The Triton row kernels, run on CPU by Triton's interpreter (``TRITON_INTERPRET=1``, set in conftest).

Skipped where Triton is not installed (it is optional); CI installs it.
"""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import polyfocal as pf
import reference as ref
from polyfocal import _fused, _rows, _triton
from polyfocal._backend import use_backend

pytestmark = pytest.mark.skipif(not _triton.available(), reason="triton is not installed")


def inputs(shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * scale
    target = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]), generator=g)
    target.view(-1)[::3] = -100
    return logits, target


@pytest.mark.parametrize("shape", [(6, 5), (3, 7, 4), (4, 300)])  # C above one block: 3 chunks of 128
def test_row_statistics_match_the_compiled_engine(shape, monkeypatch):
    monkeypatch.setattr(_triton, "_block", lambda c: 128)
    x, t = inputs(shape)
    t = t.clamp(min=0)
    x3, t3 = x.reshape(_fused.shape_3d(x.shape)), _fused.rows_3d(t, x.shape)
    got = _triton.row_statistics(x3, t3, torch.float32)
    want = _rows._row_statistics(x3, t3, torch.float32)[:3]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", sorted(ref.SOFTMAX))
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_softmax_losses_match_the_reference(name, reduction):
    phi, params = ref.SOFTMAX[name]
    x, t = inputs((5, 4, 3))
    x64 = x.double().requires_grad_()
    want = ref.softmax_loss(phi, x64, t, reduction=reduction, **params)
    x32 = x.clone().requires_grad_()
    with use_backend("triton"):
        got = pf.get_loss_function(name)(x32, t, reduction=reduction, **params)
    assert "SavedGradient" in type(got.grad_fn).__name__
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    (g_got,) = torch.autograd.grad(got.sum(), x32)
    (g_want,) = torch.autograd.grad(want.sum(), x64)
    torch.testing.assert_close(g_got.double(), g_want, rtol=1e-5, atol=1e-6)


class _Recorder:
    """Wraps a Triton kernel: records the tensors each launch is given, then launches it."""

    def __init__(self, kernel):
        self.kernel, self.tensors = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.tensors.append([a for a in args if isinstance(a, torch.Tensor)])
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
def test_dense_logits_are_read_in_place_and_one_gradient_buffer_is_saved(layout, monkeypatch):
    """(N, C, H, W) logits in any layout: the kernels read them with their strides (no copy into rows),
    and what backward keeps is one logits-sized gradient."""
    x, t = inputs((4, 6, 5, 3))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x, t = torch.randn(4, 6, 5, 6)[..., ::2], t
    x.requires_grad_()
    recorders = {name: _Recorder(getattr(_triton, name)) for name in ("_row_statistics_kernel", "_row_gradient_kernel")}
    for name, recorder in recorders.items():
        monkeypatch.setattr(_triton, name, recorder)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: saved.append(s.numel() * s.element_size()) or s, lambda s: s):
        with use_backend("triton"):
            loss = pf.focal_loss(x, t)
    assert all(launch[0].data_ptr() == x.data_ptr() for r in recorders.values() for launch in r.tensors)
    assert len(recorders["_row_gradient_kernel"].tensors) == 1
    assert saved == [x.numel() * x.element_size()]
    (got,) = torch.autograd.grad(loss, x)
    x64 = x.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(ref.softmax_loss(ref.focal, x64, t, gamma=2.0), x64)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_and_saturated_logits(dtype):
    x = torch.where(torch.rand(4, 6) < 0.5, 1e4, -1e4).to(dtype) if dtype == torch.bfloat16 else \
        (torch.randn(4, 6) * 8).to(dtype)
    t = torch.randint(0, 6, (4,))
    results = {}
    for engine in ("reference", "triton"):
        xr = x.clone().requires_grad_()
        with use_backend(engine):
            loss = pf.focal_loss(xr, t, gamma=0.5)
        loss.backward()
        assert loss.dtype == dtype and torch.isfinite(loss) and torch.isfinite(xr.grad).all()
        results[engine] = (loss, xr.grad)
    torch.testing.assert_close(results["triton"], results["reference"])


def test_other_paths_fall_through_to_the_compiled_engine():
    x, t = inputs((5, 4))
    probs = torch.softmax(torch.randn(5, 4), 1)
    with use_backend("triton"):
        loss = pf.focal_loss(x.requires_grad_(), probs)
    with use_backend("reference"):
        torch.testing.assert_close(loss, pf.focal_loss(x, probs))



def test_float64_takes_the_compiled_row_engine(monkeypatch):
    """The kernels compute in fp32; on CUDA "auto" picks them for every class-index softmax loss,
    so an fp64 one must still run (in fp64, by the compiled passes), not raise."""
    def fp32_kernels(*args):
        pytest.fail("the fp32 kernels ran")

    monkeypatch.setattr(_triton, "row_statistics", fp32_kernels)
    x, t = inputs((5, 4, 3))
    x64 = x.double().requires_grad_()
    with use_backend("triton"):
        got = pf.focal_loss(x64, t, gamma=1.5, reduction="none")
    assert got.dtype == torch.float64 and "SavedGradient" in type(got.grad_fn).__name__
    want = ref.softmax_loss(ref.SOFTMAX["focal_loss"][0], x64, t, reduction="none", gamma=1.5)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(*(torch.autograd.grad(v.sum(), x64)[0] for v in (got, want)))


@pytest.mark.slow
def test_inductor_generated_triton_passes_the_fused_engine_tests():
    """test_fused's tests marked ``inductor_triton`` (on a GPU, the losses that run as the Triton inductor
    generates) in a process where inductor writes Triton for CPU tensors, run by the interpreter
    (tests/inductor_triton.py): every kernel they compile is the Triton a GPU would run."""
    pytest.importorskip("triton.runtime.interpreter", reason="Triton's interpreter, which runs the kernels")
    for module, name in [("triton.runtime.interpreter", "GridExecutor"), ("triton.runtime.interpreter", "TensorHandle"),
                         ("torch.utils._triton", "triton_backend"), ("torch._inductor.runtime.triton_helpers", "libdevice")]:
        if not hasattr(importlib.import_module(module), name):  # the internals the shim replaces
            pytest.skip(f"this torch/Triton has no {module}.{name} for tests/inductor_triton.py")
    env = dict(os.environ, POLYFOCAL_INDUCTOR_TRITON="1", TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "ignore",
                             "-m", "inductor_triton", str(Path(__file__).with_name("test_fused.py"))],
                            env=env, capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    passed = int(re.search(r"(\d+) passed", output).group(1))
    launches = int(re.search(r"inductor Triton kernel launches: (\d+)", output).group(1))
    assert passed >= 90 and launches >= 2 * passed, output[-2000:]


@pytest.mark.parametrize("name, kwargs", [("focal_loss", {"gamma": 1.5}), ("poly1_cross_entropy", {"epsilon": 2.0})])
def test_create_graph_through_the_row_kernels_equals_the_reference(name, kwargs):
    """fp32 on the Triton row kernels: the gradient taken with create_graph and a Hessian-vector
    product through it are the reference engine's (second derivatives are never a saved constant)."""
    x, t = inputs((6, 300, 2))
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    results = []
    for backend in ("reference", "triton"):
        xin = x.clone().requires_grad_()
        loss = pf.get_loss_function(name)(xin, t, backend=backend, **kwargs)
        (grad,) = torch.autograd.grad(loss, xin, create_graph=True)
        results.append((grad.detach(), torch.autograd.grad((grad * v).sum(), xin)[0]))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])
    assert results[0][1].abs().sum() > 0
