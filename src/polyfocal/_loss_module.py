"""The base of the loss Modules (:class:`LossModule`), apart from :mod:`polyfocal.modules`, which
builds one per declared loss: a family module with a stateful Module of its own (AdaFocal's) subclasses
it without importing the families' list.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import Tensor, nn

from ._backend import check_backend, use_backend
from ._errors import InputTypeError


class LossModule(nn.Module):
    """Base of the stateless loss Modules: ``forward(logits, target)`` calls ``function``."""

    function: Callable
    example: Callable | None = None  # classes -> (logits, target) of the construction-time check

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
        self._probe()

    def _probe(self) -> None:
        """Call the loss once on a tiny example of its kind, with the number-valued options, so that
        a value it rejects (``gamma=-1``, ``reduction="avg"``) is an error here, not at the first
        training step. Tensor options are left out: they must fit the caller's logits, not the
        example's. The example has as many classes as a per-class tuple option (``alpha=(0.2, 0.8)``)."""
        if self.example is None:
            return
        per_class = [len(v) for k, v in self._options.items() if k in PER_CLASS and isinstance(v, (tuple, list))]
        logits, target = self.example(per_class[0] if per_class else 3)
        # the engine is named, not run: a backend="triton" Module is for CUDA logits, not these
        options = {k: v for k, v in self._options.items() if k != "backend"}
        if self._options.get("backend") is not None:
            check_backend(self._options["backend"])
        with use_backend("reference"):
            self.function(logits, target, **options)

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


class StatisticsModule(nn.Module):
    """Base of the Modules that accumulate statistics across batches (GHM's histogram, the gradient ratios
    of EQLv2 and EFL): the buffers named in ``statistics`` stay float64 whatever the Module is cast to
    (fp16 counts overflow at 65504, and low-precision sums lose small updates)."""

    statistics: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in self.statistics:
            setattr(self, name, getattr(self, name).to(torch.float64))
        return self


#: options that hold one value per class
PER_CLASS = ("weight", "alpha", "pos_weight", "prior", "class_counts")


def _softmax_example(classes: int):
    return torch.zeros(2, classes), torch.tensor([0, classes - 1])


def _sigmoid_example(classes: int):
    return torch.zeros(2, classes), torch.zeros(2, classes)


def _distribution_example(classes: int):
    return torch.zeros(2, max(classes, 2)), torch.tensor([0.5, 1.0])


#: each family's construction-time example
_EXAMPLES = {"softmax": _softmax_example, "sigmoid": _sigmoid_example, "distribution": _distribution_example}
