"""timm with polyfocal's losses, against timm's own losses (vision environment only)."""

from __future__ import annotations

import pytest

pytest.importorskip("timm")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timm import create_model  # noqa: E402
from timm.data import Mixup  # noqa: E402
from timm.loss import (LabelSmoothingCrossEntropy, PolyBinaryCrossEntropy,  # noqa: E402
                       PolyCrossEntropy, SoftTargetCrossEntropy, create_classification_loss)
from timm.task import ClassificationTask  # noqa: E402

import polyfocal as pf  # noqa: E402
from polyfocal.integrations.timm import DenseTargetLoss, create_loss  # noqa: E402

pytestmark = pytest.mark.vision
CLASSES = 10


def mixed(smoothing: float = 0.1, rows: int = 8):
    """Logits, class indices and the soft targets timm's Mixup makes of them (mixup, then label smoothing)."""
    torch.manual_seed(0)
    images, labels = torch.randn(rows, 3, 8, 8), torch.randint(0, CLASSES, (rows,))
    _, soft = Mixup(mixup_alpha=0.8, label_smoothing=smoothing, num_classes=CLASSES)(images, labels)
    return (torch.randn(rows, CLASSES) * 3).requires_grad_(), labels, soft


def assert_same_loss(ours, theirs, logits, target, **tolerance):
    mine, other = ours(logits, target), theirs(logits, target)
    torch.testing.assert_close(mine, other, **tolerance)
    torch.testing.assert_close(torch.autograd.grad(mine, logits)[0], torch.autograd.grad(other, logits)[0],
                               **tolerance)


def test_focal_with_gamma_0_is_timms_soft_target_and_label_smoothing_cross_entropy():
    logits, labels, soft = mixed()
    assert not torch.equal(soft, F.one_hot(labels, CLASSES).float())  # mixed and smoothed
    assert_same_loss(create_loss("focal_loss", gamma=0.0, soft_targets=True, smoothing=0.1),
                     SoftTargetCrossEntropy(), logits, soft)
    assert_same_loss(create_loss("focal_loss", gamma=0.0, smoothing=0.1), LabelSmoothingCrossEntropy(0.1),
                     logits, labels)
    # and what timm's own factory makes for the same arguments
    for arguments in [dict(smoothing=0.1), dict(smoothing=0.1, soft_targets=True), {}]:
        target = soft if arguments.get("soft_targets") else labels
        assert_same_loss(create_loss("cross_entropy", **arguments), create_classification_loss(**arguments),
                         logits, target)


@pytest.mark.parametrize("soft_targets", [False, True])
def test_poly1_is_timms_poly_cross_entropy(soft_targets):
    """timm's PolyCrossEntropy takes p_t = sum_c y_c p_c for smoothed and Mixup targets, as polyfocal's
    contract does. Their defaults differ: epsilon = 2 in timm, 1 here."""
    logits, labels, soft = mixed()
    target = soft if soft_targets else labels
    for epsilon in (2.0, -1.0):
        ours = create_loss("poly1", epsilon=epsilon, smoothing=0.1, soft_targets=soft_targets)
        theirs = create_classification_loss("poly", poly_epsilon=epsilon, smoothing=0.1, soft_targets=soft_targets)
        assert isinstance(theirs, PolyCrossEntropy)
        assert_same_loss(ours, theirs, logits, target, rtol=1e-5, atol=1e-6)


def test_multi_label_bce_and_poly1_focal_are_timms():
    torch.manual_seed(1)
    logits = (torch.randn(6, CLASSES) * 3).requires_grad_()
    multi_hot = (torch.rand(6, CLASSES) < 0.3).float()
    assert_same_loss(create_loss("bce", multi_label=True, smoothing=0.1),
                     create_classification_loss(multi_label=True, smoothing=0.1), logits, multi_hot)
    # single-label BCE on class indices: timm's one-hot with s / C off and 1 - s + s / C on
    labels = torch.randint(0, CLASSES, (6,))
    assert_same_loss(create_loss("bce", smoothing=0.2), create_classification_loss(loss_type="bce", smoothing=0.2),
                     logits, labels)
    assert_same_loss(create_loss("poly1_focal_loss", epsilon=1.0, gamma=2.0, alpha=None, multi_label=True,
                                 smoothing=0.1),
                     PolyBinaryCrossEntropy(epsilon=1.0, gamma=2.0, alpha=None, smoothing=0.1), logits, multi_hot,
                     rtol=1e-5, atol=1e-6)


