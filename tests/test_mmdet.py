"""polyfocal's losses in OpenMMLab's MODELS registry, loaded from a real mmengine config through
``custom_imports`` and held to mmdet's loss formulas (``py_sigmoid_focal_loss``, ``quality_focal_loss``,
``distribution_focal_loss`` and ``weight_reduce_loss``, written here from mmdet 3.3's definitions).

mmdet 3.3 itself installs here but cannot build a model: its registry imports ``mmdet.models``, which
imports mmcv's compiled ops, and no mmcv build exists for torch 2.13 on CPU (mmcv-lite has no ops). The
tests use mmengine's registry and config system, and a child registry made as mmdet makes its own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import polyfocal as pf

mmengine = pytest.importorskip("mmengine")
from mmengine.config import Config  # noqa: E402

from polyfocal.integrations import mmdet as adapter  # noqa: E402

EPS = torch.finfo(torch.float32).eps
N, C = 12, 5


def detection_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(N, C, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, C + 1, (N,), generator=g)  # C: background
    return pred, labels, torch.rand(N, generator=g, dtype=torch.float64) + 0.5


def mmdet_reduce(loss, weight, reduction, avg_factor):
    """mmdet's ``weight_reduce_loss``."""
    if weight is not None:
        loss = loss * (weight.view(-1, 1) if weight.dim() < loss.dim() else weight)
    if avg_factor is None:
        return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]
    return loss.sum() / (avg_factor + EPS) if reduction == "mean" else loss


def mmdet_sigmoid_focal(pred, labels, gamma, alpha):
    target = F.one_hot(labels, C + 1)[:, :C].to(pred.dtype)
    p = pred.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight


def mmdet_quality_focal(pred, labels, scores, beta):
    sigma = pred.sigmoid()
    loss = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none") * sigma.pow(beta)
    pos = (labels >= 0) & (labels < C)
    rows, cls = pos.nonzero().squeeze(1), labels[pos]
    gap = scores[rows] - sigma[rows, cls]
    loss[rows, cls] = F.binary_cross_entropy_with_logits(pred[rows, cls], scores[rows], reduction="none") * gap.abs().pow(beta)
    return loss.sum(1)


