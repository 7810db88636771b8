"""``nn.Module`` forms of the functional losses: same keyword arguments, ``forward`` delegates.

Tensor arguments (``weight``, ``alpha``, ``pos_weight``) become buffers, so they follow
``.to(device)`` and live in ``state_dict``. The GHM Modules, which hold state, are in
:mod:`polyfocal.ghm`.
"""

from __future__ import annotations

import inspect
from typing import Callable

from torch import Tensor, nn

from . import gfl, sigmoid, softmax
from ._errors import InputTypeError


class LossModule(nn.Module):
    """Base of the stateless loss Modules: ``forward(logits, target)`` calls ``function``."""

    function: Callable

    def __init__(self, **kwargs):
        super().__init__()
        parameters = inspect.signature(self.function).parameters
        allowed = sorted(n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY)
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise InputTypeError(f"{type(self).__name__} got unexpected arguments {unknown}; it takes {allowed}")
        missing = sorted(n for n in allowed if parameters[n].default is inspect.Parameter.empty and n not in kwargs)
        if missing:
            raise InputTypeError(f"{type(self).__name__} needs the arguments {missing}")
        self._options = {}
        self._tensor_names = []
        for name, value in kwargs.items():
            if isinstance(value, Tensor):
                self.register_buffer(name, value)
                self._tensor_names.append(name)
            else:
                self._options[name] = value

    def options(self) -> dict:
        """The keyword arguments passed to the function, tensors on the Module's device."""
        return {**self._options, **{name: getattr(self, name) for name in self._tensor_names}}

    def forward(self, logits: Tensor, target, weight: Tensor | None = None, normalizer=None) -> Tensor:
        """The loss of this call; a ``weight`` or ``normalizer`` given here replaces the Module's for
        this call only (per-batch weights, RetinaNet's number of positive anchors)."""
        options = self.options()
        for name, value in (("weight", weight), ("normalizer", normalizer)):
            if value is not None:
                options[name] = value
        return self.function(logits, target, **options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options.items())


def _module(name: str, function: Callable) -> type[LossModule]:
    doc = (f"Module form of :func:`polyfocal.{function.__name__}`: "
           f"``{name}(**kwargs)(logits, target) == {function.__name__}(logits, target, **kwargs)``.")
    return type(name, (LossModule,), {"function": staticmethod(function), "__doc__": doc,
                                      "__module__": __name__})


CrossEntropyLoss = _module("CrossEntropyLoss", softmax.cross_entropy)
FocalLoss = _module("FocalLoss", softmax.focal_loss)
Poly1CrossEntropyLoss = _module("Poly1CrossEntropyLoss", softmax.poly1_cross_entropy)
PolyNCrossEntropyLoss = _module("PolyNCrossEntropyLoss", softmax.polyn_cross_entropy)
PolyLoss = _module("PolyLoss", softmax.poly_loss)
TruncatedCrossEntropyLoss = _module("TruncatedCrossEntropyLoss", softmax.truncated_cross_entropy)
SoftTruncatedLoss = _module("SoftTruncatedLoss", softmax.soft_truncated_loss)
HardTruncatedLoss = _module("HardTruncatedLoss", softmax.hard_truncated_loss)
BinaryCrossEntropyLoss = _module("BinaryCrossEntropyLoss", sigmoid.binary_cross_entropy)
SigmoidFocalLoss = _module("SigmoidFocalLoss", sigmoid.sigmoid_focal_loss)
Poly1FocalLoss = _module("Poly1FocalLoss", sigmoid.poly1_focal_loss)
Poly1BinaryCrossEntropyLoss = _module("Poly1BinaryCrossEntropyLoss", sigmoid.poly1_binary_cross_entropy)
SigmoidSoftTruncatedLoss = _module("SigmoidSoftTruncatedLoss", sigmoid.sigmoid_soft_truncated_loss)
SigmoidHardTruncatedLoss = _module("SigmoidHardTruncatedLoss", sigmoid.sigmoid_hard_truncated_loss)
QualityFocalLoss = _module("QualityFocalLoss", gfl.quality_focal_loss)
VarifocalLoss = _module("VarifocalLoss", gfl.varifocal_loss)
DistributionFocalLoss = _module("DistributionFocalLoss", gfl.distribution_focal_loss)
GeneralizedFocalLoss = _module("GeneralizedFocalLoss", gfl.generalized_focal_loss)

__all__ = [
    "LossModule", "CrossEntropyLoss", "FocalLoss", "Poly1CrossEntropyLoss", "PolyNCrossEntropyLoss",
    "PolyLoss", "TruncatedCrossEntropyLoss", "SoftTruncatedLoss", "HardTruncatedLoss",
    "BinaryCrossEntropyLoss", "SigmoidFocalLoss", "Poly1FocalLoss", "Poly1BinaryCrossEntropyLoss",
    "SigmoidSoftTruncatedLoss", "SigmoidHardTruncatedLoss", "QualityFocalLoss", "VarifocalLoss",
    "DistributionFocalLoss", "GeneralizedFocalLoss",
]
