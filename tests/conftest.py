import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests import `reference`
os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on CPU in the tests (read at import)
os.environ.setdefault("POLYFOCAL_STRICT", "1")  # a fused-engine failure is a test failure, not a fallback

import polyfocal._backend as backend  # noqa: E402

if os.environ.get("POLYFOCAL_FUSED_EVERYWHERE") == "1":  # "auto" takes the fused engine at every size
    backend.FUSED_MIN_ELEMENTS = 0

if os.environ.get("POLYFOCAL_INDUCTOR_TRITON") == "1":  # the compiled kernels as inductor's Triton
    import inductor_triton  # noqa: E402

    inductor_triton.install()

    def pytest_terminal_summary(terminalreporter):
        terminalreporter.write_line(f"inductor Triton kernel launches: {inductor_triton.launches}")


@pytest.fixture(params=["reference", "fused"])
def engine(request):
    """Run a test once per engine: the reference autograd path and the compiled fused path."""
    with backend.use_backend(request.param):
        yield request.param
