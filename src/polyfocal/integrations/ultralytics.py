"""Ultralytics YOLO: a polyfocal classification loss in place of YOLO's BCE, and polyfocal's DFL.

    from ultralytics import YOLO
    from polyfocal.integrations.ultralytics import use_loss
    model = use_loss(YOLO("yolov8n.yaml"), "quality_focal_loss", beta=2.0, replace_dfl=True)
    model.train(data="data.yaml", epochs=100)

YOLO's detection criterion (``v8DetectionLoss``, and the segmentation, pose and OBB losses built on it)
computes its classification term as ``bce(pred_scores, target_scores).sum() / target_scores_sum``: an
element-wise BCE of shape ``(batch, anchors, classes)`` on the assigner's soft scores, summed and divided
by the sum of the scores. The adapter replaces ``bce`` with a polyfocal loss of the sigmoid family,
element-wise (``reduction="none"``), so YOLO's normaliser, class weights and gains stay as they are; with
``replace_dfl=True`` the box term's DFL is polyfocal's too. A one-to-one head (YOLOv10, YOLO26:
``E2ELoss``) gets it in both branches.

``use_loss`` works through a training callback, so it applies to training in this process; a multi-GPU
(DDP) run starts new processes that do not carry callbacks: there, build the criterion with
:func:`patch_criterion` in a ``DetectionModel.init_criterion`` of your own.
"""

from __future__ import annotations

from torch import Tensor, nn

from .._errors import InputValueError
from ..gfl import distribution_focal_loss
from ..registry import build_loss, canonical_name, declaration
from ._versions import VISION, require

ultralytics = require("ultralytics", "8.3", "ultralytics", tested_below="8.5", tested_from="8.4.190", where=VISION)
from ultralytics.utils.loss import E2ELoss, v8DetectionLoss  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

__all__ = ["ElementwiseLoss", "DFLoss", "patch_criterion", "use_loss", "FAMILIES"]

#: the families whose losses are element-wise in YOLO's (batch, anchors, classes) scores
FAMILIES = ("sigmoid",)


class ElementwiseLoss(nn.Module):
    """``forward(pred_scores, target_scores)``: a sigmoid-family polyfocal loss per element, the drop-in for
    ``v8DetectionLoss.bce`` (``nn.BCEWithLogitsLoss(reduction="none")``).

    Args:
        loss: the loss by name or short name (``"sigmoid_focal_loss"``, ``"qfl"``, ``"varifocal_loss"``,
            ``"poly1_binary_cross_entropy"``, ...).
        **params: its keyword arguments (``gamma=2``, ``alpha=0.25``, ``beta=2``); not ``reduction``.
    """

    def __init__(self, loss: str = "sigmoid_focal_loss", **params):
        super().__init__()
        family = declaration(canonical_name(loss, "loss")).family
        if family not in FAMILIES:
            raise InputValueError(f"`loss` must be element-wise, of the {' or '.join(FAMILIES)} family, for "
                                  f"YOLO's scores; {loss!r} is {family}")
        if "reduction" in params or "normalizer" in params:
            raise InputValueError("YOLO sums the loss and divides by its target_scores_sum itself: give no "
                                  f"`reduction` or `normalizer`; got {sorted({'reduction', 'normalizer'} & set(params))}")
        self.loss = build_loss(loss, reduction="none", **params)

    def forward(self, pred_scores: Tensor, target_scores: Tensor) -> Tensor:
        return self.loss(pred_scores, target_scores)


class DFLoss(nn.Module):
    """Polyfocal's distribution focal loss called as Ultralytics' ``DFLoss``: ``pred_dist`` of shape
    ``(n * 4, reg_max)`` and ``target`` ``(n, 4)`` distances in bins give ``(n, 1)``, the mean over the
    four edges. Unlike Ultralytics' own it leaves ``target`` unchanged (theirs clamps it in place to
    ``reg_max - 1.01``; YOLO's targets come clamped there already, so the values agree)."""

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.reg_max = reg_max

    def forward(self, pred_dist: Tensor, target: Tensor) -> Tensor:
        loss = distribution_focal_loss(pred_dist, target.reshape(-1), reduction="none")
        return loss.view(target.shape).mean(-1, keepdim=True)


def patch_criterion(criterion, loss: str = "sigmoid_focal_loss", *, replace_dfl: bool = False, **params):
    """Put a polyfocal loss into an Ultralytics criterion in place of its BCE (and, with ``replace_dfl``, its
    DFL): a ``v8DetectionLoss`` (or its segmentation, pose, OBB subclasses) or an ``E2ELoss``'s two branches.
    Returns ``criterion``; nothing is changed when an argument is wrong."""
    branches = [criterion.one2many, criterion.one2one] if isinstance(criterion, E2ELoss) else [criterion]
    if not all(isinstance(branch, v8DetectionLoss) for branch in branches):
        raise InputValueError(f"`criterion` must be Ultralytics' v8DetectionLoss (or a subclass) or E2ELoss; "
                              f"got {type(criterion).__name__}")
    losses = [ElementwiseLoss(loss, **params).to(branch.device) for branch in branches]
    for branch, elementwise in zip(branches, losses):
        branch.bce = elementwise
        if replace_dfl and branch.bbox_loss.dfl_loss is not None:
            branch.bbox_loss.dfl_loss = DFLoss(branch.reg_max)
    return criterion


def use_loss(model, loss: str = "sigmoid_focal_loss", *, replace_dfl: bool = False, **params):
    """Train an Ultralytics ``YOLO`` with a polyfocal classification loss: its next ``model.train(...)`` builds
    YOLO's criterion and then :func:`patch_criterion` puts the loss in (after the trainer's set-up, so class
    weights, a resumed one-to-one schedule and the EMA are as YOLO makes them). Returns ``model``."""
    if not callable(getattr(model, "add_callback", None)):
        raise InputValueError(f"`model` must be an Ultralytics YOLO model (with add_callback); got {type(model).__name__}")
    ElementwiseLoss(loss, **params)  # a wrong loss or option fails here, not at the first training step

    def install(trainer) -> None:
        network = unwrap_model(trainer.model)
        network.criterion = patch_criterion(getattr(network, "criterion", None) or network.init_criterion(), loss,
                                            replace_dfl=replace_dfl, **params)

    model.add_callback("on_pretrain_routine_end", install)
    return model
