"""Evaluation metrics on numpy arrays.

Classification: :func:`accuracy`, :func:`balanced_accuracy`, :func:`macro_f1` (scikit-learn).
Calibration: :func:`expected_calibration_error` and :func:`calibration_metrics`, from
:mod:`polyfocal.calibration` (torchmetrics). Ranking (binary): :func:`average_precision`,
:func:`roc_auc` (scikit-learn), :func:`average_precisions` (written here: one sort for many columns).
Across seeds: :func:`t_interval` (SciPy's Student-t quantile).

    >>> import numpy as np
    >>> balanced_accuracy(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]))
    0.8333333333333333
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .._errors import InputValueError

__all__ = ["accuracy", "balanced_accuracy", "frequency_groups", "group_accuracies", "macro_f1",
           "expected_calibration_error",
           "average_precision", "average_precisions", "roc_auc", "t_interval", "t_quantile"]


def _pair(y_true, y_other, name: str) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_other = np.asarray(y_true).ravel(), np.asarray(y_other)
    if y_other.shape[0] != y_true.shape[0]:
        raise InputValueError(f"`{name}` must have {y_true.shape[0]} rows like `y_true`; got shape {y_other.shape}")
    if y_true.shape[0] == 0:
        raise InputValueError("`y_true` is empty")
    return y_true, y_other


def _sklearn():
    from sklearn import metrics  # noqa: PLC0415 (loaded when a metric is computed, not with the command line)

    return metrics


def accuracy(y_true, y_pred) -> float:
    """Fraction of exact matches (scikit-learn's ``accuracy_score``)."""
    y_true, y_pred = _pair(y_true, y_pred, "y_pred")
    return float(_sklearn().accuracy_score(y_true, y_pred.ravel()))


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean over the classes present in ``y_true`` of each class's recall (scikit-learn's
    ``balanced_accuracy_score``; a predicted class absent from ``y_true`` has no recall to count)."""
    y_true, y_pred = _pair(y_true, y_pred, "y_pred")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        return float(_sklearn().balanced_accuracy_score(y_true, y_pred.ravel()))


def frequency_groups(counts) -> dict[str, list[int]]:
    """The classes by training count, most frequent first, cut into thirds (as close as they divide):
    ``{"head": [...], "middle": [...], "tail": [...]}``, the usual long-tailed report."""
    order = np.argsort(-np.asarray(counts), kind="stable")
    return {name: part.tolist() for name, part in zip(("head", "middle", "tail"), np.array_split(order, 3))}


def group_accuracies(y_true, y_pred, groups: dict) -> dict[str, float]:
    """``{"<group>_accuracy": mean recall of the group's classes present in y_true}`` (NaN for a group
    with none): balanced accuracy within each group of :func:`frequency_groups`."""
    y_true, y_pred = _pair(y_true, y_pred, "y_pred")
    y_pred = y_pred.ravel()
    out = {}
    for name, classes in groups.items():
        recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in classes if np.any(y_true == c)]
        out[f"{name}_accuracy"] = float(np.mean(recalls)) if recalls else math.nan
    return out


def macro_f1(y_true, y_pred, labels=None) -> float:
    """Unweighted mean of per-class F1 = 2 TP / (2 TP + FP + FN) (scikit-learn's ``f1_score``, macro).

    ``labels`` defaults to the classes in ``y_true`` or ``y_pred``; a listed class that is
    neither predicted nor present scores 0.
    """
    y_true, y_pred = _pair(y_true, y_pred, "y_pred")
    labels = None if labels is None else list(labels)
    return float(_sklearn().f1_score(y_true, y_pred.ravel(), labels=labels, average="macro", zero_division=0))


def expected_calibration_error(probs, y_true, n_bins: int = 15) -> float:
    """ECE: ``sum_b (n_b / N) |accuracy_b - confidence_b|`` over equal-width bins of the top probability
    (:func:`polyfocal.calibration.expected_calibration_error`, torchmetrics' computation).

    Args:
        probs: ``(N, C)`` class probabilities.
        y_true: ``(N,)`` class indices.
        n_bins: equal-width bins of ``[0, 1]`` (default 15, as Guo et al. 2017).
    """
    from .. import calibration  # noqa: PLC0415 (torchmetrics loads with it)

    y_true, probs = _pair(y_true, probs, "probs")
    if probs.ndim != 2:
        raise InputValueError(f"`probs` must have shape (N, C); got {probs.shape}")
    return calibration.expected_calibration_error(torch.as_tensor(probs, dtype=torch.float64),
                                                  torch.as_tensor(y_true, dtype=torch.long), bins=n_bins)


def calibration_metrics(logits, labels) -> dict[str, float]:
    """``nll`` of the test logits (``F.cross_entropy`` on them: exact where a probability underflows), and ``ece_ts``: the ECE after temperature scaling, the temperature
    fitted (:func:`polyfocal.calibration.fit_temperature`) on the even test rows and the ECE measured on
    the odd ones, so the temperature never sees the examples it is judged on."""
    from .. import calibration  # noqa: PLC0415 (torchmetrics loads with it)

    logits, labels = torch.as_tensor(logits).double(), torch.as_tensor(labels).long()
    nll = float(F.cross_entropy(logits, labels)) if len(labels) else math.nan
    if len(labels) < 2:
        return {"ece_ts": math.nan, "nll": nll}
    temperature = calibration.fit_temperature(logits[0::2], labels[0::2])
    scaled = torch.softmax(logits[1::2] / temperature, 1)
    return {"ece_ts": calibration.expected_calibration_error(scaled, labels[1::2]), "nll": nll}


def average_precision(y_true, scores) -> float:
    """Area under the step precision-recall curve, ``sum_n (R_n - R_(n-1)) P_n`` (scikit-learn's
    ``average_precision_score``; tied scores enter together). NaN when there is no positive."""
    y_true, scores = _pair(y_true, scores, "scores")
    if not (y_true > 0).any():
        return math.nan
    return float(_sklearn().average_precision_score(y_true > 0, scores.ravel()))


def average_precisions(y_true, scores) -> np.ndarray:
    """:func:`average_precision` of each column of ``y_true (n, k)`` against one ``scores (n,)``, sorted once:
    written here because ``map_box`` takes one column per IoU threshold and class, and scikit-learn would
    sort the scores again for each (tests hold it equal to scikit-learn's)."""
    y_true, scores = np.asarray(y_true), np.asarray(scores).ravel().astype(np.float64)
    if y_true.ndim != 2 or y_true.shape[0] != scores.shape[0]:
        raise InputValueError(f"`y_true` must have shape (n, k) with n = {scores.shape[0]} like `scores`; "
                              f"got {y_true.shape}")
    if scores.shape[0] == 0:
        raise InputValueError("`y_true` is empty")
    order = np.argsort(-scores, kind="mergesort")
    scores, y = scores[order], (y_true[order] > 0).astype(np.float64)
    ends = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last index of each tie group
    tp = np.cumsum(y, axis=0)[ends]                                  # (groups, k)
    precision = tp / (ends + 1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / tp[-1]
        out = np.sum(np.diff(np.vstack([np.zeros((1, y.shape[1])), recall]), axis=0) * precision, axis=0)
    return np.where(tp[-1] > 0, out, np.nan)


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve: the probability that a positive outranks a negative, ties counting 1/2
    (scikit-learn's ``roc_auc_score``). NaN unless both classes are present."""
    y_true, scores = _pair(y_true, scores, "scores")
    positive = y_true > 0
    if positive.all() or not positive.any():
        return math.nan
    return float(_sklearn().roc_auc_score(positive, scores.ravel()))


def t_quantile(df: int) -> float:
    """``t_(0.975, df)``, the two-sided 95% Student-t quantile (SciPy's ``t.ppf``)."""
    if df < 1:
        raise InputValueError(f"`df` must be >= 1; got {df}")
    from scipy import stats  # noqa: PLC0415

    return float(stats.t.ppf(0.975, df))


#: where each metric lives; an interval is clipped to it (a t-interval knows no bounds)
METRIC_RANGES = {"loc_error": (0.0, math.inf), "nll": (0.0, math.inf)}
UNIT_RANGE = (0.0, 1.0)  # every other metric: accuracies, F1, AP, AUC, mAP, ECE, gradient shares


def metric_range(name: str) -> tuple[float, float]:
    return METRIC_RANGES.get(name, UNIT_RANGE)


def t_interval(values, bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """Mean and the 95% Student-t interval ``mean +- t_(0.975, n-1) s / sqrt(n)``, clipped to
    ``bounds`` where given (the metric's range: ``roc_auc [0.89, 1.00]``, not ``[0.89, 1.0058]``).

    NaN values are dropped; with one value the interval is ``(nan, nan)``.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size == 1:
        return mean, math.nan, math.nan
    half = t_quantile(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, low, high
