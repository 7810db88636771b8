"""Name every loss from a config: ``build_loss("focal_loss", gamma=2.0)`` or ``build_loss({"name": ...})``."""

from __future__ import annotations

import difflib
from typing import Callable, Mapping

from torch import nn

from . import modules
from ._declare import HYPERPARAMETERS, Declaration, Hyperparameter, declarations
from ._errors import InputTypeError, InputValueError

__all__ = ["build_loss", "available_losses", "get_loss_function", "register_loss", "LOSS_ALIASES",
           "declaration", "declarations", "loss_hyperparameters"]

_REGISTRY: dict[str, tuple[Callable | None, type[nn.Module]]] = {}

#: Short names accepted wherever a loss name is (the CLI's ``--loss ce,focal``), from the declarations.
LOSS_ALIASES: dict[str, str] = {alias: d.name for d in declarations() for alias in d.aliases}


def register_loss(name: str, function: Callable | None, module: type[nn.Module]) -> None:
    """Make a loss buildable by name: its function (or None) and its Module class."""
    if name in _REGISTRY:
        raise InputValueError(f"a loss named {name!r} is already registered")
    _REGISTRY[name] = (function, module)


def available_losses() -> list[str]:
    """The names :func:`build_loss` accepts, sorted."""
    return sorted(_REGISTRY)


def canonical_name(name: str, argument: str | None = None) -> str:
    """The registered name of ``name`` or of its alias; an unknown name is a ValueError that
    suggests close names (and names ``argument``, where given)."""
    canonical = LOSS_ALIASES.get(name, name)
    if canonical not in _REGISTRY:
        close = difflib.get_close_matches(name, [*available_losses(), *LOSS_ALIASES], n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        where = f"`{argument}` names an " if argument else "an "
        raise InputValueError(f"{where}unknown loss {name!r}; {hint}polyfocal.available_losses() lists all "
                              f"{len(_REGISTRY)}, polyfocal.LOSS_ALIASES their short names")
    return canonical


def _lookup(name: str):
    return _REGISTRY[canonical_name(name)]


def get_loss_function(name: str) -> Callable:
    """The functional form of a registered loss."""
    function, _ = _lookup(name)
    if function is None:
        raise InputValueError(f"loss {name!r} has no functional form")
    return function


def softmax_loss_function(loss) -> Callable:
    """The function of a softmax-family loss named ``loss`` (or a short name); any other is a ValueError."""
    if not isinstance(loss, str):
        raise InputTypeError(f"`loss` must be a loss name; got {type(loss).__name__}")
    family = declaration(canonical_name(loss, "loss")).family
    if family != "softmax":
        raise InputValueError(f"`loss` must name a softmax-family loss (a function of p_t); {loss!r} is {family}")
    return get_loss_function(loss)


def build_loss(config: str | Mapping, **kwargs) -> nn.Module:
    """A loss Module from a name and keyword arguments, or from a mapping with a ``"name"`` key.

    Example:
        >>> import polyfocal as pf
        >>> pf.build_loss({"name": "poly1_cross_entropy", "epsilon": 2.0})
        Poly1CrossEntropyLoss(epsilon=2.0)
    """
    if isinstance(config, Mapping):
        if "name" not in config:
            raise InputValueError(f"a loss config needs a 'name' key; got keys {sorted(config)}")
        options = {k: v for k, v in config.items() if k != "name"}
        return build_loss(config["name"], **options, **kwargs)
    if not isinstance(config, str):
        raise InputTypeError(f"`config` must be a loss name or a mapping; got {type(config).__name__}")
    _, module = _lookup(config)
    return module(**kwargs)


def declaration(name: str) -> Declaration:
    """What the library declares of a loss (family, hyperparameters, series), by name or short name."""
    name = canonical_name(name)
    if name not in _DECLARATIONS:
        raise InputValueError(f"loss {name!r} was registered with register_loss, not declared: it has no declaration")
    return _DECLARATIONS[name]


def loss_hyperparameters() -> list[Hyperparameter]:
    """The hyperparameters of the declared losses, each once, in declaration order."""
    names = dict.fromkeys(h for d in declarations() for h in d.hyperparameters)
    return [HYPERPARAMETERS[name] for name in names]


_DECLARATIONS = {d.name: d for d in declarations()}
for _declared in declarations():
    register_loss(_declared.name, _declared.function, modules.MODULES[_declared.module])
