"""OpenMMLab (mmdet 3 / mmengine): every polyfocal loss in the ``MODELS`` registry, with mmdet's loss signature.

    # in an mmdet config
    custom_imports = dict(imports=["polyfocal.integrations.mmdet"], allow_failed_imports=False)
    model = dict(bbox_head=dict(loss_cls=dict(type="PolyfocalPoly1FocalLoss", epsilon=1.0, gamma=2.0,
                                              alpha=0.25, loss_weight=1.0)))

Importing this module registers ``Polyfocal<Module>`` for each declared loss (``PolyfocalFocalLoss``,
``PolyfocalSigmoidFocalLoss``, ``PolyfocalQualityFocalLoss``, ``PolyfocalDistributionFocalLoss``, ...)
in mmengine's root ``MODELS``, where mmdet's ``MODELS`` (its child) finds them. Each is built as mmdet builds its
losses, ``(loss_weight=1.0, reduction="mean", **hyperparameters)``, and called as mmdet calls them,
``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``: the targets are
mmdet's (labels with background ``C`` for the sigmoid losses, ``(labels, scores)`` for QFL, continuous
distances for DFL), ``weight`` is mmdet's per-prediction weight and ``avg_factor`` its normaliser
(the number of positives): the sum over ``avg_factor``, as mmdet's ``weight_reduce_loss``; without it,
``mean`` is over every element, as mmdet's own losses. ``PolyfocalGHMCLoss`` takes GHM-C's
``forward(pred, target, label_weight, reduction_override=None)``.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor, nn

from .._declare import declarations
from .._errors import InputValueError
from ..ghm import GHMCLoss
from ..registry import build_loss, declaration
from ._versions import require

mmengine = require("mmengine", "0.7.1", "mmdet", tested_below="1.0")
PREFIX = "Polyfocal"
REDUCTIONS = ("none", "mean", "sum")


def models_registry():
    """mmengine's root ``MODELS``: every OpenMMLab registry of models (mmdet's, mmpretrain's, mmseg's) is its
    child and finds a name it does not hold in it, so one registration serves all of them (and needs no
    mmdet, whose own registry imports ``mmdet.models`` and with it mmcv's compiled ops)."""
    return importlib.import_module("mmengine.registry").MODELS


def weight_reduce(loss: Tensor, weight: Tensor | None, reduction: str, avg_factor=None) -> Tensor:
    """mmdet's reduction of per-element losses: times ``weight`` (an ``(N,)`` weight spreads over a row),
    then ``none``, ``sum``, or ``mean`` (the sum over ``avg_factor`` where given, else over every element)."""
    if weight is not None:
        if weight.dim() == 1 and loss.dim() > 1 and weight.shape[0] == loss.shape[0]:
            weight = weight.view(-1, *([1] * (loss.dim() - 1)))
        loss = loss * weight
    if reduction == "none":
        return loss
    if avg_factor is None:
        return loss.sum() if reduction == "sum" else loss.mean()
    if reduction == "sum":
        raise InputValueError("`avg_factor` can not be used with reduction='sum' (as in mmdet)")
    return loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)


class MMDetLoss(nn.Module):
    """A polyfocal loss with mmdet's construction and call (the module docstring)."""

    loss_name: str
    sums_classes: bool = False  # QFL: mmdet sums each row over its classes before weight and reduction

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean", **hyperparameters):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise InputValueError(f"`reduction` must be one of {REDUCTIONS}; got {reduction!r}")
        self.loss_weight, self.reduction = float(loss_weight), reduction
        # polyfocal's own Module: its hyperparameters are checked now, and it holds tensor options as buffers
        self.loss = build_loss(self.loss_name, **self._polyfocal_options(hyperparameters), reduction="none")

    def _polyfocal_options(self, options: dict) -> dict:
        """mmdet's option names, as polyfocal's: ``class_weight`` is ``weight``; ``use_sigmoid`` must
        name the loss's own family and ``activated`` (probabilities for logits) must be False."""
        options = dict(options)
        family = declaration(self.loss_name).family
        use_sigmoid = options.pop("use_sigmoid", family == "sigmoid")
        if family in ("softmax", "sigmoid") and bool(use_sigmoid) != (family == "sigmoid"):
            raise InputValueError(f"`use_sigmoid={use_sigmoid}` does not fit {self.loss_name}, a {family} loss")
        if options.pop("activated", False):
            raise InputValueError("`activated=True` (probabilities for logits) is not supported: polyfocal's losses "
                                  "take logits")
        if "class_weight" in options:
            options["weight"] = torch.as_tensor(options.pop("class_weight"), dtype=torch.float32)
        return options

    def forward(self, pred: Tensor, target, weight: Tensor | None = None, avg_factor=None,
                reduction_override: str | None = None) -> Tensor:
        reduction = reduction_override or self.reduction
        if reduction not in REDUCTIONS:
            raise InputValueError(f"`reduction_override` must be one of {REDUCTIONS}; got {reduction!r}")
        loss = self.loss(pred, target)
        return self.loss_weight * weight_reduce(loss.sum(1) if self.sums_classes else loss, weight, reduction,
                                                avg_factor)


class PolyfocalGHMCLoss(nn.Module):
    """GHM-C with mmdet's ``GHMC`` construction and call: ``(bins=10, momentum=0, use_sigmoid=True,
    loss_weight=1.0, reduction="mean")``, ``forward(pred, target, label_weight, reduction_override=None)``
    with ``target`` the float one-hot ``(N, C)`` and ``label_weight`` which elements count."""

    def __init__(self, bins: int = 10, momentum: float = 0.0, use_sigmoid: bool = True, loss_weight: float = 1.0,
                 reduction: str = "mean"):
        super().__init__()
        if not use_sigmoid:
            raise InputValueError("GHM-C is a sigmoid loss: `use_sigmoid` must be True")
        self.loss_weight = float(loss_weight)
        self.ghm = GHMCLoss(bins=bins, momentum=momentum, bias_correction=False, reduction=reduction)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor, reduction_override: str | None = None,
                **kwargs) -> Tensor:
        if reduction_override is not None and reduction_override != self.ghm.reduction:
            raise InputValueError("PolyfocalGHMCLoss takes its reduction when built, not as `reduction_override`")
        if label_weight.dim() == 1:  # class indices (background C), as mmdet expands them
            label_weight = label_weight.view(-1, 1).expand_as(pred)
        target = target.float() if target.is_floating_point() else target
        return self.loss_weight * self.ghm(pred, target, label_weight.float())


def _adapters() -> dict[str, type[nn.Module]]:
    """``Polyfocal<Module>`` for every declared loss (GHM-C's own; GHM-R, a regression loss, left out)."""
    made = {}
    for declared in declarations():
        if declared.name == "ghm_r_loss" or declared.family == "region":  # mmdet's own segmentation losses differ
            continue
        name = PREFIX + declared.module
        made[name] = PolyfocalGHMCLoss if declared.name == "ghm_c_loss" else type(
            name, (MMDetLoss,), {"loss_name": declared.name, "__module__": __name__,
                                 "sums_classes": declared.name == "quality_focal_loss",
                                 "__doc__": f"polyfocal's ``{declared.name}`` with mmdet's signature."})
    return made


ADAPTERS = _adapters()
for _name, _cls in ADAPTERS.items():
    models_registry().register_module(name=_name, module=_cls, force=True)
globals().update(ADAPTERS)

__all__ = ["ADAPTERS", "MMDetLoss", "weight_reduce", "models_registry", *ADAPTERS]
