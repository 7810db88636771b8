"""Calibration: how far a classifier's confidence is from its accuracy, and temperature scaling.

Taken from well-kept libraries where they have the metric, written here where none has it:

* :func:`expected_calibration_error` (ECE, equal-width bins of the top confidence) and
  :func:`maximum_calibration_error` (MCE): torchmetrics' ``multiclass_calibration_error``
  (``norm="l1"`` and ``"max"``);
* :func:`classwise_calibration_error`: the mean over classes of torchmetrics'
  ``binary_calibration_error`` of ``p_c`` against ``1[y = c]``;
* :func:`adaptive_calibration_error` (equal-mass bins; Nixon et al. 2019): written here, as no
  maintained library computes it for multi-class probabilities;
* :func:`brier_score` and :func:`negative_log_likelihood`: scikit-learn's ``brier_score_loss``
  and ``log_loss``;
* :func:`fit_temperature`: the post-hoc baseline (Guo et al. 2017), one temperature fitted on
  validation logits by L-BFGS on the negative log-likelihood.

The metrics take probabilities ``(N, C)`` and class indices ``(N,)``; torchmetrics needs
``pip install 'polyfocal[calibration]'``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks
from ._errors import InputTypeError, InputValueError

__all__ = ["expected_calibration_error", "maximum_calibration_error", "adaptive_calibration_error",
           "classwise_calibration_error", "brier_score", "negative_log_likelihood", "fit_temperature",
           "CalibrationReport", "calibration_report", "Reliability", "reliability", "FocalBound", "focal_bound"]


def _torchmetrics():
    try:
        from torchmetrics.functional import classification  # noqa: PLC0415 (an optional dependency)
    except ImportError:
        raise ImportError("polyfocal.calibration's ECE, MCE and classwise ECE use torchmetrics: "
                          "pip install 'polyfocal[calibration]'") from None
    return classification


def _check(probs, labels, bins: int = 15) -> tuple[Tensor, Tensor, int]:
    if not isinstance(probs, Tensor) or not probs.is_floating_point() or probs.dim() != 2 or probs.shape[1] < 2:
        got = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise InputValueError(f"`probs` must be a float tensor of probabilities (N, C), C >= 2; got {got}")
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.shape != probs.shape[:1]:
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise InputTypeError(f"`labels` must be class indices of shape ({probs.shape[0]},); got {got}")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise InputValueError(f"`labels` must lie in [0, {probs.shape[1] - 1}]")
    _checks.check_unit_interval(probs, "probs")
    probs = probs.detach() if probs.dtype in (torch.float32, torch.float64) else probs.detach().float()
    return probs, labels.detach().long(), _checks.integer(bins, "bins", low=1)


def expected_calibration_error(probs: Tensor, labels: Tensor, *, bins: int = 15) -> float:
    """ECE: ``sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|`` over equal-width bins of the top
    probability (torchmetrics' ``multiclass_calibration_error``, ``norm="l1"``)."""
    probs, labels, bins = _check(probs, labels, bins)
    return float(_torchmetrics().multiclass_calibration_error(probs, labels, probs.shape[1], n_bins=bins, norm="l1"))


def maximum_calibration_error(probs: Tensor, labels: Tensor, *, bins: int = 15) -> float:
    """MCE: the largest ``|accuracy - confidence|`` over the non-empty equal-width bins (torchmetrics, ``norm="max"``)."""
    probs, labels, bins = _check(probs, labels, bins)
    return float(_torchmetrics().multiclass_calibration_error(probs, labels, probs.shape[1], n_bins=bins, norm="max"))


def classwise_calibration_error(probs: Tensor, labels: Tensor, *, bins: int = 15) -> float:
    """Classwise ECE: the mean over classes c of the ECE of ``p_c`` as the probability of ``y = c``
    (Kull et al. 2019; torchmetrics' ``binary_calibration_error`` per class)."""
    probs, labels, bins = _check(probs, labels, bins)
    binary = _torchmetrics().binary_calibration_error
    return float(np.mean([float(binary(probs[:, c].contiguous(), (labels == c).long(), n_bins=bins, norm="l1"))
                          for c in range(probs.shape[1])]))


def adaptive_calibration_error(probs: Tensor, labels: Tensor, *, bins: int = 15) -> float:
    """Adaptive ECE: as :func:`expected_calibration_error` over bins of equal mass (each holds
    ``N / bins`` examples, by sorted top probability), so no bin is nearly empty."""
    probs, labels, bins = _check(probs, labels, bins)
    if len(labels) == 0:
        return 0.0
    confidence, predicted = probs.max(1)
    order = torch.argsort(confidence)
    correct = (predicted == labels).float()[order]
    gaps = [(part_c.mean() - part_a.mean()).abs() * len(part_c)
            for part_c, part_a in zip(torch.tensor_split(confidence[order], bins), torch.tensor_split(correct, bins))
            if len(part_c)]
    return float(torch.stack(gaps).sum() / len(labels))


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """The multi-class Brier score ``mean_n sum_c (p_c - 1[y = c])^2`` (scikit-learn's ``brier_score_loss``)."""
    from sklearn.metrics import brier_score_loss  # noqa: PLC0415 (scikit-learn is needed here only)

    probs, labels, _ = _check(probs, labels)
    return float(brier_score_loss(labels.numpy(), probs.double().numpy(), labels=list(range(probs.shape[1]))))


def negative_log_likelihood(probs: Tensor, labels: Tensor) -> float:
    """The mean ``-log p_y`` (scikit-learn's ``log_loss``)."""
    from sklearn.metrics import log_loss  # noqa: PLC0415

    probs, labels, _ = _check(probs, labels)
    return float(log_loss(labels.numpy(), probs.double().numpy(), labels=list(range(probs.shape[1]))))


def fit_temperature(logits: Tensor, labels: Tensor, *, max_iter: int = 100) -> float:
    """The temperature ``T > 0`` minimising the NLL of ``softmax(logits / T)`` on validation data
    (Guo et al. 2017): L-BFGS on ``log T`` in float64, from ``T = 1``. Divide test logits by it."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise InputValueError(f"`logits` must be a float tensor (N, C); got {got}")
    _check(torch.softmax(logits.detach().double(), 1), labels)
    if len(labels) == 0:
        raise InputValueError("`logits` holds no examples to fit a temperature on")
    x, y = logits.detach().double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=_checks.integer(max_iter, "max_iter", low=1),
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


@dataclass(frozen=True)
class CalibrationReport:
    """Every metric of one set of predictions (probabilities of ``softmax(logits / temperature)``)."""

    temperature: float
    accuracy: float
    ece: float
    adaptive_ece: float
    classwise_ece: float
    mce: float
    nll: float
    brier: float

    def as_dict(self) -> dict:
        return asdict(self)


def calibration_report(logits: Tensor, labels: Tensor, *, temperature: float = 1.0, bins: int = 15) -> CalibrationReport:
    """The calibration metrics of ``softmax(logits / temperature)`` (see :func:`fit_temperature`)."""
    temperature = _checks.number(temperature, "temperature", low=0.0, low_open=True)
    probs = torch.softmax(logits.detach().double() / temperature, 1)
    probs, labels, bins = _check(probs, labels, bins)
    accuracy = float((probs.argmax(1) == labels).float().mean()) if len(labels) else 0.0
    return CalibrationReport(temperature, accuracy, expected_calibration_error(probs, labels, bins=bins),
                             adaptive_calibration_error(probs, labels, bins=bins),
                             classwise_calibration_error(probs, labels, bins=bins),
                             maximum_calibration_error(probs, labels, bins=bins), negative_log_likelihood(probs, labels),
                             brier_score(probs, labels))


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram's numbers: per equal-width bin of the top probability, its edges, the
    number of examples, their mean confidence and their accuracy (NaN for an empty bin)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray


def reliability(probs: Tensor, labels: Tensor, *, bins: int = 15) -> Reliability:
    """The numbers behind a reliability diagram (bins ``[lo, hi)``, the last closed, as torchmetrics' ECE)."""
    probs, labels, bins = _check(probs, labels, bins)
    confidence, predicted = (v.double().numpy() for v in probs.max(1))
    correct = (predicted == labels.numpy()).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / counts
        accuracy = np.bincount(index, correct, minlength=bins) / counts
    return Reliability(edges, counts, mean_confidence, accuracy)


@dataclass(frozen=True)
class FocalBound:
    """Mukhoti et al.'s bound, per example: ``focal >= kl - gamma * entropy``.

    Attributes:
        focal: focal loss ``-(1 - p_t)^gamma log p_t``.
        kl: ``KL(q || p)`` for the one-hot target ``q``: cross-entropy ``-log p_t``.
        entropy: the prediction's entropy ``H[p] = -sum_c p_c log p_c``.
        bound: ``kl - gamma * entropy``.
    """

    focal: np.ndarray
    kl: np.ndarray
    entropy: np.ndarray
    bound: np.ndarray


def focal_bound(probs: Tensor, labels: Tensor, *, gamma: float) -> FocalBound:
    """Why focal loss calibrates (Mukhoti et al., NeurIPS 2020, arXiv:2002.09437): for gamma >= 1,
    ``(1 - p_t)^gamma >= 1 - gamma p_t`` and ``-p_t log p_t <= H[p]`` give
    ``focal >= KL(q || p) - gamma H[p]``, so minimising focal loss minimises the KL divergence while
    keeping the prediction's entropy up: less over-confidence than cross-entropy, which is the KL alone.

    Raises:
        ValueError: ``gamma`` below 1 (the bound does not hold there), or bad ``probs``/``labels``.
    """
    gamma = _checks.number(gamma, "gamma", low=1.0)
    probs, labels, _ = _check(probs, labels)
    p = probs.double()
    log_p = torch.log(p)
    p_t, log_p_t = p.gather(1, labels[:, None]).squeeze(1), log_p.gather(1, labels[:, None]).squeeze(1)
    entropy = -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(1)
    focal = -torch.exp(gamma * torch.log1p(-p_t)) * log_p_t
    return FocalBound(focal.numpy(), (-log_p_t).numpy(), entropy.numpy(), (-log_p_t - gamma * entropy).numpy())
