"""Each loss declared once: ``@declare(...)`` on its public function records what the rest of the
library needs to know about it, and everything that lists losses reads from :data:`DECLARED`:

* the family's ``__all__`` and the package's (:func:`public_names`);
* its Module twin (:mod:`polyfocal.modules` builds one per declaration, or takes the family
  module's own class of that name, as GHM's stateful Modules);
* the registry and its short names (:mod:`polyfocal.registry`);
* the command line's loss options (:data:`HYPERPARAMETERS` of the declared losses);
* the analysis lens: shape parameters, curves, and the series in ``(1 - p_t)`` of the losses that
  have one (``series``, the same function the loss itself calls);
* the experiments' family lookup, and the tests' lists of losses.

Adding a loss is its math in ``_math``, one declared function, one reference in the tests and a
README row.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import Callable

from ._arguments import comma_numbers, number_or_none
from ._docs import fill

FAMILIES = ("softmax", "sigmoid", "distribution", "regression", "region")


@dataclass(frozen=True)
class Hyperparameter:
    """A keyword that shapes a loss (not a reduction, weight or mask), as the command line offers it.

    ``flag`` is its option (``--gamma``); ``parse`` reads the option's text; ``cli_default`` is
    used where a loss requires it and the command line did not give it."""

    name: str
    help: str
    parse: Callable = float
    flag: str | None = None
    choices: tuple | None = None
    cli_default: object = None

    @property
    def option(self) -> str:
        return self.flag or f"--{self.name}"


#: The hyperparameters shared by several losses: one meaning and one command-line option each.
HYPERPARAMETERS: dict[str, Hyperparameter] = {h.name: h for h in (
    Hyperparameter("gamma", "focusing parameter (focal, poly, sigmoid_focal, ...)"),
    Hyperparameter("alpha", "alpha of the sigmoid focal losses, or 'none'", parse=number_or_none),
    Hyperparameter("epsilon", "Poly-1's first-term perturbation"),
    Hyperparameter("epsilons", "Poly-N's perturbations, e.g. 1,0.5", parse=comma_numbers),
    Hyperparameter("coefficients", "poly_loss's leading coefficients, e.g. 2,0.5", parse=comma_numbers),
    Hyperparameter("tail", "poly_loss's tail", parse=str, choices=("ce", "drop")),
    Hyperparameter("n_terms", "truncated_cross_entropy's n_terms (default 5)", parse=int, flag="--cutoff",
                   cli_default=5),
    Hyperparameter("k", "steepness of the soft truncation"),
    Hyperparameter("margin", "margin of the hard truncation"),
    Hyperparameter("beta", "QFL's beta"),
)}


@dataclass(frozen=True)
class Declaration:
    """What the library knows of one loss.

    Attributes:
        name: the registered name, the public function's.
        function: the public function.
        family: ``"softmax"`` (a function of the target class's softmax probability), ``"sigmoid"``
            (per-element, of ``sigmoid(x)``), ``"distribution"`` (DFL, GFL), ``"regression"`` (GHM-R) or
            ``"region"`` (segmentation's overlap of each class's pixels: Dice, Tversky, unified focal).
        module: the Module twin's class name.
        aliases: short names (the command line's ``--loss focal``).
        hyperparameters: its shape parameters (the series' first), each one of :data:`HYPERPARAMETERS`.
        series: for a polynomial in ``(1 - p_t)``: a function of the series' hyperparameters
            returning ``_math.poly_series``' keyword arguments (``coefficients``, ``gamma``, ``keep_tail``).
        curve: whether the lens draws it as a function of ``p_t`` (not for batch-dependent GHM).
    """

    name: str
    function: Callable
    family: str
    module: str
    aliases: tuple[str, ...] = ()
    hyperparameters: tuple[str, ...] = ()
    series: Callable | None = None
    curve: bool = True

    @property
    def series_parameters(self) -> tuple[str, ...]:
        """The hyperparameters that set the series (those of ``series``), in its order."""
        return () if self.series is None else tuple(inspect.signature(self.series).parameters)


#: every declared loss, by name, in declaration order
DECLARED: dict[str, Declaration] = {}


def _shared(hyperparameter) -> str:
    """A hyperparameter's name; a new one (a :class:`Hyperparameter`) joins :data:`HYPERPARAMETERS`."""
    if isinstance(hyperparameter, str):
        return hyperparameter
    if HYPERPARAMETERS.setdefault(hyperparameter.name, hyperparameter) != hyperparameter:
        raise ValueError(f"hyperparameter {hyperparameter.name!r} is already declared with another meaning")
    return hyperparameter.name


def declare(family: str, module: str, *, aliases=(), hyperparameters=(), series=None, curve=None):
    """Declare the decorated public loss function (see :class:`Declaration`); fills its docstring.
    ``hyperparameters`` are names from :data:`HYPERPARAMETERS`, or new :class:`Hyperparameter` s."""
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {FAMILIES}; got {family!r}")
    hyperparameters = tuple(_shared(h) for h in hyperparameters)

    def record(function: Callable) -> Callable:
        keywords = inspect.signature(function).parameters
        shapes = tuple(dict.fromkeys((*(inspect.signature(series).parameters if series else ()), *hyperparameters)))
        for name in shapes:
            if name not in HYPERPARAMETERS or name not in keywords:
                raise ValueError(f"{function.__name__}: hyperparameter {name!r} must be one of its keywords "
                                 f"and of HYPERPARAMETERS")
        if function.__name__ in DECLARED:
            raise ValueError(f"a loss named {function.__name__!r} is already declared")
        DECLARED[function.__name__] = Declaration(
            function.__name__, function, family, module, tuple(aliases), shapes, series,
            family in ("softmax", "sigmoid") if curve is None else curve)
        return fill(function)

    return record


def public_names(module_name: str) -> list[str]:
    """The names a family module exports: its declared functions, and the Module classes it
    defines itself (for ``__all__``)."""
    module = sys.modules[module_name]
    names = []
    for declaration in DECLARED.values():
        if declaration.function.__module__ == module_name:
            names.append(declaration.name)
            if isinstance(getattr(module, declaration.module, None), type):
                names.append(declaration.module)
    return names


def declarations(family: str | None = None) -> list[Declaration]:
    """The declared losses (of one family), in declaration order."""
    return [d for d in DECLARED.values() if family is None or d.family == family]
