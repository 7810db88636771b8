"""timm: any polyfocal loss where a timm training script creates its criterion.

    from polyfocal.integrations.timm import create_loss
    criterion = create_loss("focal_loss", gamma=2.0, smoothing=0.1)   # in place of create_classification_loss(...)
    task = timm.task.ClassificationTask(model, criterion=criterion)

``smoothing``, ``soft_targets`` and ``multi_label`` mean what they mean to timm's
``create_classification_loss``:

* a softmax-family loss takes class indices or the soft targets of timm's ``Mixup`` / ``CutMix``;
  ``smoothing`` is the loss's ``label_smoothing`` (the target becomes ``(1 - s) onehot + s / C``, the
  smoothing of timm's ``LabelSmoothingCrossEntropy``), and ``soft_targets=True`` turns it off, since
  ``Mixup`` smoothed the targets already;
* a sigmoid-family loss (BCE, sigmoid focal, Poly-1 focal, QFL, ...) takes dense ``(N, C)`` targets,
  or class indices made one-hot as timm's ``BinaryCrossEntropy`` makes them (``s / C`` off, ``1 - s + s / C``
  on); with ``multi_label=True`` a dense target is smoothed towards 0.5 (``y (1 - s) + s / 2``). Its mean
  is over every element, as timm's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import _checks
from .._errors import InputTypeError, InputValueError
from ..registry import build_loss, canonical_name, declaration
from ._versions import VISION, require

timm = require("timm", "1.0", "timm", tested_below="1.1", tested_from="1.0.31", where=VISION)

__all__ = ["create_loss", "DenseTargetLoss"]

FAMILIES = ("softmax", "sigmoid")


def create_loss(name: str = "cross_entropy", *, smoothing: float = 0.0, soft_targets: bool = False,
                multi_label: bool = False, **params) -> nn.Module:
    """A polyfocal loss Module for ``timm.task.ClassificationTask(model, criterion=...)`` or a timm script.

    Args:
        name: a softmax- or sigmoid-family polyfocal loss, by name or short name (``"focal"``, ``"poly1"``).
        smoothing: label smoothing in [0, 1), as timm's ``--smoothing``.
        soft_targets: the targets come from timm's ``Mixup`` / ``CutMix`` (already smoothed): ``smoothing`` is off.
        multi_label: dense independent binary targets ``(N, C)`` (sigmoid family only), as timm's.
        **params: the loss's own keyword arguments (``gamma=2``, ``epsilon=2``, ``alpha=0.25``, ``weight=...``).

    Raises:
        ValueError: an unknown loss, one of another family, ``multi_label`` with a softmax loss, a smoothing
            outside [0, 1), or ``label_smoothing`` given (timm's name for it is ``smoothing``).
    """
    family = declaration(canonical_name(name, "name")).family
    if family not in FAMILIES:
        raise InputValueError(f"`name` must be a loss of the {' or '.join(FAMILIES)} family for timm; "
                              f"{name!r} is {family}")
    smoothing = _checks.number(smoothing, "smoothing", low=0.0, high=1.0, high_open=True)
    if "label_smoothing" in params:
        raise InputTypeError("create_loss takes timm's `smoothing`, not `label_smoothing`")
    if soft_targets:
        smoothing = 0.0
    if family == "softmax":
        if multi_label:
            raise InputValueError(f"`multi_label=True` needs a sigmoid-family loss; {name!r} is softmax")
        return build_loss(name, label_smoothing=smoothing, **params)
    return DenseTargetLoss(build_loss(name, **params), smoothing=smoothing, smooth_dense=multi_label)


class DenseTargetLoss(nn.Module):
    """A sigmoid-family loss on timm's targets: class indices made one-hot with timm's smoothing, dense ones
    passed on (smoothed towards 0.5 where ``smooth_dense``)."""

    def __init__(self, loss: nn.Module, *, smoothing: float = 0.0, smooth_dense: bool = False):
        super().__init__()
        self.loss = loss
        self.smoothing = smoothing
        self.smooth_dense = smooth_dense

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.shape != logits.shape:
            target = one_hot(target, logits, self.smoothing)
        elif self.smooth_dense and self.smoothing:
            target = target * (1.0 - self.smoothing) + 0.5 * self.smoothing
        return self.loss(logits, target)

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}, smooth_dense={self.smooth_dense}"


def one_hot(target: Tensor, logits: Tensor, smoothing: float = 0.0) -> Tensor:
    """``(N,)`` class indices as ``(N, C)`` targets in the logits' dtype: ``1 - s + s / C`` at the class,
    ``s / C`` elsewhere (timm's ``BinaryCrossEntropy``)."""
    rows, classes = logits.shape[0], logits.shape[-1]
    if logits.dim() != 2 or target.shape != (rows,) or target.is_floating_point():
        raise InputValueError(f"`target` must be (N, C) = {tuple(logits.shape)} dense or (N,) = ({rows},) class "
                              f"indices for logits (N, C); got {target.dtype} of shape {tuple(target.shape)}")
    if _checks.should_validate(None, logits) and target.numel():
        low, high = (int(v) for v in torch.aminmax(target))
        if low < 0 or high >= classes:
            raise InputValueError(f"`target` holds class index {low if low < 0 else high}, outside "
                                  f"[0, {classes - 1}] (timm's one-hot targets have no ignore_index)")
    off = smoothing / classes
    dense = torch.full((rows, classes), off, dtype=logits.dtype, device=logits.device)
    return dense.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)
