"""Calibration metrics and temperature scaling (polyfocal.calibration), held to plain references written
from their definitions; the calibration losses' own math is in the contract suite with every loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import polyfocal as pf
from polyfocal import calibration as cal

pytest.importorskip("torchmetrics")


def predictions(n=2000, c=5, seed=0, temperature=1.0):
    """Logits and labels drawn from softmax(logits / temperature): calibrated at that temperature."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    labels = torch.multinomial(torch.softmax(logits / temperature, 1), 1, generator=g).squeeze(1)
    return logits, labels


def binned_reference(confidence, correct, edges, norm="l1"):
    """sum_b |B_b| / N |acc_b - conf_b| (or the max gap) over bins (lo, hi] of ``edges``."""
    gaps, weights = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            gaps.append(abs(correct[inside].mean() - confidence[inside].mean()))
            weights.append(inside.mean())
    return max(gaps) if norm == "max" else float(np.dot(weights, gaps))


@pytest.mark.parametrize("bins", [5, 15])
def test_equal_width_metrics_equal_their_definitions(bins):
    logits, labels = predictions(temperature=0.6)  # over-confident logits: a visible gap
    probs = torch.softmax(logits, 1)
    conf, pred = (v.numpy() for v in probs.max(1))
    correct = (pred == labels.numpy()).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    assert cal.expected_calibration_error(probs, labels, bins=bins) == pytest.approx(
        binned_reference(conf, correct, edges), rel=1e-5)
    assert cal.maximum_calibration_error(probs, labels, bins=bins) == pytest.approx(
        binned_reference(conf, correct, edges, "max"), rel=1e-5)
    classwise = np.mean([binned_reference(probs[:, c].numpy(), (labels.numpy() == c).astype(float), edges)
                         for c in range(probs.shape[1])])
    assert cal.classwise_calibration_error(probs, labels, bins=bins) == pytest.approx(classwise, rel=1e-5)


def test_adaptive_ece_uses_bins_of_equal_mass():
    logits, labels = predictions(n=1000, temperature=0.6, seed=1)
    probs = torch.softmax(logits, 1)
    conf, pred = (v.numpy() for v in probs.max(1))
    order = np.argsort(conf, kind="stable")
    conf, correct = conf[order], (pred == labels.numpy())[order].astype(float)
    want = sum(len(c) / len(conf) * abs(a.mean() - c.mean())
               for c, a in zip(np.array_split(conf, 10), np.array_split(correct, 10)))
    assert cal.adaptive_calibration_error(probs, labels, bins=10) == pytest.approx(want, rel=1e-6)


def test_brier_and_nll_equal_their_formulas():
    logits, labels = predictions(n=300, seed=2)
    probs = torch.softmax(logits, 1)
    one_hot = F.one_hot(labels, probs.shape[1]).double()
    assert cal.brier_score(probs, labels) == pytest.approx(float(((probs - one_hot) ** 2).sum(1).mean()), rel=1e-9)
    assert cal.negative_log_likelihood(probs, labels) == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-9)


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_at():
    logits, labels = predictions(n=20000, temperature=2.0, seed=3)
    t = cal.fit_temperature(logits, labels)
    assert t == pytest.approx(2.0, rel=0.05)
    nll = lambda s: float(F.cross_entropy(logits / s, labels))  # noqa: E731
    assert nll(t) <= min(nll(t * 0.97), nll(t * 1.03), nll(1.0))


def test_temperature_scaling_lowers_the_ece_of_overconfident_logits():
    val_logits, val_labels = predictions(n=4000, temperature=2.5, seed=4)
    test_logits, test_labels = predictions(n=4000, temperature=2.5, seed=5)
    t = cal.fit_temperature(val_logits, val_labels)
    before = cal.calibration_report(test_logits, test_labels)
    after = cal.calibration_report(test_logits, test_labels, temperature=t)
    assert after.ece < before.ece / 3 and after.nll < before.nll
    assert after.accuracy == before.accuracy  # a temperature never changes the argmax
    assert set(after.as_dict()) == {"temperature", "accuracy", "ece", "adaptive_ece", "classwise_ece", "mce", "nll",
                                    "brier"}


