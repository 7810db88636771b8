"""polyfocal.integrations.monai against MONAI's own losses (installed from the package index in the test
extras), every option they share, values and gradients, float64; MONAI's warnings and errors kept."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

import polyfocal.integrations.monai as pm

monai_losses = pytest.importorskip("monai.losses")

N, C = 2, 3


def inputs(c=C, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, c, 5, 6, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, c, (N, 1, 5, 6), generator=g)
    labels[0, 0, 0, :3] = c - 1
    return x, labels, F.one_hot(labels[:, 0], c).movedim(-1, 1).double()


def assert_same(name, options, x, target, rtol=1e-9, atol=1e-12):
    """MONAI's and polyfocal's class of that name, built with ``options``, agree in value (and shape) and
    in the gradient of the input."""
    theirs, ours = getattr(monai_losses, name)(**options), getattr(pm, name)(**options)
    results = []
    for loss in (theirs, ours):
        xin = x.clone().requires_grad_()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = loss(xin, target)
        (grad,) = torch.autograd.grad(value.sum(), xin)
        results.append((value, grad, sorted(str(w.message) for w in caught)))
    (want, want_grad, want_warnings), (got, got_grad, got_warnings) = results
    assert got.shape == want.shape, (options, got.shape, want.shape)
    torch.testing.assert_close(got, want.to(got.dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(got_grad, want_grad, rtol=rtol, atol=atol)
    assert got_warnings == want_warnings


ACTIVATIONS = [{"sigmoid": True}, {"softmax": True}, {}]
SHARED = [dict(include_background=i, to_onehot_y=o, reduction=r, batch=b, ignore_index=ii)
          for i, o, r, b, ii in itertools.product((True, False), (True, False), ("mean", "sum", "none"), (False, True),
                                                  (None, 1, -1))]


def target_for(options, labels, hot):
    return labels if options.get("to_onehot_y") else hot


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("options", SHARED, ids=str)
def test_dice_loss(activation, options):
    x, labels, hot = inputs()
    x = x if activation else x.softmax(1)  # no activation: MONAI takes probabilities
    target = target_for(options, labels, hot)
    weight = [0.5, 1.0, 2.0] if options["include_background"] else [1.0, 2.0]
    for extra in ({}, {"jaccard": True}, {"weight": weight}, {"smooth_nr": 0.0, "smooth_dr": 1e-3}):
        assert_same("DiceLoss", {**options, **activation, **extra}, x, target)
    # MONAI's squared form sums norms and their difference: its own rounding is about 1e-8 here
    assert_same("DiceLoss", {**options, **activation, "squared_pred": True}, x, target, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("options", SHARED, ids=str)
def test_tversky_loss(activation, options):
    x, labels, hot = inputs()
    x = x if activation else x.softmax(1)
    for extra in ({}, {"alpha": 0.3, "beta": 0.7}):
        assert_same("TverskyLoss", {**options, **activation, **extra}, x, target_for(options, labels, hot))


# MONAI computes its focal losses in fp32 (input.float()); polyfocal's drop-in in the input's float64
FP32 = dict(rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("options", [dict(include_background=i, to_onehot_y=o, reduction=r, ignore_index=ii)
                                     for i, o, r, ii in itertools.product((True, False), (True, False),
                                                                          ("mean", "sum", "none"), (None, 1, -1))],
                         ids=str)
@pytest.mark.parametrize("use_softmax", [False, True])
def test_focal_loss(options, use_softmax):
    x, labels, hot = inputs()
    per_class = [0.2, 0.3, 0.5] if options["include_background"] else [0.3, 0.5]
    weight = [1.0, 2.0, 0.5] if options["include_background"] else [2.0, 0.5]
    for extra in ({}, {"alpha": 0.25}, {"alpha": per_class, "weight": weight}, {"weight": 2.0, "gamma": 0.5}):
        assert_same("FocalLoss", {**options, "use_softmax": use_softmax, "gamma": 1.5, **extra}, x,
                    target_for(options, labels, hot), **FP32)


@pytest.mark.parametrize("options", [dict(include_background=i, to_onehot_y=o, reduction=r, batch=b, **a)
                                     for i, o, r, b, a in itertools.product((True, False), (True, False),
                                                                            ("mean", "sum"), (False, True),
                                                                            ({"sigmoid": True}, {"softmax": True}))],
                         ids=str)
def test_dice_focal_loss(options):
    x, labels, hot = inputs()
    assert_same("DiceFocalLoss", {**options, "gamma": 1.5, "lambda_dice": 0.7, "lambda_focal": 1.3}, x,
                target_for(options, labels, hot), **FP32)
    weight = [1.0, 2.0, 0.5] if options["include_background"] else [2.0, 0.5]
    assert_same("DiceFocalLoss", {**options, "weight": weight, "alpha": 0.25}, x, target_for(options, labels, hot),
                **FP32)


@pytest.mark.parametrize("to_onehot_y, channels, weight, gamma, delta",
                         list(itertools.product((True, False), (1, 2), (0.5, 0.3), (0.5, 0.25), (0.7, 0.6))))
def test_asymmetric_unified_focal_loss(to_onehot_y, channels, weight, gamma, delta):
    x, labels, hot = inputs(c=2)
    p = x.softmax(1) if channels == 2 else x[:, :1].sigmoid()
    target = labels if (to_onehot_y or channels == 1) else hot
    assert_same("AsymmetricUnifiedFocalLoss", dict(to_onehot_y=to_onehot_y, weight=weight, gamma=gamma, delta=delta),
                p, target)


def test_asymmetric_unified_focal_loss_with_ignored_pixels():
    """MONAI leaves ignored pixels in with their probabilities clamped to 1e-7 (a false positive of 1e-7
    each); polyfocal leaves them out: the two differ by that much."""
    x, labels, _ = inputs(c=2)
    labels[1, 0, 2] = 5
    assert_same("AsymmetricUnifiedFocalLoss", dict(to_onehot_y=True, ignore_index=5), x.softmax(1), labels,
                rtol=1e-6, atol=1e-7)


def test_the_multi_class_unified_focal_loss_is_polyfocal_s():
    import polyfocal as pf

    x, labels, hot = inputs()
    for target, to_onehot_y in ((labels, True), (hot, False)):
        torch.testing.assert_close(pm.UnifiedFocalLoss(to_onehot_y=to_onehot_y, num_classes=3)(x, target),
                                   pf.unified_focal_loss(x, labels[:, 0]))
    x1 = x[:, :1]
    torch.testing.assert_close(pm.UnifiedFocalLoss(sigmoid=True, form="symmetric")(x1, labels.clamp_max(1)),
                               pf.unified_focal_loss(x1, labels[:, 0].clamp_max(1), activation="sigmoid",
                                                     form="symmetric"))


def test_monai_s_errors_are_kept():
    x, labels, hot = inputs()
    for name in ("DiceLoss", "TverskyLoss"):
        with pytest.raises(ValueError, match="Incompatible values"):
            getattr(pm, name)(sigmoid=True, softmax=True)(x, hot)
        with pytest.raises(ValueError, match="different shape"):
            getattr(pm, name)()(x, labels.double())
    with pytest.raises(ValueError, match="`weight` sequence"):
        pm.DiceLoss(weight=[1.0, 2.0])(x, hot)
    with pytest.raises(ValueError, match="no less than 0"):
        pm.DiceLoss(weight=[1.0, -2.0, 1.0])(x, hot)
    with pytest.raises(ValueError, match="length of alpha"):
        pm.FocalLoss(alpha=[0.5, 0.5])(x, hot)
    with pytest.raises(ValueError, match="`soft_label=True`"):
        pm.DiceLoss(soft_label=True)
    with pytest.raises(ValueError, match="`num_classes` must be 2"):
        pm.AsymmetricUnifiedFocalLoss(num_classes=3)
    with pytest.raises(ValueError, match="input shape must be 4 or 5"):
        pm.AsymmetricUnifiedFocalLoss()(x[:, :, 0], hot[:, :, 0])


def test_monai_is_not_needed_to_import_the_drop_ins():
    import subprocess
    import sys

    code = ("import sys; sys.modules['monai'] = None; import polyfocal.integrations.monai as m, torch; "
            "print(float(m.DiceLoss(softmax=True)(torch.zeros(1, 2, 3, 3), torch.ones(1, 2, 3, 3))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) == pytest.approx(1 / 3, rel=1e-5)
