"""Every private API of PyTorch and of the standard library that polyfocal uses, behind one door.

Each is named in :data:`PRIVATE`, so that :func:`missing` (and ``tests/test_compat.py``) says
loudly which one a new release removed, instead of a fused kernel or an error message failing
somewhere far from the cause.

* dynamo's recompile limits and the exceptions ``fullgraph=True`` raises at them
  (:func:`recompile_limits`, :func:`recompile_limit_hit`), imported only where something compiles;
* inductor's compile cache folder (:func:`compile_cache_dir`);
* autograd's stack of default saved-tensor hooks (:func:`saved_tensor_hooks_suspended`);
* functorch's stack of transforms (:func:`in_functorch_transform`);
* argparse's list of actions and its sub-parsers action (:func:`subparsers`).

Optuna's storage is no longer reached through ``study._storage``: the sweep keeps the storage
object it made.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os

import torch

#: (module, attribute) of every private name used, for :func:`missing`
PRIVATE = [
    ("torch._dynamo.config", "recompile_limit"),
    ("torch._dynamo.config", "accumulated_recompile_limit"),
    ("torch._C._autograd", "_top_saved_tensors_default_hooks"),
    ("torch._C._autograd", "_pop_saved_tensors_default_hooks"),
    ("torch._C._autograd", "_push_saved_tensors_default_hooks"),
    ("torch._inductor.runtime.cache_dir_utils", "default_cache_dir"),
    ("torch._C._functorch", "peek_interpreter_stack"),
    ("argparse", "_SubParsersAction"),
]


def recompile_limit_hit() -> tuple[type[Exception], ...]:
    """What ``fullgraph=True`` raises at a recompile limit (``FailOnCacheLimitHit`` before torch 2.6).
    Asked for only once something was compiled: importing dynamo costs a second and a half, which
    ``import polyfocal`` does not pay."""
    exc = importlib.import_module("torch._dynamo.exc")
    return tuple(getattr(exc, name) for name in ("FailOnRecompileLimitHit", "FailOnCacheLimitHit") if hasattr(exc, name))


def compile_cache_dir() -> str:
    """The folder inductor writes its kernels to: ``TORCHINDUCTOR_CACHE_DIR``, or its default (a
    ``torchinductor_<user>`` folder in the temporary directory); asked for without making it."""
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if folder is None:
        folder = importlib.import_module("torch._inductor.runtime.cache_dir_utils").default_cache_dir()
    return os.path.abspath(folder)


def missing() -> list[str]:
    """The private names of :data:`PRIVATE` that this PyTorch or Python does not have."""
    absent = []
    for module, name in PRIVATE:
        try:
            if not hasattr(importlib.import_module(module), name):
                absent.append(f"{module}.{name}")
        except ImportError:
            absent.append(f"{module}.{name}")
    if not recompile_limit_hit():
        absent.append("torch._dynamo.exc.FailOnRecompileLimitHit")
    return absent


class recompile_limits:  # noqa: N801 (used as a context, like the function it replaced)
    """A context in which one compiled function may have ``limit`` variants (16 x that in all).

    The two settings are set and put back directly: ``config.patch`` costs 16 us per call on this
    machine, which every fused call paid; this costs 8. Dynamo's settings are per thread, so the
    background compilation (:mod:`polyfocal._background`) enters its own."""

    def __init__(self, limit: int):
        self.limits = (limit, 16 * limit)

    def __enter__(self):
        config = torch._dynamo.config
        self.previous = (config.recompile_limit, config.accumulated_recompile_limit)
        config.recompile_limit, config.accumulated_recompile_limit = self.limits
        return self

    def __exit__(self, *exc):
        config = torch._dynamo.config
        config.recompile_limit, config.accumulated_recompile_limit = self.previous
        return False


@contextlib.contextmanager
def saved_tensor_hooks_suspended():
    """Lift the caller's saved-tensor hooks (``save_on_cpu``, activation offloading) for a kernel call,
    and put them back after (``torch.func`` refuses to trace under them)."""
    autograd = torch._C._autograd
    lifted = []
    while (hooks := autograd._top_saved_tensors_default_hooks(False)) is not None:
        autograd._pop_saved_tensors_default_hooks()
        lifted.append(hooks)
    try:
        yield
    finally:
        for pack, unpack in reversed(lifted):
            autograd._push_saved_tensors_default_hooks(pack, unpack)


def in_functorch_transform() -> bool:
    """Whether the call runs inside a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ...), whose
    wrapped tensors the engines' saved-gradient Function cannot serve (0.04 us a call)."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def subparsers(parser: argparse.ArgumentParser) -> list:
    """The parser's sub-parser actions (argparse has no public way to list them)."""
    return [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