@pytest.mark.parametrize("call, match", [
    (lambda p, y: cal.expected_calibration_error(p[:, :1], y), "`probs` must be a float tensor of probabilities"),
    (lambda p, y: cal.expected_calibration_error(p, y[:3]), "`labels` must be class indices of shape \\(8,\\)"),
    (lambda p, y: cal.expected_calibration_error(p, y + 5), "`labels` must lie in \\[0, 3\\]"),
    (lambda p, y: cal.expected_calibration_error(p * 2, y), "`probs`"),
    (lambda p, y: cal.adaptive_calibration_error(p, y, bins=0), "`bins` must be >= 1"),
    (lambda p, y: cal.calibration_report(p.log(), y, temperature=0.0), "`temperature`"),
    (lambda p, y: cal.fit_temperature(p.log()[:0], y[:0]), "no examples"),
])
def test_bad_input_names_the_argument(call, match):
    probs = torch.softmax(torch.randn(8, 4), 1)
    labels = torch.randint(0, 4, (8,))
    with pytest.raises((ValueError, TypeError), match=match):
        call(probs, labels)


# --- the calibration losses' own contract: schedules -------------------------------------------------

@pytest.mark.parametrize("schedule, match", [
    (((0.5, 2.0), (0.3, 1.0), (1.0, 0.0)), "bounds must increase in p_t and end at 1.0"),
    (((0.2, 5.0), (0.9, 3.0)), "bounds must increase in p_t and end at 1.0"),
    (((0.2, -1.0), (1.0, 3.0)), "`gamma_schedule's gamma` must be in \\[0.0, inf\\]; got -1.0"),
    (((1.5, 1.0),), "`gamma_schedule's bound`"),
    ((0.2, 5.0), "`gamma_schedule` must be a sequence of \\(bound, gamma\\) pairs"),
])
def test_a_gamma_schedule_must_be_a_step_function_of_p_t(schedule, match):
    with pytest.raises(ValueError, match=match):
        pf.sample_dependent_focal_loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), gamma_schedule=schedule)
    with pytest.raises(ValueError, match=match):
        pf.SampleDependentFocalLoss(gamma_schedule=schedule)


def test_flsd_53_is_focal_loss_with_gamma_5_then_3():
    logits = torch.tensor([[0.0, 3.0, 0.0], [3.0, 0.0, 0.0]])  # p_t about 0.04 and 0.9
    target = torch.tensor([0, 0])
    got = pf.sample_dependent_focal_loss(logits, target, reduction="none")
    want = torch.stack([pf.focal_loss(logits[:1], target[:1], gamma=5.0, reduction="none")[0],
                        pf.focal_loss(logits[1:], target[1:], gamma=3.0, reduction="none")[0]])
    torch.testing.assert_close(got, want)


def test_inverse_focal_with_gamma_0_is_cross_entropy_and_weighs_confident_examples_more():
    x, t = torch.randn(16, 5), torch.randint(0, 5, (16,))
    torch.testing.assert_close(pf.inverse_focal_loss(x, t, gamma=0.0), pf.cross_entropy(x, t))
    ratio = pf.inverse_focal_loss(x, t, gamma=2.0, reduction="none") / pf.cross_entropy(x, t, reduction="none")
    p_t = torch.softmax(x, 1).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(ratio, (1 + p_t) ** 2)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.0, 5.0])
def test_focal_loss_is_at_least_kl_minus_gamma_entropy(gamma):
    logits, labels = predictions(n=500, c=6, seed=6)
    probs = torch.softmax(logits * 2, 1)
    b = cal.focal_bound(probs, labels, gamma=gamma)
    p = probs.numpy()
    p_t = p[np.arange(len(p)), labels.numpy()]
    np.testing.assert_allclose(b.focal, -(1 - p_t) ** gamma * np.log(p_t), rtol=1e-10)
    np.testing.assert_allclose(b.entropy, -(p * np.log(p)).sum(1), rtol=1e-10)
    np.testing.assert_allclose(b.bound, -np.log(p_t) - gamma * b.entropy, rtol=1e-10)
    assert (b.focal >= b.bound - 1e-12).all()


def test_the_bound_needs_gamma_of_at_least_1():
    probs = torch.softmax(torch.randn(4, 3), 1)
    with pytest.raises(ValueError, match="`gamma` must be in \\[1.0, inf\\]"):
        cal.focal_bound(probs, torch.tensor([0, 1, 2, 0]), gamma=0.5)
