"""Importing a framework for an adapter: a clear error naming the extra, and the versions tested."""

from __future__ import annotations

import importlib
import warnings

from packaging.version import Version

#: where an adapter's framework installs beside polyfocal, where the main test environment can't hold it
VISION = ("it needs torchvision, so install it beside the torch its torchvision was built for "
          "(the vision test environment: bash .ci/vision)")


def require(module: str, minimum: str, extra: str, tested_below: str | None = None, *,
            tested_from: str | None = None, where: str | None = None):
    """``module``, imported; an ImportError naming ``pip install 'polyfocal[extra]'`` (and ``where`` it
    installs, if said) when it is missing or older than ``minimum``, and a warning outside the versions
    the tests ran on (``tested_from``, default ``minimum``, up to ``tested_below``)."""
    hint = f"; {where}" if where else ""
    try:
        imported = importlib.import_module(module)
    except ImportError:
        raise ImportError(f"polyfocal.integrations.{extra} needs {module}: pip install 'polyfocal[{extra}]'"
                          f"{hint}") from None
    version = Version(getattr(imported, "__version__", "0"))
    if version < Version(minimum):
        raise ImportError(f"polyfocal.integrations.{extra} needs {module} >= {minimum}; found {version} "
                          f"(pip install -U 'polyfocal[{extra}]'){hint}")
    low = Version(tested_from or minimum)
    if tested_below is not None and not low <= version < Version(tested_below):
        warnings.warn(f"polyfocal.integrations.{extra} is tested with {module} >= {low}, < {tested_below}; "
                      f"found {version}", stacklevel=3)
    return imported
