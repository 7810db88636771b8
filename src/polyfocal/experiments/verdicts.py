"""Verdicts of ``polyfocal reproduce``, as data: an :class:`Outcome` and the reason, rendered once.

A :class:`Verdict` is one outcome with its reason (``inconclusive: the interval includes 0``); a
finding that makes several claims has :class:`Verdicts`, labelled parts with an overall outcome.
The report colours, the figures and ``results.json`` read the outcome, never the text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from .metrics import t_interval


class Outcome(str, Enum):
    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "not reproduced"
    INCONCLUSIVE = "inconclusive"
    NOT_RUN = "not run yet"
    NOT_FINISHED = "not finished (interrupted)"


@dataclass(frozen=True)
class Verdict:
    """An outcome and why (empty where the outcome says it all)."""

    outcome: Outcome
    why: str = ""

    def __str__(self) -> str:
        return self.outcome.value + (f": {self.why}" if self.why else "")

    def as_json(self) -> dict:
        return {"outcome": self.outcome.value, "text": str(self)}


@dataclass(frozen=True)
class Verdicts:
    """A finding's several verdicts, ``(label, verdict)`` in order; reproduced (or not) where all
    its parts agree, inconclusive otherwise."""

    parts: tuple[tuple[str, Verdict], ...]

    @property
    def outcome(self) -> Outcome:
        outcomes = {verdict.outcome for _, verdict in self.parts}
        return outcomes.pop() if len(outcomes) == 1 else Outcome.INCONCLUSIVE

    def __str__(self) -> str:
        return "; ".join(f"{label}: {verdict}" for label, verdict in self.parts)

    def as_json(self) -> dict:
        return {"outcome": self.outcome.value, "text": str(self),
                "parts": [{"label": label, **verdict.as_json()} for label, verdict in self.parts]}


NO_INTERVAL = Verdict(Outcome.INCONCLUSIVE, "no interval (need at least 2 seeds)")


def paired_difference(results: dict, a: str, b: str, metric: str) -> dict:
    """Mean and 95% t-interval over seeds of ``metric(a) - metric(b)``, runs paired by seed."""
    by_seed = {}
    for run in results["runs"]:
        if run["loss"] in (a, b):
            by_seed.setdefault(run["seed"], {})[run["loss"]] = run["metrics"][metric]
    diffs = [v[a] - v[b] for v in by_seed.values() if a in v and b in v]
    mean, low, high = t_interval(diffs)
    return {"a": a, "b": b, "metric": metric, "mean": mean, "low": low, "high": high, "n": len(diffs)}


def verdict(low: float, high: float, claim: str = "greater", margin: float = 0.0) -> Verdict:
    """The verdict for the 95% interval ``[low, high]`` of a difference ``a - b``.

    ``claim="greater"``: the paper says a > b. ``"less"``: a < b. ``"not_worse"``: a is no
    worse than b by more than ``margin`` (higher is better).
    """
    if claim not in ("greater", "less", "not_worse"):
        raise ValueError(f"`claim` must be 'greater', 'less' or 'not_worse'; got {claim!r}")
    if math.isnan(low) or math.isnan(high):
        return NO_INTERVAL
    if claim == "less":
        low, high = -high, -low
    floor = -margin if claim == "not_worse" else 0.0
    if low > floor:
        return Verdict(Outcome.REPRODUCED)
    if high < 0:
        return Verdict(Outcome.NOT_REPRODUCED)
    if claim == "not_worse":
        return Verdict(Outcome.INCONCLUSIVE, f"the interval reaches below -{margin:g} but includes 0")
    return Verdict(Outcome.INCONCLUSIVE, "the interval includes 0")


def _truncation_class(d: dict, margin: float) -> str:
    """How N terms compare with cross-entropy: ``"matches"`` (the interval of N terms minus CE lies above
    ``-margin``), ``"short"`` (below 0), else ``"unclear"``."""
    return "matches" if d["low"] > -margin else "short" if d["high"] < 0 else "unclear"


def truncation_rows(n_terms, differences, many: int = 10, margin: float = 0.02) -> list[Verdict]:
    """Each N's verdict, in the headline's words: below ``many`` terms the paper expects N to fall short of
    CE (matching it is not reproduced); from ``many`` on, to match it."""
    rows = []
    for n, d in zip(n_terms, differences):
        if math.isnan(d["low"]):
            rows.append(NO_INTERVAL)
            continue
        kind = _truncation_class(d, margin)
        words = {"matches": f"matches cross-entropy (within {margin:g})", "short": "falls short of cross-entropy",
                 "unclear": f"neither clearly below cross-entropy nor within {margin:g} of it"}[kind]
        expected = "short" if n < many else "matches"
        outcome = (Outcome.REPRODUCED if kind == expected else Outcome.INCONCLUSIVE if kind == "unclear" or n >= many
                   else Outcome.NOT_REPRODUCED)
        rows.append(Verdict(outcome, words))
    return rows


def truncation_verdict(n_terms, differences, many: int = 10, margin: float = 0.02) -> Verdict:
    """Finding 1's verdict from the intervals of (truncated to N terms - CE), one per N (ascending), with
    the rows' own words (:func:`truncation_rows`).

    Reproduced when every N below ``many`` falls short of CE; not reproduced when one of them matches it;
    inconclusive otherwise (or without intervals).
    """
    if any(math.isnan(d["low"]) for d in differences):
        return NO_INTERVAL
    kinds = [(n, _truncation_class(d, margin)) for n, d in zip(n_terms, differences)]
    early = [n for n, kind in kinds if n < many and kind == "matches"]
    if early:
        return Verdict(Outcome.NOT_REPRODUCED, f"N={early[0]} terms already match cross-entropy (within {margin:g})")
    unclear = [n for n, kind in kinds if n < many and kind == "unclear"]
    if unclear:
        return Verdict(Outcome.INCONCLUSIVE,
                       f"N={unclear[0]} is neither clearly below cross-entropy nor within {margin:g} of it")
    matches = [n for n, kind in kinds if kind == "matches"]
    found = f"N={matches[0]} matches it (within {margin:g})" if matches else "no N tried matches it"
    return Verdict(Outcome.REPRODUCED, f"every N below {many} falls short of cross-entropy; {found}")


def any_of(parts: list[tuple[str, Verdict]], what: str) -> Verdict:
    """One verdict over alternatives (a tuned hyperparameter): reproduced if one of them is, not
    reproduced if all are not, else inconclusive; the parts in the reason."""
    outcomes = [v.outcome for _, v in parts]
    listed = "; ".join(f"{label}: {v}" for label, v in parts)
    if Outcome.REPRODUCED in outcomes:
        return Verdict(Outcome.REPRODUCED, f"for a tuned {what} ({listed})")
    if outcomes and all(o is Outcome.NOT_REPRODUCED for o in outcomes):
        return Verdict(Outcome.NOT_REPRODUCED, f"for every {what} tried ({listed})")
    return Verdict(Outcome.INCONCLUSIVE, f"no {what} tried is clearly better ({listed})" if parts else f"no {what} run")


#: the report's colour class of each outcome
CSS_CLASS = {Outcome.REPRODUCED: "reproduced", Outcome.NOT_REPRODUCED: "not", Outcome.INCONCLUSIVE: "inconclusive",
             Outcome.NOT_RUN: "pending", Outcome.NOT_FINISHED: "pending"}
