"""A dispatch-mode recorder the memory tests share (not collected by pytest)."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LiveLargeTensors(TorchDispatchMode):
    """The most storages of ``size`` elements or more alive at once (``most``), and the most bytes in them
    (``most_bytes``), among the storages the call's ops made."""

    def __init__(self, size: int):
        super().__init__()
        self.size, self.refs, self.most, self.most_bytes = size, [], 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.refs.extend(weakref.ref(t) for t in (out if isinstance(out, (tuple, list)) else (out,))
                         if isinstance(t, torch.Tensor) and t.numel() >= self.size)
        alive = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (r() for r in self.refs)
                 if t is not None}
        self.most, self.most_bytes = max(self.most, len(alive)), max(self.most_bytes, sum(alive.values()))
        return out
