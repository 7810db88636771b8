"""Importing a framework for an adapter: a clear error naming the extra, and the versions tested."""

from __future__ import annotations

import importlib
import warnings

from packaging.version import Version


def require(module: str, minimum: str, extra: str, tested_below: str | None = None):
    """``module``, imported; an ImportError naming ``pip install 'polyfocal[extra]'`` if it is missing or
    older than ``minimum``, and a warning above the versions the tests ran on."""
    try:
        imported = importlib.import_module(module)
    except ImportError:
        raise ImportError(f"polyfocal.integrations.{extra} needs {module}: pip install 'polyfocal[{extra}]'") from None
    version = Version(getattr(imported, "__version__", "0"))
    if version < Version(minimum):
        raise ImportError(f"polyfocal.integrations.{extra} needs {module} >= {minimum}; found {version} "
                          f"(pip install -U 'polyfocal[{extra}]')")
    if tested_below is not None and version >= Version(tested_below):
        warnings.warn(f"polyfocal.integrations.{extra} is tested with {module} >= {minimum}, < {tested_below}; "
                      f"found {version}", stacklevel=3)
    return imported
