"""Which engine runs a loss: the readable reference (autograd through the math) or a fused one.

``"auto"`` (default) picks the fused engine when a gradient is needed, the logits have at
least ``FUSED_MIN_ELEMENTS`` elements (below that the first call's compilation costs more than
it can save) and the call is not already inside ``torch.compile`` (whose own fusion then
applies to the reference math);
``"reference"`` always runs the reference; ``"fused"`` forces the compiled engine.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

BACKENDS = ("auto", "reference", "fused")
FUSED_MIN_ELEMENTS = 1 << 16
_default = "auto"


def _check(name) -> str:
    if name not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}; got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Set the process-wide default backend (``"auto"``, ``"reference"`` or ``"fused"``)."""
    global _default
    _default = _check(name)


def get_backend() -> str:
    return _default


@contextlib.contextmanager
def use_backend(name: str):
    """Run the enclosed losses with ``name`` as the default backend."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def wants_fused(backend: str | None, logits: Tensor) -> bool:
    name = _check(backend if backend is not None else _default)
    if name == "reference" or torch.compiler.is_compiling():
        return False
    if name == "fused":
        return True
    from . import _fused  # noqa: PLC0415 (the fused engine loads torch.compile lazily)

    needs_grad = logits.requires_grad and torch.is_grad_enabled()
    return needs_grad and logits.numel() >= FUSED_MIN_ELEMENTS and _fused.available()
