"""Dual focal loss and AdaFocal beyond the contract suite (which runs them with every loss, on every
engine, against the references in reference.py): the runner-up's definition, AdaFocal's update rule
held to a literal loop over the bins, its state, its distributed update and its bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import polyfocal as pf
from polyfocal.adafocal import adafocal_step, calibration_gaps

from _gloo import needs_gloo, run_ranks


# --- dual focal loss ---------------------------------------------------------------------------------

def test_dual_focal_takes_the_largest_probability_below_the_target_not_the_largest_other():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.5, -1.0, 2.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([1, 1])  # misclassified; then the row's least probable class
    p = torch.softmax(logits, 1)
    below = torch.stack([p[0, 3], torch.zeros((), dtype=torch.float64)])
    p_t = p[[0, 1], [1, 1]]
    want = -((1 - p_t + below) ** 2.0) * torch.log(p_t)
    got = pf.dual_focal_loss(logits, target, gamma=2.0, reduction="none")
    torch.testing.assert_close(got, want)
    # at the row's minimum it is focal loss; with gamma 0, cross-entropy
    torch.testing.assert_close(got[1], pf.focal_loss(logits[1:], target[1:], gamma=2.0))
    torch.testing.assert_close(pf.dual_focal_loss(logits, target, gamma=0.0), pf.cross_entropy(logits, target))


def test_dual_focal_runner_up_gets_a_gradient_and_ties_are_not_below():
    logits = torch.tensor([[2.0, 1.0, 1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    loss = pf.dual_focal_loss(logits, torch.tensor([1]), gamma=2.0)
    p = torch.softmax(logits.detach(), 1)[0]
    want = -((1 - p[1] + p[3]) ** 2.0) * torch.log(p[1])  # class 2 ties class 1: not below it
    torch.testing.assert_close(loss, want)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all()
    assert torch.autograd.gradcheck(lambda x: pf.dual_focal_loss(x, torch.tensor([1]), gamma=2.0),
                                    (torch.tensor([[2.0, 1.0, 0.5, -1.0]], dtype=torch.float64, requires_grad=True),))


# --- AdaFocal: the update rule ------------------------------------------------------------------------

def paper_step(gamma, gap, rate=1.0, switch=0.2, low=-2.0, high=20.0):
    """Ghosh et al. (2022), one bin: multiply by exp(+-lambda E), cross at +-S_th, clip."""
    new = gamma * math.exp(rate * gap) if gamma > 0 else gamma * math.exp(-rate * gap)
    if abs(new) < switch:
        new = -switch if new > 0 else switch
    return min(max(new, low), high)


def test_the_update_rule_equals_the_papers_bin_by_bin():
    gammas = [1.0, 1.0, 0.21, -0.5, -0.21, 0.0, 15.0, -1.9, 3.0]
    gaps = [0.1, -0.3, -0.2, 0.4, 0.1, 0.2, 0.9, -0.5, 0.0]
    got = adafocal_step(torch.tensor(gammas, dtype=torch.float64), torch.tensor(gaps, dtype=torch.float64))
    want = [paper_step(g, e) for g, e in zip(gammas, gaps)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    assert got[2] == -0.2 and got[4] == 0.2 and got[6] == 20.0 and got[7] == -2.0  # crossed, crossed, clipped


def test_calibration_gaps_use_equal_mass_bins_of_the_confidence():
    g = torch.Generator().manual_seed(0)
    confidence = torch.rand(300, generator=g, dtype=torch.float64) * 0.7 + 0.3
    correct = (torch.rand(300, generator=g, dtype=torch.float64) < confidence ** 2).double()
    edges, gaps = calibration_gaps(confidence, correct, 5)
    order = confidence.argsort()
    for b, chunk in enumerate(order.chunk(5)):
        torch.testing.assert_close(gaps[b], confidence[chunk].mean() - correct[chunk].mean())
    assert edges[0] == 0 and edges[-1] == 1 and (edges.diff() >= 0).all()


def validation(n=600, classes=4, temperature=1.0, seed=0):
    """Predictions whose labels are drawn at ``temperature``: over-confident below 1 is not the case
    here; the probabilities are sharpened (over-confident) with temperature < 1 applied after."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g, dtype=torch.float64) * 2
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return torch.softmax(logits / temperature, 1), labels


