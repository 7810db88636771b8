"""Argument types of the command line: each checks one kind of value when the command line is
parsed, so a mistake ends in one ``polyfocal: error:`` line before any work starts.

``argparse`` names the option in its message (``argument --batch-size: ...``); a type says what
it expected and what it got.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from ._compat import subparsers


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``polyfocal: error: ...``, exit 2."""

    def error(self, message: str):
        self.exit(2, f"polyfocal: error: {message} (see `{self.prog} --help`)\n")


def _number(text: str, kind: type, low: float, low_included: bool, what: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value != value or value < low or (value == low and not low_included):
        raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (batch sizes, threads, epochs, steps, sizes)."""
    return _number(text, int, 1, True, "a whole number >= 1")


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (seeds)."""
    return _number(text, int, 0, True, "a whole number >= 0")


def positive_float(text: str) -> float:
    """A number > 0 (learning rates, tolerances)."""
    return _number(text, float, 0.0, False, "a number > 0")


def at_least_one(text: str) -> float:
    """A number >= 1 (an imbalance ratio)."""
    return _number(text, float, 1.0, True, "a number >= 1")


def comma_numbers(text: str) -> tuple[float, ...]:
    """Comma-separated numbers (``1,0.5``): a tuple of floats."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; got {text!r}") from None


def number_or_none(text: str) -> float | None:
    """A number, or ``none`` for None (an option switched off)."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none'; got {text!r}") from None


def bound_value_pairs(text: str) -> tuple[tuple[float, float], ...]:
    """``0.2:5,1:3`` as ``((0.2, 5.0), (1.0, 3.0))`` (a step schedule: ``--gamma-schedule``)."""
    try:
        pairs = tuple(tuple(float(v) for v in pair.split(":")) for pair in text.split(",") if pair.strip())
    except ValueError:
        pairs = ()
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected BOUND:GAMMA pairs, e.g. 0.2:5,1:3; got {text!r}")
    return pairs


def output_directory(path: str) -> str:
    """A directory that exists and is writable, or can be made: its nearest existing ancestor is a
    writable directory. Nothing is created here (that waits until results are written)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"expected a directory; {path!r} is a file")
    probe, missing = os.path.abspath(path), None
    while not os.path.exists(probe):
        probe, missing = os.path.dirname(probe), probe
    if not os.path.isdir(probe):
        raise argparse.ArgumentTypeError(f"cannot make directory {path!r}: {probe!r} is a file")
    try:  # permissions alone do not tell (root, read-only or virtual file systems)
        tempfile.TemporaryDirectory(dir=probe).cleanup()
    except OSError as error:
        what = f"cannot make directory {missing!r}" if missing else f"cannot write to {probe!r}"
        raise argparse.ArgumentTypeError(f"{what} (for {path!r}): {error.strerror}") from None
    return path


def innermost(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser that ``args`` were parsed by, so that its errors name that command."""
    for action in subparsers(parser):
        chosen = action.choices.get(getattr(args, action.dest, None))
        if chosen is not None:
            return innermost(chosen, args)
    return parser


def fail(message: str) -> int:
    """Print a user error as the one line ``polyfocal: error: ...``; the exit code 2."""
    print(f"polyfocal: error: {message}", file=sys.stderr)
    return 2


def interrupted(where: str = "") -> int:
    """Print an interrupt (Ctrl-C) as the one line ``polyfocal: interrupted``, with where the results that
    finished were written; the exit code 130, as a shell gives a process that SIGINT stopped."""
    print("polyfocal: interrupted" + (f"; {where}" if where else ""), file=sys.stderr)
    return 130
