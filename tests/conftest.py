import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests import `reference`
os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on CPU in the tests (read at import)
os.environ.setdefault("POLYFOCAL_STRICT", "1")  # a fused-engine failure is a test failure, not a fallback
os.environ.setdefault("POLYFOCAL_COMPILE", "wait")  # fused calls compile in the call (tests of the background: test_cold_start)

import polyfocal._backend as backend  # noqa: E402

_everywhere = os.environ.get("POLYFOCAL_FUSED_EVERYWHERE")
if _everywhere:  # "auto" takes the fused engine at every size; with "triton", as on a GPU (the row kernels)
    import polyfocal._softmax_engine as softmax_engine  # noqa: E402

    if _everywhere not in ("1", "triton", "eager"):
        raise ValueError(f"POLYFOCAL_FUSED_EVERYWHERE must be 1, triton or eager; got {_everywhere!r}")
    # "eager": the eager engine at every size, where a loss has one (the reference elsewhere)
    backend.FUSED_MIN_ELEMENTS = 1 << 62 if _everywhere == "eager" else 0
    backend.EAGER_MAX_ELEMENTS = dict.fromkeys(backend.EAGER_MAX_ELEMENTS, backend.FUSED_MIN_ELEMENTS)
    if _everywhere == "triton":
        def _as_on_a_gpu(requested, logits, others=()):
            name = backend.engine_for(requested, logits, others)
            auto = (requested if requested is not None else backend.get_backend()) == "auto"
            return "triton" if auto and name == "fused" else name

        softmax_engine.engine_for = _as_on_a_gpu

if os.environ.get("POLYFOCAL_INDUCTOR_TRITON") == "1":  # the compiled kernels as inductor's Triton
    import inductor_triton  # noqa: E402

    inductor_triton.install()



import pytest  # noqa: E402

#: tests that take minutes on their own (a subprocess over many compiled kernels): collected first, so that
#: under `-n 2` one worker starts them while the other takes the rest (last, they were the run's tail)
_FIRST = ("test_triton.py::test_inductor_generated_triton_passes_the_fused_engine_tests",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not item.nodeid.endswith(_FIRST))  # stable: the rest keep their order


def pytest_terminal_summary(terminalreporter):
    """How many compiled kernels the compile cache holds (CI gives the run an empty one: the suite's count)."""
    from polyfocal import _compat

    folder = _compat.compile_cache_dir()
    kernels = sum(name.endswith(".so") for _, _, names in os.walk(folder) for name in names)
    terminalreporter.write_line(f"compile cache {folder}: {kernels} compiled kernels (.so)")
    if os.environ.get("POLYFOCAL_INDUCTOR_TRITON") == "1":
        terminalreporter.write_line(f"inductor Triton kernel launches: {inductor_triton.launches}")


@pytest.fixture
def fused_uncompiled(monkeypatch):
    """The fused engine's path (saved gradient, create_graph through the reference closure, fallbacks)
    with its kernels run as plain Python: for tests of the engine's logic over the whole loss matrix,
    where each compiled variant would cost seconds of compilation (tests/test_fused.py compiles them)."""
    from polyfocal import _fused

    monkeypatch.setattr(_fused, "_compiled", {})
    monkeypatch.setattr(_fused, "compile_kernel", lambda kernel: kernel)
