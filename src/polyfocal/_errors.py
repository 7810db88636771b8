"""The caller's mistakes, as exceptions of their own: a bad argument, option, value or file.

They are ``ValueError`` s and ``TypeError`` s as before, so ``except ValueError`` still catches
them; the command line prints these (and only these) as one ``polyfocal: error:`` line. Any
other exception is a bug, and shows its traceback.
"""


class InputError(Exception):
    """A caller's mistake, not a bug."""


class InputValueError(InputError, ValueError):
    """A value out of its range, a wrong shape, a missing file, an unknown name."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type."""
