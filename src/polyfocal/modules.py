"""``nn.Module`` forms of the functional losses: same keyword arguments, ``forward`` delegates.

Tensor arguments (``weight``, ``alpha``, ``pos_weight``) become buffers, so they follow
``.to(device)`` and live in ``state_dict``. The Modules that hold state are their family's own:
GHM's in :mod:`polyfocal.ghm`, AdaFocal's in :mod:`polyfocal.adafocal`.
"""

from __future__ import annotations

import sys
from typing import Callable

from torch import nn

from . import (adafocal, asymmetric, gfl, ghm, gradient_ratio, longtail, region, region_focal,  # noqa: F401 (declarations)
               sigmoid, softmax)
from ._declare import declarations
from ._loss_module import _EXAMPLES, PER_CLASS, LossModule  # noqa: F401 (LossModule is public here)


def _module(name: str, function: Callable, example: Callable | None) -> type[LossModule]:
    """A Module class for ``function``; ``example(classes)`` makes the logits and target of the
    construction-time check (:meth:`LossModule._probe`)."""
    doc = (f"Module form of :func:`polyfocal.{function.__name__}`: "
           f"``{name}(**kwargs)(logits, target) == {function.__name__}(logits, target, **kwargs)``.")
    return type(name, (LossModule,), {"function": staticmethod(function), "example": staticmethod(example),
                                      "__doc__": doc, "__module__": __name__})


def _twin(declared) -> type[nn.Module]:
    """The declared loss's Module: the family module's own class of that name (GHM's, which hold
    state), else one made here."""
    own = getattr(sys.modules[declared.function.__module__], declared.module, None)
    if isinstance(own, type):
        return own
    return _module(declared.module, declared.function, _EXAMPLES.get(declared.family))


#: every declared loss's Module class, by class name
MODULES: dict[str, type[nn.Module]] = {d.module: _twin(d) for d in declarations()}
_MADE = {name: cls for name, cls in MODULES.items() if cls.__module__ == __name__}
globals().update(_MADE)

__all__ = ["LossModule", *_MADE]
