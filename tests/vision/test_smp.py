"""segmentation_models_pytorch's Dice, Tversky and focal losses against polyfocal's (vision environment only:
smp needs timm and torchvision). Each of smp's conventions is a recipe of polyfocal's functions, the README's
segmentation table: sums over the whole batch (``batch=True``), a class absent from the target scoring 0 and
still counted in the mean, Tversky's power taken of the classes' mean, the multi-class focal loss each class's
sigmoid focal loss averaged over classes and pixels."""

from __future__ import annotations

import pytest

smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")

import torch  # noqa: E402

import polyfocal as pf  # noqa: E402

pytestmark = pytest.mark.vision
C = 4


def inputs(seed=0):
    """Logits, class indices (the last class absent, three pixels ignored as -1) and a multi-hot target."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, C, 6, 7, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, C - 1, (2, 6, 7), generator=g)
    labels[0, 0, :3] = -1
    multi_hot = (torch.rand(2, C, 6, 7, generator=g) < 0.3).double()
    multi_hot[:, -1] = 0
    return x, labels, multi_hot


def present(counts: torch.Tensor) -> torch.Tensor:
    return (counts > 0).double()


def assert_same(theirs, ours, x, target):
    values = []
    for f in (theirs, ours):
        xin = x.clone().requires_grad_()
        loss = f(xin, target)
        values.append((loss, torch.autograd.grad(loss, xin)[0]))
    torch.testing.assert_close(values[1][0], values[0][0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(values[1][1], values[0][1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_multiclass_dice_and_tversky(ignore, smooth):
    x, labels, _ = inputs()
    labels = labels if ignore else labels.clamp_min(0)
    counts = present(torch.bincount(labels[labels >= 0], minlength=C))
    options = dict(batch=True, smooth_nr=smooth, smooth_dr=smooth, ignore_index=-1, reduction="none")
    smp = dict(smooth=smooth, ignore_index=-1 if ignore else None)
    # smp's Dice is its Tversky score at alpha = beta = 1/2: (tp + s) / (tp + (FP + FN) / 2 + s), smoothed
    # once where polyfocal's (MONAI's) (2 tp + s) / (sum p + sum y + s) smooths the doubled ratio
    assert_same(smp_losses.DiceLoss("multiclass", **smp),
                lambda z, t: (pf.tversky_loss(z, t, alpha=0.5, beta=0.5, **options) * counts).mean(), x, labels)
    if smooth == 0.0:
        assert_same(smp_losses.DiceLoss("multiclass", **smp),
                    lambda z, t: (pf.dice_loss(z, t, **options) * counts).mean(), x, labels)
    assert_same(smp_losses.TverskyLoss("multiclass", alpha=0.3, beta=0.7, gamma=0.75, **smp),
                lambda z, t: ((pf.tversky_loss(z, t, alpha=0.3, beta=0.7, **options) * counts).mean()) ** 0.75,
                x, labels)


def test_multilabel_and_binary_dice_and_tversky():
    x, _, multi_hot = inputs()
    counts = present(multi_hot.sum((0, 2, 3)))
    options = dict(activation="sigmoid", batch=True, smooth_nr=0.0, smooth_dr=0.0)
    assert_same(smp_losses.DiceLoss("multilabel"),
                lambda z, t: (pf.dice_loss(z, t, reduction="none", **options) * counts).mean(), x, multi_hot)
    one, binary = x[:, :1], multi_hot[:, :1]
    assert_same(smp_losses.DiceLoss("binary"), lambda z, t: pf.dice_loss(z, t, **options), one, binary)
    # one class: smp's power of the mean is the focal Tversky loss, its gamma=0.75 polyfocal's 4/3
    assert_same(smp_losses.TverskyLoss("binary", alpha=0.3, beta=0.7, gamma=0.75),
                lambda z, t: pf.focal_tversky_loss(z, t, alpha=0.3, beta=0.7, gamma=4 / 3, **options), one, binary)


@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("ignore", [False, True])
def test_multiclass_focal_is_the_sigmoid_focal_loss_over_classes_and_pixels(alpha, ignore):
    x, labels, _ = inputs()
    labels = labels if ignore else labels.clamp_min(0)
    kept = (labels >= 0).sum()
    assert_same(smp_losses.FocalLoss("multiclass", alpha=alpha, gamma=1.5, ignore_index=-1 if ignore else None),
                lambda z, t: pf.sigmoid_focal_loss(z, t, alpha=alpha, gamma=1.5, ignore_index=-1, reduction="sum")
                / (kept * C), x, labels)


def test_binary_focal_normalized_and_reduced():
    x, _, multi_hot = inputs()
    one, binary = x[:, :1], multi_hot[:, :1]
    assert_same(smp_losses.FocalLoss("binary", alpha=0.25), lambda z, t: pf.sigmoid_focal_loss(z, t), one, binary)
    assert_same(smp_losses.FocalLoss("binary", normalized=True, reduction="sum"),
                lambda z, t: pf.sigmoid_focal_loss(z, t, alpha=None, normalized=True), one, binary)
    assert_same(smp_losses.FocalLoss("binary", reduced_threshold=0.5),
                lambda z, t: pf.sigmoid_reduced_focal_loss(z, t, threshold=0.5), one, binary)
