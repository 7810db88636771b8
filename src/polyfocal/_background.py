"""Compiling a fused kernel's new variant in a background thread, while the calls run uncompiled.

On a machine whose compile cache is empty, a fused kernel's first variant costs 15-25 s (inductor
probes the CPU's vector instructions with a few g++ runs, builds a precompiled header, traces the
kernel and builds it); each later variant a few seconds. A user who tries a loss on one batch would
wait that long. So by default (``POLYFOCAL_COMPILE=background``) the first call of a variant hands
the compilation to one background thread and raises :class:`NotCompiledYet`; the caller computes
that call on its eager engine (the reference where a loss has none), and so does every call of the
variant until the thread has built it (the engine raises ``NotCompiledYet`` for :data:`PENDING`).
``POLYFOCAL_COMPILE=wait`` compiles within the call instead (the tests' setting, and what a
benchmark of compiled code wants); :func:`wait_for_compiles` waits for the thread.

A variant is told apart by :func:`variant`: the kernel, the grad and inference modes, and each
argument's dtype, device, rank, which sizes are 0 or 1, contiguity and ``requires_grad`` (through
tuples, dicts and dataclasses), or its value where it is not a tensor. That is what the compiled
kernel (``dynamic=True``) specialises on, give or take a guard: where dynamo still wants another
variant, that call compiles as before.

The thread takes the call's own arguments (the compilation runs the kernel once, on them) and keeps
them until it has compiled: memory for a few seconds, never a copy.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from typing import Callable

import torch
from torch import Tensor

from . import _compat
from ._errors import InputValueError

MODES = ("background", "wait")
READY, OVER_LIMIT, PENDING = "ready", "over the recompile limit", "compiling"

_lock = threading.Condition()
_done: dict = {}  # variant -> READY, OVER_LIMIT or the exception its compilation raised
_pending: set = set()
_queue: queue.SimpleQueue = queue.SimpleQueue()
_worker: threading.Thread | None = None


def in_background() -> bool:
    """Whether new variants compile in the background (``POLYFOCAL_COMPILE``, read at each call)."""
    mode = os.environ.get("POLYFOCAL_COMPILE", "background")
    if mode not in MODES:
        raise InputValueError(f"the environment variable POLYFOCAL_COMPILE must be one of {MODES}; got {mode!r}")
    return mode == "background"


def variant(kernel: Callable, args: tuple) -> tuple:
    """What tells one compiled variant of ``kernel`` from another (module docstring)."""
    return kernel, torch.is_grad_enabled(), torch.is_inference_mode_enabled(), _signature(args)


def _signature(value):
    if isinstance(value, Tensor):
        return (value.dtype, value.device, tuple(min(size, 2) for size in value.shape), value.is_contiguous(),
                value.requires_grad)
    if isinstance(value, (tuple, list)):
        return (type(value), *map(_signature, value))
    if isinstance(value, dict):
        return tuple((name, _signature(item)) for name, item in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a frozen dataclass of tensors
        return (type(value), *(_signature(getattr(value, field.name)) for field in dataclasses.fields(value)))
    try:
        hash(value)
    except TypeError:
        return type(value), id(value)
    return value


def outcome(compiled: Callable, key: tuple, limit: int, args: tuple):
    """``READY``, ``OVER_LIMIT`` or the exception of the variant ``key`` once compiled; else
    ``PENDING``, having queued its compilation (once)."""
    global _worker
    with _lock:
        if key in _done:
            return _done[key]
        if key not in _pending:
            _pending.add(key)
            _queue.put((key, compiled, limit, args))
            if _worker is None:
                _worker = threading.Thread(target=_work, name="polyfocal-compile", daemon=True)
                _worker.start()
    return PENDING


def _work() -> None:
    while True:
        key, compiled, limit, args = _queue.get()
        _, grad, inference, _ = key
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad), _compat.recompile_limits(limit):
                compiled(*args)
            result = READY
        except _compat.recompile_limit_hit():
            result = OVER_LIMIT
        except Exception as error:  # handed to the caller's thread, which decides (strict, fall back)
            result = error
        del args
        with _lock:
            _done[key] = result
            _pending.discard(key)
            _lock.notify_all()


def wait_for_compiles(timeout: float | None = None) -> bool:
    """Wait until every fused kernel queued for compilation in the background is built (or failed);
    ``False`` if ``timeout`` seconds passed first. Useful before timing compiled code, or at the end
    of a warm-up."""
    with _lock:
        return _lock.wait_for(lambda: not _pending, timeout)
