"""Which engine runs a loss: the readable reference (autograd through the math), an eager one
with a written-out gradient, or a compiled (fused) one.

``"auto"`` (default) picks, when the call is not already inside ``torch.compile`` (whose own
fusion then applies to the reference math) or a ``torch.func`` transform (which differentiates the
reference math: the other engines' saved-gradient Function cannot serve its wrapped tensors):

* for a loss with an eager engine (class-index targets: the softmax family, and the sigmoid
  family's labels without scores), that engine below its family's ``EAGER_MAX_ELEMENTS`` logits,
  the fused one above: a measured crossover (``benchmarks/crossover.py``). Plain cross-entropy's
  eager engine is ``F.cross_entropy`` itself;
* for the others, the fused engine when the logits have at least ``FUSED_MIN_ELEMENTS`` elements
  (below that the first call's compilation costs more than it can save), the reference otherwise.

Both hold for the values alone too (evaluation, ``torch.no_grad``): the fused kernel computes the
gradient and drops it, and that still costs less than the other engines' passes at those sizes.

``"reference"`` always runs the reference; ``"eager"`` the eager engine (the reference for a
loss without one); ``"fused"`` forces the compiled engine; ``"triton"`` forces it with the
hand-written Triton row kernels for class-index softmax losses in fp32, fp16 or bf16 (fp64
takes the compiled engine; the default on CUDA when Triton is installed; on CPU it needs
``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from . import _compat
from ._errors import InputValueError

BACKENDS = ("auto", "reference", "eager", "fused", "triton")
FUSED_MIN_ELEMENTS = 1 << 16
#: per family, below this "auto" runs its eager engine where a loss has one: where the fused engine
#: overtakes it on one thread (benchmarks/crossover.py): the class-index softmax losses between 2^18
#: and 2^19 logits; plain cross-entropy on (N, C) rows, whose eager engine is torch's own kernel, above
#: 2^21 (1.2-1.6x F.cross_entropy's time at 4096 x 256, 0.41-0.91x at 4096 x 1000, one thread and two);
#: the sigmoid family's before 2^14 already, so there the eager engine only takes the reference engine's
#: place below FUSED_MIN_ELEMENTS (the first call's compilation)
EAGER_MAX_ELEMENTS = {"softmax": 1 << 18, "cross_entropy": 1 << 21, "sigmoid": FUSED_MIN_ELEMENTS}
_default = "auto"


def check_backend(name) -> str:
    if name not in BACKENDS:
        raise InputValueError(f"`backend` must be one of {BACKENDS}; got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Set the process-wide default backend (one of :data:`BACKENDS`)."""
    global _default
    _default = check_backend(name)


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


def engine_for(backend: str | None, logits: Tensor, others=(), eager: str | None = None) -> str:
    """``"reference"``, ``"eager"``, ``"fused"`` or ``"triton"`` for this call; ``eager`` names the
    family whose eager engine the caller has, if it has one (otherwise ``"eager"`` means the
    reference, also uncompiled).

    The fused engine differentiates the logits only: when another input (a soft target, a
    weight) needs a gradient, ``"auto"`` takes the reference engine and a forced fused engine
    is an error rather than a silently missing gradient.
    """
    name = check_backend(backend if backend is not None else _default)
    if name == "reference" or torch.compiler.is_compiling() or _compat.in_functorch_transform():
        return "reference"
    other_grad = requires_grad(others)
    small = logits.numel() < (EAGER_MAX_ELEMENTS[eager] if eager else FUSED_MIN_ELEMENTS)
    if name == "eager" or (name == "auto" and not other_grad and small):
        return "eager" if eager and not other_grad else "reference"
    if name != "auto":
        if other_grad:
            raise InputValueError(f"backend={name!r} differentiates `logits` only, but another input requires a "
                                  "gradient; use backend='reference' (or 'auto')")
        return name
    from . import _fused, _triton  # noqa: PLC0415 (the fused engine loads torch.compile lazily)

    if other_grad or not _fused.available():
        return "eager" if eager and not other_grad else "reference"
    # also for the values alone: the fused kernel's value and discarded gradient cost less than the
    # eager values-only pass (focal 1024 x 1000: 0.78 against 1.35 ms) or the reference's dozen passes
    return "triton" if logits.is_cuda and _triton.available() else "fused"


def requires_grad(values) -> bool:
    """Whether any tensor among ``values`` (nested in tuples, lists and dicts) requires a gradient."""
    for value in values:
        if value is None:  # most optional inputs: one compare, not three isinstance checks
            continue
        if isinstance(value, Tensor):
            if value.requires_grad:
                return True
        elif isinstance(value, (tuple, list)) and requires_grad(value):
            return True
        elif isinstance(value, dict) and requires_grad(value.values()):
            return True
    return False