def test_over_confidence_raises_gamma_and_under_confidence_crosses_to_the_inverse_form():
    sharp = pf.AdaFocalLoss(num_bins=5)
    sharp.update(*validation(temperature=0.4))  # probabilities sharper than the labels: over-confident
    assert (sharp.gammas > 1).sum() >= 4
    flat = pf.AdaFocalLoss(num_bins=5, gamma_initial=0.25)
    for _ in range(3):
        flat.update(*validation(temperature=3.0))  # flatter than the labels: under-confident
    assert (flat.gammas < 0).sum() >= 4
    probs, labels = validation(temperature=3.0)
    confidence = probs.max(1).values
    quantiles = torch.quantile(confidence, torch.linspace(0, 1, 6, dtype=torch.float64))[1:-1]
    torch.testing.assert_close(flat.bin_edges[1:-1], quantiles)


def test_the_module_is_its_function_at_its_state_and_the_state_round_trips():
    module = pf.AdaFocalLoss(num_bins=6)
    module.update(*validation(temperature=0.5))
    x, t = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 4, (32,))
    want = pf.adafocal_loss(x, t, gammas=module.gammas, bin_edges=module.bin_edges)
    torch.testing.assert_close(module(x, t), want)
    restored = pf.AdaFocalLoss(num_bins=6)
    restored.load_state_dict(module.state_dict())
    torch.testing.assert_close(restored(x, t), want)
    assert torch.equal(pf.build_loss("adafocal", gammas=module.gammas).gammas, module.gammas)


def test_the_loss_compiles_whole_with_the_state_as_tensors():
    """The gamma lookup is a device op (no per-example Python, no ``.item()``): the loss and its
    Module compile with ``fullgraph=True``."""
    module = pf.AdaFocalLoss(num_bins=3, gammas=(2.0, -1.0, 0.5), bin_edges=(0.0, 0.3, 0.7, 1.0))
    x, t = torch.randn(16, 5, requires_grad=True), torch.randint(0, 5, (16,))
    compiled = torch.compile(lambda x, t: module(x, t, normalizer=torch.tensor(16.0)), fullgraph=True)
    torch.testing.assert_close(compiled(x, t), module(x, t))


def test_gamma_0_bins_are_cross_entropy_and_negative_ones_the_inverse_form():
    x, t = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 3, (20,))
    torch.testing.assert_close(pf.adafocal_loss(x, t, gammas=(0.0,)), pf.cross_entropy(x, t))
    torch.testing.assert_close(pf.adafocal_loss(x, t, gammas=(-1.5, -1.5)), pf.inverse_focal_loss(x, t, gamma=1.5))


WORKER = Path(__file__).with_name("_adafocal_worker.py")


@pytest.mark.slow
@needs_gloo
def test_distributed_update_gathers_every_ranks_predictions(tmp_path):
    probs, labels = validation(n=301, temperature=0.5)
    ranks = run_ranks(WORKER, {"probs": probs, "labels": labels, "split": 120}, tmp_path)
    alone = pf.AdaFocalLoss(num_bins=7)
    alone.update(probs, labels)
    for gammas, edges in ranks:
        torch.testing.assert_close(gammas, alone.gammas)
        torch.testing.assert_close(edges, alone.bin_edges)


BAD = [
    (lambda m: m.update(torch.rand(10, 3), torch.zeros(9, dtype=torch.long)), ValueError, "`probs` must have shape"),
    (lambda m: m.update(torch.rand(0, 3), torch.zeros(0, dtype=torch.long)), ValueError, "no predictions"),
    (lambda m: m.update(torch.rand(4, 3), torch.zeros(4)), TypeError, "`labels` must be an integer tensor"),
    (lambda m: m.update(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long)), TypeError, "`probs`"),
    (lambda m: pf.AdaFocalLoss(gamma_min=0.5), ValueError, "`gamma_min`"),
    (lambda m: pf.AdaFocalLoss(num_bins=0), ValueError, "`num_bins`"),
    (lambda m: pf.AdaFocalLoss(gammas=(1.0, 2.0), bin_edges=(0.0, 1.0)), ValueError, "one more value than `gammas`"),
    (lambda m: pf.adafocal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), gammas=(1.0, 2.0), bin_edges=(0.0, 0.7, 0.5)),
     ValueError, "`bin_edges` must rise from 0.0 to 1.0"),
    (lambda m: pf.adafocal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), gammas=torch.ones(2, 2)), ValueError,
     "`gammas` must be a non-empty 1-d float tensor"),
    (lambda m: pf.adafocal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), gammas=(1.0, math.nan)), ValueError,
     r"`gammas\[1\]` must be finite"),
]


@pytest.mark.parametrize("call, error, match", BAD)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(pf.AdaFocalLoss(num_bins=3))
