"""Run the fused engine's compiled kernels as the Triton that inductor generates for a GPU, on CPU.

On CUDA, ``torch.compile`` turns the sigmoid family's kernels, GHM's two passes and the soft-row
engine into Triton; on CPU it writes C++. :func:`install` makes inductor write Triton for CPU
tensors as well, run by Triton's interpreter (``TRITON_INTERPRET=1``), so the tests check those
kernels here. Two things stand in for a GPU, in the test process only:

* a CUDA compile target for inductor's code generation (the kernels are never compiled for it:
  the interpreter runs their Python source);
* ``libdevice``'s math functions (``exp``, ``log1p``, ``pow``, ...), which the interpreter does not
  implement, computed by NumPy in the tensor's own dtype.

Set ``POLYFOCAL_INDUCTOR_TRITON=1`` and conftest calls :func:`install` before anything compiles,
and prints how many kernels the interpreter ran (:data:`launches`) at the end of the session.
"""

from __future__ import annotations

import functools
import types

import numpy as np

_LIBDEVICE = {
    "exp": np.exp, "exp2": np.exp2, "expm1": np.expm1, "log": np.log, "log1p": np.log1p, "log2": np.log2,
    "pow": np.power, "sqrt": np.sqrt, "rsqrt": lambda x: 1 / np.sqrt(x), "abs": np.abs, "tanh": np.tanh,
    "floor": np.floor, "ceil": np.ceil, "isinf": np.isinf, "isnan": np.isnan, "signbit": np.signbit,
}
launches = 0


def _numpy_function(fn):
    import triton.language as tl  # noqa: PLC0415
    from triton.runtime.interpreter import TensorHandle  # noqa: PLC0415

    def apply(*args):
        first = next(a for a in args if isinstance(a, tl.tensor))
        data = fn(*(a.handle.data if isinstance(a, tl.tensor) else a for a in args))
        if data.dtype != np.bool_:
            data = data.astype(first.handle.data.dtype, copy=False)
        dtype = tl.int1 if data.dtype == np.bool_ else first.dtype.scalar
        shape = list(data.shape)
        return tl.tensor(TensorHandle(data, dtype), tl.block_type(dtype, shape) if shape else dtype)

    return apply


def _counted(call):
    def run(*args, **kwargs):
        global launches
        launches += 1
        return call(*args, **kwargs)

    return run


def install() -> None:
    import torch._inductor.config as inductor_config  # noqa: PLC0415
    import torch._inductor.runtime.triton_helpers as triton_helpers  # noqa: PLC0415
    import torch.utils._triton as torch_triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler.compiler import make_backend  # noqa: PLC0415
    from triton.runtime.interpreter import GridExecutor  # noqa: PLC0415

    inductor_config.cpu_backend = "triton"
    torch_triton.triton_backend = functools.cache(lambda: make_backend(GPUTarget("cuda", 80, 32)))
    triton_helpers.libdevice = types.SimpleNamespace(
        **{name: _numpy_function(fn) for name, fn in _LIBDEVICE.items()})
    GridExecutor.__call__ = _counted(GridExecutor.__call__)