def test_where_poly1_focal_conventions_part():
    """With alpha, timm weights the Poly-1 term by alpha_t as well ("as in the reference"); polyfocal
    follows the PolyLoss paper's Poly-1 focal, whose added term is not alpha-weighted: the two differ by
    exactly epsilon (alpha_t - 1) (1 - p_t)^(gamma + 1)."""
    torch.manual_seed(2)
    logits = torch.randn(5, CLASSES, dtype=torch.float64) * 2
    y = (torch.rand(5, CLASSES) < 0.3).double()
    epsilon, gamma, alpha = 1.5, 2.0, 0.25
    ours = create_loss("poly1_focal_loss", epsilon=epsilon, gamma=gamma, alpha=alpha, multi_label=True)(logits, y)
    theirs = PolyBinaryCrossEntropy(epsilon=epsilon, gamma=gamma, alpha=alpha)(logits, y)
    p = logits.sigmoid()
    one_minus_pt = 1 - (y * p + (1 - y) * (1 - p))
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    torch.testing.assert_close(theirs - ours, (epsilon * (alpha_t - 1) * one_minus_pt ** (gamma + 1)).mean())


@pytest.mark.parametrize("loss, params", [("focal_loss", {"gamma": 2.0}), ("poly1_cross_entropy", {"epsilon": 2.0})])
def test_a_tiny_timm_model_trains_through_classification_task(loss, params):
    torch.manual_seed(3)
    model = create_model("test_resnet", pretrained=False, num_classes=CLASSES)
    task = ClassificationTask(model, criterion=create_loss(loss, smoothing=0.1, **params), verbose=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, CLASSES, (8,))
    losses = []
    for _ in range(8):
        result = task(images, labels)
        optimizer.zero_grad()
        result["loss"].backward()
        optimizer.step()
        losses.append(float(result["loss"].detach()))
    expected = pf.get_loss_function(loss)(result["output"], labels, label_smoothing=0.1, **params)
    torch.testing.assert_close(result["loss"], expected)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0]  # it fits the batch


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match=r"`name` must be a loss of the softmax or sigmoid family.*is distribution"):
        create_loss("distribution_focal_loss")
    with pytest.raises(ValueError, match=r"`multi_label=True` needs a sigmoid-family loss; 'focal' is softmax"):
        create_loss("focal", multi_label=True)
    with pytest.raises(ValueError, match=r"`smoothing` must be in \[0.0, 1.0\)"):
        create_loss("focal", smoothing=1.0)
    with pytest.raises(TypeError, match="timm's `smoothing`, not `label_smoothing`"):
        create_loss("focal", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"unknown loss 'focall'"):
        create_loss("focall")
    criterion = create_loss("sigmoid_focal_loss")
    assert isinstance(criterion, DenseTargetLoss)
    with pytest.raises(ValueError, match=r"`target` holds class index 10, outside \[0, 9\]"):
        criterion(torch.randn(2, CLASSES), torch.tensor([1, 10]))
    with pytest.raises(ValueError, match=r"`target` must be \(N, C\) = \(2, 10\) dense or \(N,\) = \(2,\) class"):
        criterion(torch.randn(2, CLASSES), torch.zeros(3, dtype=torch.long))


def test_the_callers_target_is_not_changed():
    logits = torch.randn(4, CLASSES)
    dense = (torch.rand(4, CLASSES) < 0.5).float()
    kept = dense.clone()
    create_loss("bce", multi_label=True, smoothing=0.2)(logits, dense)
    assert torch.equal(dense, kept)


@pytest.mark.parametrize("gamma_pos, gamma_neg, clip", [(0.0, 4.0, 0.05), (1.0, 4.0, 0.05), (0.5, 2.0, 0.0)])
def test_asymmetric_loss_is_timms_multi_label_asl_on_0_1_targets(gamma_pos, gamma_neg, clip):
    """Summed over the elements (timm's default divides by the batch size); timm clamps probabilities at
    eps = 1e-8, which moderate logits never reach, and computes in float32."""
    from timm.loss import AsymmetricLossMultiLabel

    torch.manual_seed(1)
    logits = (torch.randn(16, CLASSES, dtype=torch.float64) * 3).requires_grad_()
    target = (torch.rand(16, CLASSES) < 0.2).double()
    theirs = AsymmetricLossMultiLabel(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, reduction="sum")
    assert_same_loss(
        lambda x, t: pf.asymmetric_loss(x, t, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, reduction="sum"),
        lambda x, t: theirs(x, t).double(), logits, target, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma_pos, gamma_neg, eps", [(1.0, 4.0, 0.1), (0.0, 2.0, 0.3), (2.0, 4.0, 0.0)])
def test_asymmetric_single_label_loss_is_timms(gamma_pos, gamma_neg, eps):
    from timm.loss import AsymmetricLossSingleLabel

    torch.manual_seed(2)
    logits = (torch.randn(16, CLASSES, dtype=torch.float64) * 3).requires_grad_()
    labels = torch.randint(0, CLASSES, (16,))
    theirs = AsymmetricLossSingleLabel(gamma_pos=gamma_pos, gamma_neg=gamma_neg, eps=eps)
    assert_same_loss(lambda x, t: pf.asymmetric_single_label_loss(x, t, gamma_pos=gamma_pos, gamma_neg=gamma_neg,
                                                                   label_smoothing=eps),
                     theirs, logits, labels, rtol=1e-10, atol=1e-12)
