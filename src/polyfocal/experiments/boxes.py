"""Box regression on dense-toy: each positive location predicts its distances to the object's edges.

A location at pixel centre ``(i + 0.5, j + 0.5)`` inside an object's box has targets
``(left, top, right, bottom)``, the distances in pixels to the box's four edges (FCOS and
GFL's parameterisation). Two box losses, as in the Generalized Focal Loss paper's ablation:

- ``l1``: the head predicts the 4 distances directly; mean absolute error.
- ``dfl``: the head predicts each distance as a distribution over ``BINS`` bins at
  0, 1, ..., ``BINS - 1`` pixels (:func:`polyfocal.distribution_focal_loss`), decoded as
  its expectation (:func:`polyfocal.decode_distribution`).

Both are averaged over the 4 edges and normalised by the number of positive locations.
With ``qfl``/``vfl`` the classification target of a positive location is the IoU of its
predicted box with its object's box (GFL's joint quality score), 0 elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..gfl import decode_distribution, distribution_focal_loss
from .metrics import average_precisions

__all__ = ["BOX_LOSSES", "BINS", "box_channels", "decode", "box_loss", "overlap", "box_metrics"]

BOX_LOSSES = ("l1", "dfl")
#: DFL's bins: distances 0..BINS-1 pixels (objects are at most 4 pixels wide: distances <= 3.5)
BINS = 5
#: IoU thresholds of ``map_box`` (COCO's 0.5:0.95, in steps of 0.1)
IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def box_channels(box: str) -> int:
    """Output channels of the box head for box loss ``box``."""
    return 4 if box == "l1" else 4 * BINS


def decode(box: str, output: Tensor) -> Tensor:
    """Distances ``(B, 4, H, W)`` from the box head's ``output``."""
    if box == "l1":
        return output
    b, _, h, w = output.shape
    return decode_distribution(output.reshape(b, 4, BINS, h, w), dim=2)


def overlap(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of boxes given as distances ``(..., 4, ...)`` on dim -3 from the same point; negatives count as 0."""
    pred = pred.clamp(min=0)
    left, top, right, bottom = pred.unbind(-3)
    l2, t2, r2, b2 = target.unbind(-3)
    inter = (torch.minimum(left, l2) + torch.minimum(right, r2)) * (torch.minimum(top, t2) + torch.minimum(bottom, b2))
    union = (left + right) * (top + bottom) + (l2 + r2) * (t2 + b2) - inter
    return inter / union.clamp(min=1e-6)


def box_loss(box: str, output: Tensor, target: Tensor, positive: Tensor, normalizer: Tensor) -> Tensor:
    """The box loss on positive locations, summed over them and their 4 edges, over ``4 * normalizer``.

    Args:
        box: ``"l1"`` or ``"dfl"``.
        output: the box head's output ``(B, box_channels(box), H, W)``.
        target: distances ``(B, 4, H, W)``.
        positive: bool ``(B, H, W)``.
        normalizer: the number of positive locations (a tensor, all-reduced in distributed runs).
    """
    b, _, h, w = output.shape
    edges = target.permute(0, 2, 3, 1)[positive]                                  # (P, 4)
    if box == "l1":
        pred = output.permute(0, 2, 3, 1)[positive]                               # (P, 4)
        return (pred - edges).abs().sum() / (4 * normalizer)
    bins = output.reshape(b, 4, BINS, h, w).permute(0, 3, 4, 1, 2)[positive]      # (P, 4, BINS)
    return distribution_focal_loss(bins.reshape(-1, BINS), edges.reshape(-1), reduction="mean",
                                   normalizer=4 * normalizer)


def box_metrics(pred: Tensor, target: Tensor, labels: np.ndarray, scores: np.ndarray,
                num_classes: int) -> dict[str, float]:
    """``loc_error`` (mean absolute edge error on positive locations, pixels) and ``map_box``.

    ``map_box`` is the mean over classes and IoU thresholds 0.5:0.9 of the average precision
    over locations where a location counts as positive for class c only if its label is c
    *and* its predicted box overlaps its object's box by at least the threshold: a score
    that ranks well-localised locations first scores higher (COCO's AP, per location). A
    class with objects but no location above a threshold scores 0 there.
    """
    positive = labels < num_classes
    iou = overlap(pred, target).numpy().ravel()
    error = (pred - target).abs().mean(1).numpy()[positive]
    aps = []
    for c in range(num_classes):
        mine = labels.ravel() == c
        if not mine.any():
            continue  # no object of this class: its AP is undefined, as in COCO
        hits = np.stack([mine & (iou >= t) for t in IOU_THRESHOLDS], axis=1)
        aps.extend(np.nan_to_num(average_precisions(hits, scores[:, c].ravel()), nan=0.0))
    return {"map_box": float(np.mean(aps)) if aps else float("nan"),
            "loc_error": float(error.mean()) if error.size else float("nan")}
