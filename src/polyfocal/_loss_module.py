"""The base of the loss Modules (:class:`LossModule`), apart from :mod:`polyfocal.modules`, which
builds one per declared loss: a family module with a stateful Module of its own (AdaFocal's) subclasses
it without importing the families' list.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import _checks
from ._backend import check_backend, use_backend
from ._errors import InputTypeError, InputValueError


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


class PerClassStatistics(StatisticsModule):
    """A loss Module with per-class statistics (the buffers named in ``per_class``, float64, of ``num_classes``
    entries; None sizes them from the first batch's logits), the loss's options in ``options`` (``weight``, a
    tensor, as a buffer), and all-reduced batch statistics where ``distributed`` says (None: when a process
    group of 2+ ranks exists)."""

    per_class: tuple[str, ...] = ()

    def __init__(self, num_classes: int | None, distributed: bool | None, options: dict):
        super().__init__()
        self.num_classes = None if num_classes is None else _checks.integer(num_classes, "num_classes", low=1)
        self.distributed = distributed
        for name in self.statistics:
            shape = (0 if num_classes is None else self.num_classes,) if name in self.per_class else ()
            self.register_buffer(name, torch.zeros(shape, dtype=torch.float64))
        weight = options.pop("weight", None)
        self.register_buffer("weight", weight if isinstance(weight, Tensor) else None)
        _checks.check_reduction(options.get("reduction", "mean"), None)
        _checks.integer(options.get("ignore_index", -100), "ignore_index", low=-(2**63))
        self.options = options

    @property
    def _classes(self) -> int:
        return getattr(self, self.per_class[0]).numel()

    def _sized(self, logits: Tensor) -> None:
        """Size the statistics from the first logits (``num_classes`` None); other logits' C is an error."""
        classes = logits.shape[1] if logits.ndim >= 2 else None
        if self._classes == 0 and classes is not None:
            for name in self.per_class:
                setattr(self, name, getattr(self, name).new_zeros(classes))
        if classes != self._classes:
            raise InputValueError(f"{type(self).__name__} holds statistics of {self._classes} classes; got logits "
                                  f"of shape {tuple(logits.shape)}")

    def _all_ranks(self, sums: Tensor) -> Tensor:
        """A batch's statistics, summed over the ranks where ``distributed`` says."""
        if _checks.is_distributed(self.distributed):
            dist.all_reduce(sums)
        return sums

    def _weight(self, weight):
        return self.weight if weight is None else weight

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Statistics of another number of classes are a ValueError, before any buffer changes; a Module
        sized from its first batch takes the loaded size."""
        sizes = {state_dict[prefix + n].numel() for n in self.per_class if prefix + n in state_dict}
        wanted = self.num_classes if self.num_classes is not None else self._classes or None
        if sizes and (len(sizes) > 1 or (wanted is not None and sizes != {wanted})):
            raise InputValueError(f"`state_dict` holds {type(self).__name__} statistics of {sorted(sizes)} classes; "
                                  f"this Module has num_classes={wanted}")
        if sizes and self._classes == 0:
            self._sized(torch.empty(1, sizes.pop()))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {"num_classes": self.num_classes, **self.options}.items())


#: options that hold one value per class
PER_CLASS = ("weight", "alpha", "pos_weight", "prior", "class_counts")


def _softmax_example(classes: int):
    return torch.zeros(2, classes), torch.tensor([0, classes - 1])


def _sigmoid_example(classes: int):
    return torch.zeros(2, classes), torch.zeros(2, classes)


def _distribution_example(classes: int):
    return torch.zeros(2, max(classes, 2)), torch.tensor([0.5, 1.0])


def _region_example(classes: int):
    return torch.zeros(2, max(classes, 2), 2), torch.tensor([[0, 1], [1, 0]])


#: each family's construction-time example
_EXAMPLES = {"softmax": _softmax_example, "sigmoid": _sigmoid_example, "distribution": _distribution_example,
             "region": _region_example}