def mmdet_distribution_focal(pred, label):
    left = label.long()
    right = left + 1
    return (F.cross_entropy(pred, left, reduction="none") * (right.to(label.dtype) - label)
            + F.cross_entropy(pred, right, reduction="none") * (label - left.to(label.dtype)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The MODELS registry after a config file's ``custom_imports`` ran (mmdet's where it imports)."""
    path = tmp_path_factory.mktemp("config") / "retina.py"
    path.write_text("custom_imports = dict(imports=['polyfocal.integrations.mmdet'], allow_failed_imports=False)\n"
                    "loss_cls = dict(type='PolyfocalSigmoidFocalLoss', gamma=2.0, alpha=0.25, loss_weight=1.5)\n")
    cfg = Config.fromfile(str(path))
    return adapter.models_registry(), cfg


def test_a_config_builds_the_loss_through_custom_imports(models):
    registry, cfg = models
    loss = registry.build(cfg.loss_cls)
    assert type(loss).__name__ == "PolyfocalSigmoidFocalLoss" and loss.loss_weight == 1.5
    assert {"PolyfocalFocalLoss", "PolyfocalQualityFocalLoss", "PolyfocalDistributionFocalLoss", "PolyfocalGHMCLoss",
            "PolyfocalAdaFocalLoss"} <= set(registry.module_dict)


def test_a_child_registry_like_mmdets_finds_the_losses_in_its_parent(models):
    registry, cfg = models
    detector_models = mmengine.registry.Registry("model", parent=registry, scope="detector")  # as mmdet.registry
    assert type(detector_models.build(cfg.loss_cls)).__name__ == "PolyfocalSigmoidFocalLoss"


@pytest.mark.parametrize("reduction, with_avg", [("mean", True), ("mean", False), ("sum", False), ("none", False)])
def test_sigmoid_focal_equals_mmdets_with_its_weight_and_avg_factor(models, reduction, with_avg):
    registry, cfg = models
    loss = registry.build(cfg.loss_cls)
    pred, labels, weight = detection_batch()
    avg = float((labels < C).sum()) if with_avg else None
    want = 1.5 * mmdet_reduce(mmdet_sigmoid_focal(pred, labels, 2.0, 0.25), weight, reduction, avg)
    torch.testing.assert_close(loss(pred, labels, weight, avg_factor=avg, reduction_override=reduction), want)


def test_quality_focal_takes_labels_and_scores_and_sums_each_row_as_mmdet(models):
    registry, _ = models
    loss = registry.build(dict(type="PolyfocalQualityFocalLoss", beta=2.0, loss_weight=1.0))
    pred, labels, weight = detection_batch(1)
    scores = torch.rand(N, dtype=torch.float64)
    for avg in (None, 4.0):
        want = mmdet_reduce(mmdet_quality_focal(pred, labels, scores, 2.0), weight, "mean", avg)
        torch.testing.assert_close(loss(pred, (labels, scores), weight, avg_factor=avg), want)


def test_distribution_focal_equals_mmdets(models):
    registry, _ = models
    loss = registry.build(dict(type="PolyfocalDistributionFocalLoss", loss_weight=0.25))
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(N, 17, generator=g, dtype=torch.float64)
    label = torch.rand(N, generator=g, dtype=torch.float64) * 15.99
    weight = torch.rand(N, generator=g, dtype=torch.float64)
    want = 0.25 * mmdet_reduce(mmdet_distribution_focal(pred, label), weight, "mean", 3.0)
    torch.testing.assert_close(loss(pred, label, weight, avg_factor=3.0), want)


def test_softmax_focal_with_mmdets_class_weight_and_use_sigmoid_false(models):
    registry, _ = models
    class_weight = [1.0, 2.0, 0.5, 1.0, 3.0]
    loss = registry.build(dict(type="PolyfocalFocalLoss", use_sigmoid=False, gamma=2.0, class_weight=class_weight))
    pred, labels, weight = detection_batch(3)
    labels = labels.clamp_max(C - 1)
    per_row = pf.focal_loss(pred, labels, gamma=2.0, weight=torch.tensor(class_weight, dtype=torch.float64),
                            reduction="none")
    torch.testing.assert_close(loss(pred, labels, weight), (per_row * weight).mean())


def test_ghm_c_takes_mmdets_label_weight_with_one_hot_or_label_targets(models):
    registry, _ = models
    pred, labels, _ = detection_batch(4)
    one_hot = F.one_hot(labels, C + 1)[:, :C].double()
    label_weight = (torch.arange(N) % 4 != 0).double()
    ghm = registry.build(dict(type="PolyfocalGHMCLoss", bins=10, momentum=0.0, loss_weight=2.0))
    want = 2.0 * pf.GHMCLoss(bins=10, momentum=0.0, bias_correction=False)(pred, one_hot,
                                                                           label_weight.view(-1, 1).expand(N, C))
    torch.testing.assert_close(ghm(pred, one_hot, label_weight.view(-1, 1).expand(N, C)), want)
    torch.testing.assert_close(ghm(pred, labels, label_weight), want)


def test_a_detection_head_trains_with_a_loss_from_the_config(models):
    registry, cfg = models
    loss = registry.build(cfg.loss_cls)
    head = torch.nn.Linear(8, C)
    x, labels = torch.randn(64, 8), torch.randint(0, C + 1, (64,))
    value = loss(head(x), labels, avg_factor=float((labels < C).sum()))
    value.backward()
    assert torch.isfinite(head.weight.grad).all() and head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("config, match", [
    (dict(type="PolyfocalSigmoidFocalLoss", use_sigmoid=False), "does not fit sigmoid_focal_loss, a sigmoid loss"),
    (dict(type="PolyfocalFocalLoss", use_sigmoid=True), "does not fit focal_loss, a softmax loss"),
    (dict(type="PolyfocalSigmoidFocalLoss", activated=True), "`activated=True`"),
    (dict(type="PolyfocalSigmoidFocalLoss", reduction="avg"), "`reduction` must be one of"),
    (dict(type="PolyfocalSigmoidFocalLoss", gamma=-1.0), "`gamma`"),
])
def test_bad_configs_name_the_option(models, config, match):
    registry, _ = models
    with pytest.raises(Exception, match=match):
        registry.build(config)


def test_avg_factor_with_sum_is_refused_as_in_mmdet(models):
    registry, cfg = models
    pred, labels, _ = detection_batch()
    with pytest.raises(ValueError, match="`avg_factor` can not be used with reduction='sum'"):
        registry.build(cfg.loss_cls)(pred, labels, avg_factor=3.0, reduction_override="sum")
