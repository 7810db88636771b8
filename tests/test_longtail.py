"""Long-tailed and multi-label losses: the helpers against the papers' formulas, the losses that read class
counts or priors against the reference with those vectors (the shared suites call them without: C varies
there), their errors, and their Modules. ASL's check against timm's own classes is in tests/vision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import polyfocal as pf
import reference as ref

COUNTS = [500.0, 120.0, 30.0, 6.0, 1.0]
C = len(COUNTS)


def inputs(kind: str, shape=(7, C, 3), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    if kind == "probs":
        return logits, torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1)
    target = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    target.view(-1)[::5] = -100
    return logits, target


def value_and_grad(f, logits):
    x = logits.detach().requires_grad_()
    loss = f(x)
    return loss, torch.autograd.grad(loss.sum(), x)[0]


# --- the helpers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.9999])
def test_class_balanced_weight_is_the_effective_number_formula(beta):
    got = pf.class_balanced_weight(COUNTS, beta=beta)
    raw = [(1 - beta) / (1 - beta ** n) for n in COUNTS]
    want = torch.tensor([w * C / sum(raw) for w in raw])
    assert got.dtype == torch.get_default_dtype()
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-6, atol=0)
    assert math.isclose(float(got.sum()), C, rel_tol=1e-6)


def test_class_balanced_weight_approaches_inverse_frequency_and_keeps_a_float_tensors_dtype():
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    got = pf.class_balanced_weight(counts, beta=1 - 1e-12)
    inverse = (1 / counts) * C / (1 / counts).sum()
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, inverse, rtol=1e-6, atol=0)
    # bincount's int64 counts, and beta^n close to 1 (1 - beta^n computed without cancellation)
    labels = torch.cat([torch.full((int(n),), i) for i, n in enumerate(COUNTS)])
    torch.testing.assert_close(pf.class_balanced_weight(torch.bincount(labels), beta=0.9999),
                               pf.class_balanced_weight(COUNTS, beta=0.9999))


def test_class_prior_and_adjust_logits():
    prior = pf.class_prior(COUNTS)
    torch.testing.assert_close(prior, torch.tensor(COUNTS) / sum(COUNTS))
    logits, _ = inputs("index")
    got = pf.adjust_logits(logits, prior.double(), tau=0.7)
    torch.testing.assert_close(got, logits - 0.7 * torch.log(prior.double()).view(1, C, 1))
    assert got.dtype == logits.dtype
    # on a tie, the adjusted arg-max is the rarer class
    tie = torch.zeros(1, C)
    assert int(pf.adjust_logits(tie, prior).argmax()) == C - 1


@pytest.mark.parametrize("call, message", [
    (lambda: pf.class_balanced_weight([10, 0, 3]),
     r"`counts` must be finite and > 0 for every class; got 0.0 for class 1"),
    (lambda: pf.class_balanced_weight([10, -2]), r"got -2.0 for class 1"),
    (lambda: pf.class_balanced_weight([]), r"`counts` must be a non-empty vector"),
    (lambda: pf.class_balanced_weight([[1, 2]]), r"got shape \(1, 2\)"),
    (lambda: pf.class_balanced_weight([10, 3], beta=1.0), r"`beta` must be in \[0.0, 1.0\); got 1.0"),
    (lambda: pf.class_balanced_weight([10, 3], beta=-0.1), r"`beta` must be in \[0.0, 1.0\)"),
    (lambda: pf.class_prior(torch.tensor([3.0, float("nan")])), r"`counts` must be finite"),
    (lambda: pf.adjust_logits(torch.zeros(2, 3), [0.5, 0.3, 0.1]), r"`prior` must be class probabilities.*sum 0.9"),
    (lambda: pf.adjust_logits(torch.zeros(2, 3), [0.5, 0.5, 0.0]), r"`prior` must be.*the smallest 0.0"),
    (lambda: pf.adjust_logits(torch.zeros(2, 3), [0.5, 0.5]), r"`prior` must have shape \(C,\) = \(3,\); got \(2,\)"),
    (lambda: pf.adjust_logits(torch.zeros(2, 3), [0.2, 0.3, 0.5], tau=-1), r"`tau` must be in \[0.0, inf\]; got -1.0"),
    (lambda: pf.logit_adjusted_cross_entropy(torch.zeros(2, 3), torch.zeros(2).long(), prior=[0.2, 0.2, 0.2]),
     r"`prior` must be class probabilities"),
    (lambda: pf.ldam_loss(torch.zeros(2, 3), torch.zeros(2).long(), class_counts=[4, 2]),
     r"`class_counts` must have one count per class, C = 3; got 2"),
    (lambda: pf.ldam_loss(torch.zeros(2, 3), torch.zeros(2).long(), class_counts=[4, 0, 2]),
     r"`class_counts` must be finite and > 0 for every class; got 0.0 for class 1"),
    (lambda: pf.ldam_loss(torch.zeros(2, 3), torch.zeros(2).long(), scale=0.0), r"`scale` must be in \(0.0, inf\]"),
    (lambda: pf.ldam_loss(torch.zeros(2, 3), torch.zeros(2).long(), max_margin=-0.1), r"`max_margin` must be in"),
    (lambda: pf.ldam_loss(torch.zeros(2, 3), torch.tensor([0, 5])), r"`target` holds class index 5"),
    (lambda: pf.reduced_focal_loss(torch.zeros(2, 3), torch.zeros(2).long(), threshold=1.0),
     r"`threshold` must be in \(0.0, 1.0\)"),
    (lambda: pf.asymmetric_loss(torch.zeros(2, 3), torch.zeros(2, 3), clip=1.0),
     r"`clip` must be in \[0.0, 1.0\); got 1.0"),
    (lambda: pf.asymmetric_loss(torch.zeros(2, 3), torch.zeros(2, 3), clip=-0.01), r"`clip` must be in \[0.0, 1.0\)"),
    (lambda: pf.asymmetric_loss(torch.zeros(2, 3), torch.full((2, 3), 1.5)),
     r"`target` must lie in \[0, 1\]; got a value 1.5"),
    (lambda: pf.asymmetric_loss(torch.zeros(2, 3), torch.zeros(2, 3), gamma_neg=-1),
     r"`gamma_neg` must be in \[0.0, inf\]"),
])
def test_bad_input_is_a_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_callers_counts_and_prior_are_not_changed():
    counts, prior = torch.tensor(COUNTS), pf.class_prior(COUNTS)
    before = counts.clone(), prior.clone()
    logits, target = inputs("index")
    pf.class_balanced_weight(counts)
    pf.ldam_loss(logits, target, class_counts=counts)
    pf.logit_adjusted_cross_entropy(logits, target, prior=prior)
    assert torch.equal(counts, before[0]) and torch.equal(prior, before[1])


# --- logit adjustment and LDAM with their class vectors, against the reference -------------------------

CASES = {
    "logit_adjusted_cross_entropy": (ref.logit_adjusted, {"prior": pf.class_prior(COUNTS).double(), "tau": 1.0}),
    "ldam_loss": (ref.ldam, {"class_counts": COUNTS, "max_margin": 0.5, "scale": 30.0}),
}


#: every option on the engines that run at ordinary sizes; the fused engine (compiled, float64 kernels of
#: these tests alone) once per target form and reduction
ENGINE_CASES = [*[(b, r, s) for b in ("reference", "eager") for r in ("mean", "sum", "none") for s in (0.0, 0.1)],
                ("fused", "mean", 0.1), ("fused", "none", 0.0)]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("backend, reduction, smoothing", ENGINE_CASES)
def test_matches_the_reference_with_class_vectors(name, kind, reduction, smoothing, backend):
    move, params = CASES[name]
    logits, target = inputs(kind)
    weight = torch.rand(C, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    options = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)
    got = value_and_grad(lambda x: pf.get_loss_function(name)(x, target, backend=backend, **options, **params), logits)
    want = value_and_grad(lambda x: ref.softmax_loss(ref.OnLogits(move), x, target, **options, **params), logits)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_balanced_softmax_is_torch_cross_entropy_of_the_moved_logits_and_tau_0_is_cross_entropy():
    logits, target = inputs("index")
    prior = pf.class_prior(COUNTS).double()
    got = pf.logit_adjusted_cross_entropy(logits, target, prior=prior)
    torch.testing.assert_close(got, F.cross_entropy(logits + prior.log().view(1, C, 1), target))
    torch.testing.assert_close(pf.logit_adjusted_cross_entropy(logits, target, prior=prior, tau=0.0),
                               F.cross_entropy(logits, target))


def test_ldam_margins_follow_the_counts_to_the_quarter_power_one_example_at_a_time():
    margins = pf.ldam_margins(COUNTS, 0.5, C)
    assert float(margins.max()) == pytest.approx(0.5) and int(margins.argmax()) == C - 1
    torch.testing.assert_close(margins[0] / margins[1], torch.tensor((120 / 500) ** 0.25, dtype=torch.float64))
    x = torch.tensor([[1.0, 2.0, -0.5, 0.3, 0.0]], dtype=torch.float64)
    for t in range(C):
        z = x.clone()
        z[0, t] -= float(margins[t])
        want = -torch.log_softmax(30 * z, 1)[0, t]
        got = pf.ldam_loss(x, torch.tensor([t]), class_counts=COUNTS)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name, params", [
    ("logit_adjusted_cross_entropy", {"prior": pf.class_prior(COUNTS).double(), "tau": 1.5}),
    ("ldam_loss", {"class_counts": COUNTS, "scale": 3.0}),
])
def test_gradcheck_and_gradgradcheck_with_class_vectors(name, params):
    logits, target = inputs("index", shape=(4, C))
    fn = pf.get_loss_function(name)
    x = logits.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: fn(z, target, **params), (x,))
    assert torch.autograd.gradgradcheck(lambda z: fn(z, target, **params), (x,))


def test_modules_keep_their_class_vectors_as_buffers():
    prior, counts = pf.class_prior(COUNTS), torch.tensor(COUNTS)
    la, ldam = pf.LogitAdjustedCrossEntropyLoss(prior=prior), pf.LDAMLoss(class_counts=counts, scale=10.0)
    assert "prior" in la.state_dict() and "class_counts" in ldam.state_dict()
    logits, target = inputs("index")
    x = logits.float()
    torch.testing.assert_close(la(x, target), pf.logit_adjusted_cross_entropy(x, target, prior=prior))
    torch.testing.assert_close(ldam(x, target), pf.ldam_loss(x, target, class_counts=counts, scale=10.0))
    assert pf.build_loss("ldam", class_counts=COUNTS)(x, target).isfinite()
    with pytest.raises(ValueError, match="`tau` must be in"):
        pf.LogitAdjustedCrossEntropyLoss(prior=prior, tau=-1.0)


# --- reduced focal and ASL: what their forms reduce to --------------------------------------------

def test_reduced_focal_is_cross_entropy_below_the_threshold_and_focal_scaled_above():
    logits, target = inputs("index", shape=(400, C))
    per_row = pf.reduced_focal_loss(logits, target, gamma=2.0, threshold=0.3, reduction="none")
    ce = F.cross_entropy(logits, target, reduction="none")
    focal = pf.focal_loss(logits, target, gamma=2.0, reduction="none") / 0.3 ** 2
    p_t = torch.exp(-ce)
    below = (p_t < 0.3) & (target != -100)
    assert below.any() and (~below & (target != -100)).any()
    torch.testing.assert_close(per_row, torch.where(below, ce, focal).masked_fill(target == -100, 0))
    # at threshold 1/2 the two pieces meet: the loss is continuous in p_t
    at = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    near = pf.reduced_focal_loss(at + torch.tensor([[1e-9, 0.0]]), torch.tensor([0]), reduction="sum")
    torch.testing.assert_close(pf.reduced_focal_loss(at, torch.tensor([0])), near, rtol=1e-8, atol=0)


def test_asl_reduces_to_bce_and_to_focal_where_its_parameters_vanish():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 6, generator=g, dtype=torch.float64) * 3, torch.randint(0, 2, (8, 6), generator=g).double()
    plain = pf.asymmetric_loss(x, y, gamma_pos=0.0, gamma_neg=0.0, clip=0.0)
    torch.testing.assert_close(plain, F.binary_cross_entropy_with_logits(x, y))
    focal = pf.asymmetric_loss(x, y, gamma_pos=2.0, gamma_neg=2.0, clip=0.0)
    torch.testing.assert_close(focal, pf.sigmoid_focal_loss(x, y, gamma=2.0, alpha=None))
    # the clip: a negative with p below it has no loss and no gradient
    easy = torch.tensor([[-4.0]], dtype=torch.float64, requires_grad=True)  # p = 0.018 < 0.05
    loss = pf.asymmetric_loss(easy, torch.zeros(1, 1, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0 and easy.grad.item() == 0


@pytest.mark.parametrize("backend", ["reference", "eager", "fused"])
def test_asl_is_finite_with_finite_gradients_at_saturated_logits(backend):
    x = torch.tensor([[-1e4, -30.0, -3.0, 0.0, 3.0, 30.0, 1e4]] * 2).requires_grad_()
    y = torch.tensor([[0.0] * 7, [1.0] * 7])
    for gamma_neg in (0.0, 0.5, 4.0):
        loss = pf.asymmetric_loss(x, y, gamma_neg=gamma_neg, clip=0.05, reduction="sum", backend=backend)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.isfinite() and grad.isfinite().all()


def test_compare_gives_logit_adjustment_and_ldam_the_training_labels_statistics():
    from polyfocal.experiments import make_task
    from polyfocal.experiments.train import LossSpec, with_class_statistics

    task = make_task("digits-lt")
    counts = torch.bincount(task.y_train, minlength=task.num_classes)
    assert counts.max() > 10 * counts.min()  # long-tailed
    la = with_class_statistics(LossSpec("logit_adjusted", "logit_adjusted_cross_entropy", {}), task)
    torch.testing.assert_close(la.params["prior"], pf.class_prior(counts))
    ldam = with_class_statistics(LossSpec("ldam", "ldam_loss", {"scale": 5.0}), task)
    assert torch.equal(ldam.params["class_counts"], counts.double()) and ldam.params["scale"] == 5.0
    given = LossSpec("ldam", "ldam_loss", {"class_counts": (1.0,) * task.num_classes})
    assert with_class_statistics(given, task) is given
    plain = LossSpec("ce", "cross_entropy", {})
    assert with_class_statistics(plain, task) is plain


# --- seesaw ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend, reduction, smoothing", ENGINE_CASES)
def test_seesaw_with_class_counts_matches_the_reference(backend, reduction, smoothing):
    logits, target = inputs("index")
    weight = torch.rand(C, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    options = dict(weight=weight, reduction=reduction, label_smoothing=smoothing, class_counts=COUNTS, p=0.8, q=2.0)
    got = value_and_grad(lambda x: pf.seesaw_loss(x, target, backend=backend, **options), logits)
    want = value_and_grad(lambda x: ref.softmax_loss(ref.OnLogits(ref.seesaw), x, target, **options), logits)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "eager", "fused"])
def test_seesaw_derivatives_are_cross_entropys_of_the_moved_logits_with_the_compensation_constant(backend):
    """The compensation reads the probabilities held constant (as the authors' code): every derivative, to the
    second, is cross-entropy's at the moved logits, the factors a constant."""
    logits, target = inputs("index", shape=(6, C))
    labels = target.clamp_min(0)
    sigma = torch.softmax(logits, 1)
    ratio = sigma / sigma.gather(1, labels[:, None])
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    n_j, n_i = counts[None, :], counts[labels][:, None]
    mitigation = torch.where(n_j < n_i, (n_j / n_i) ** 0.8, torch.ones(()))
    compensation = torch.where(ratio > 1, ratio ** 2.0, torch.ones(()))
    log_s = torch.log(mitigation * compensation).scatter(1, labels[:, None], 0.0)
    x = logits.detach().requires_grad_()
    got = pf.seesaw_loss(x, target, class_counts=COUNTS, backend=backend)
    want = F.cross_entropy(x + log_s, target)
    torch.testing.assert_close(got, want)
    v = torch.randn_like(x)
    for loss in (got, want):
        (grad,) = torch.autograd.grad(loss, x, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * v).sum(), x)
        loss.hvp = (grad.detach(), hvp)
    torch.testing.assert_close(got.hvp, want.hvp)


def literal_counts_then_loss(batches):
    counts, losses = [0.0] * C, []
    for x, t in batches:
        for label in t.reshape(-1).tolist():
            if label != -100:
                counts[label] += 1
        losses.append(pf.seesaw_loss(x, t, class_counts=list(counts), backend="reference"))
    return losses, torch.tensor(counts, dtype=torch.float64)


def test_seesaw_module_counts_each_batch_before_its_loss():
    batches = [inputs("index", seed=s) for s in range(3)]
    module = pf.SeesawLoss(C)
    losses, counts = literal_counts_then_loss(batches)
    for (x, t), want in zip(batches, losses):
        torch.testing.assert_close(module(x, t), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(module.class_counts, counts)
    lazy = pf.SeesawLoss()
    lazy.load_state_dict(module.state_dict())
    torch.testing.assert_close(lazy.class_counts, counts)
    with pytest.raises(ValueError, match=r"statistics of \[5\] classes; this Module has num_classes=3"):
        pf.SeesawLoss(3).load_state_dict(module.state_dict())


def test_seesaw_takes_class_indices_only_and_checks_its_counts():
    logits, probs = inputs("probs")
    with pytest.raises(TypeError, match=r"`target` of seesaw_loss must be class indices"):
        pf.seesaw_loss(logits, probs)
    with pytest.raises(TypeError, match=r"`target` of seesaw_loss must be class indices"):
        pf.SeesawLoss(C)(logits, probs)
    logits, target = inputs("index")
    with pytest.raises(ValueError, match=r"`class_counts` must be >= 0 for every class"):
        pf.seesaw_loss(logits, target, class_counts=[5.0, -1.0, 2.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=r"`p` must be in \[0.0, inf\]"):
        pf.SeesawLoss(p=-0.5)
    module = pf.SeesawLoss(C)
    with pytest.raises(ValueError, match=r"`target` holds class index 9"):
        module(logits, torch.full_like(target, 9))
    assert float(module.class_counts.sum()) == 0  # nothing counted from a rejected batch


def test_compare_reads_alpha_balanced_as_the_training_labels_class_balanced_weights():
    from polyfocal.experiments import make_task, parse_losses
    from polyfocal.experiments.train import with_class_statistics

    task = make_task("digits-lt")
    (spec,) = parse_losses("focal:alpha=balanced")
    counts = torch.bincount(task.y_train, minlength=task.num_classes)
    torch.testing.assert_close(with_class_statistics(spec, task).params["alpha"],
                               pf.class_balanced_weight(counts, beta=0.9999))
    with pytest.raises(ValueError, match=r"`alpha` must be a real number; got str 'balanced'"):
        parse_losses("sigmoid_focal:alpha=balanced")


def test_ldam_module_switches_on_class_balanced_weights_at_the_drw_epoch():
    logits, target = inputs("index")
    module = pf.LDAMLoss(class_counts=COUNTS, scale=10.0, drw_epoch=3, drw_beta=0.999)
    plain = pf.ldam_loss(logits, target, class_counts=COUNTS, scale=10.0)
    weighted = pf.ldam_loss(logits, target, class_counts=COUNTS, scale=10.0,
                            weight=pf.class_balanced_weight(COUNTS, beta=0.999).double())
    for epoch, want in ((0, plain), (2, plain), (3, weighted), (7, weighted)):
        module.set_epoch(epoch)
        torch.testing.assert_close(module(logits, target), want)
    restored = pf.LDAMLoss(class_counts=COUNTS, scale=10.0, drw_epoch=3, drw_beta=0.999)
    restored.load_state_dict(module.state_dict())
    assert int(restored.epoch) == 7
    torch.testing.assert_close(restored(logits, target), weighted)
    per_call = torch.rand(C, dtype=torch.float64) + 0.5  # a weight given to the call replaces DRW's for that call
    torch.testing.assert_close(module(logits, target, weight=per_call),
                               pf.ldam_loss(logits, target, class_counts=COUNTS, scale=10.0, weight=per_call))
    with pytest.raises(ValueError, match=r"`drw_epoch` re-weights by `class_counts`"):
        pf.LDAMLoss(drw_epoch=3)
    with pytest.raises(ValueError, match=r"`drw_epoch` re-weights by `class_counts`"):
        pf.LDAMLoss(class_counts=COUNTS, drw_epoch=3, weight=torch.ones(C))
    with pytest.raises(ValueError, match=r"`epoch` must be >= 0"):
        module.set_epoch(-1)
    with pytest.raises(ValueError, match=r"`drw_epoch` must be >= 0"):
        pf.LDAMLoss(class_counts=COUNTS, drw_epoch=-2)


def test_head_middle_and_tail_accuracy_are_balanced_accuracy_within_thirds_of_the_classes_by_count():
    from polyfocal.experiments import make_task
    from polyfocal.experiments.metrics import frequency_groups, group_accuracies

    assert frequency_groups([5, 50, 1, 20, 9, 7, 3]) == {"head": [1, 3, 4], "middle": [5, 0], "tail": [6, 2]}
    y_true = np.array([0, 0, 1, 1, 2, 2, 3])
    y_pred = np.array([0, 1, 1, 1, 0, 0, 3])
    got = group_accuracies(y_true, y_pred, {"head": [0, 1], "middle": [2], "tail": [3, 4]})
    assert got == {"head_accuracy": 0.75, "middle_accuracy": 0.0, "tail_accuracy": 1.0}  # class 4 absent: no recall
    task = make_task("digits-lt")
    assert task.metrics[-3:] == ("head_accuracy", "middle_accuracy", "tail_accuracy")
    scores = task.evaluate(torch.nn.functional.one_hot(task.y_test, task.num_classes).float(), "softmax")
    assert all(scores[f"{g}_accuracy"] == 1.0 for g in ("head", "middle", "tail"))
    assert "tail_accuracy" not in make_task("digits-lt", imbalance=1).metrics


# --- focal loss's normalised form ------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "eager", "fused"])
@pytest.mark.parametrize("kind, smoothing", [("index", 0.0), ("index", 0.1), ("probs", 0.0)])
def test_normalized_softmax_focal_divides_by_the_weighted_modulators(backend, kind, smoothing):
    logits, target = inputs(kind)
    weight = torch.rand(C, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.5

    def literal(x):
        p = torch.softmax(x.movedim(1, -1).reshape(-1, C), 1)
        if kind == "index":
            t = target.reshape(-1)
            y = F.one_hot(t.clamp_min(0), C).double() * (t != -100).double()[:, None]
            y = (y * (1 - smoothing) + smoothing / C) * (t != -100).double()[:, None]
        else:
            y = target.movedim(1, -1).reshape(-1, C)
        modulated = y * weight * (1 - p) ** 1.5
        return (modulated * -torch.log(p)).sum() / modulated.sum()

    got = value_and_grad(lambda x: pf.focal_loss(x, target, gamma=1.5, weight=weight, normalized=True,
                                                 label_smoothing=smoothing, backend=backend), logits)
    for a, b in zip(got, value_and_grad(literal, logits)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "eager", "fused"])
def test_normalized_sigmoid_focal_is_segmentation_models_pytorchs_with_its_sum(backend):
    """smp's focal_loss_with_logits, written out: ``pt = exp(-BCE)``, ``(1 - pt)^gamma`` times BCE times
    alpha_t, divided by the modulators' sum, then summed (reduction="sum")."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, C, 7, generator=g, dtype=torch.float64) * 2
    y = (torch.rand(6, C, 7, generator=g) < 0.3).double()

    def smp(z):
        bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        focal_term = (1 - torch.exp(-bce)) ** 2.0
        loss = focal_term * bce * (0.25 * y + 0.75 * (1 - y))
        return (loss / focal_term.sum().clamp_min(1e-6)).sum()

    got = value_and_grad(lambda z: pf.sigmoid_focal_loss(z, y, normalized=True, backend=backend), x)
    for a, b in zip(got, value_and_grad(smp, x)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    labels = torch.randint(0, C + 1, (6, 7), generator=g)
    labels[0, 0] = -100
    z = x.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: pf.sigmoid_focal_loss(v, labels, normalized=True), (z,))
    assert torch.autograd.gradcheck(lambda v: pf.focal_loss(v, labels.clamp(max=C - 1), normalized=True), (z,))


def test_normalized_takes_the_mean_only():
    logits, target = inputs("index")
    with pytest.raises(ValueError, match=r"`normalized=True` divides the sum .* got reduction='sum'"):
        pf.focal_loss(logits, target, normalized=True, reduction="sum")
    with pytest.raises(ValueError, match=r"got reduction='mean', normalizer=4.0"):
        pf.sigmoid_focal_loss(logits, torch.rand_like(logits), normalized=True, normalizer=4.0)
    with pytest.raises(TypeError, match=r"`normalized` must be True or False; got str 'yes'"):
        pf.FocalLoss(normalized="yes")


def test_the_multilabel_task_holds_a_few_long_tailed_labels_per_image_and_scores_map():
    from polyfocal.experiments import make_task
    from polyfocal.experiments.mosaics import label_distribution

    task = make_task("multilabel-toy", n_train=400)
    assert task.kind == "multilabel" and task.families == ("sigmoid",) and task.metrics == ("map",)
    assert task.x_train.shape == (400, 256) and task.y_train.shape == (400, 10)
    per_image = task.y_train.sum(1)
    assert per_image.min() >= 1 and per_image.max() <= 4
    frequency = task.y_train.mean(0)
    assert frequency[0] > 5 * frequency[9]  # label 9 twenty times rarer as a tile's digit
    p = label_distribution(10, 20.0)
    assert abs(p.sum() - 1) < 1e-12 and abs(p[0] / p[9] - 20) < 1e-9
    assert task.evaluate(task.y_test * 20 - 10, "sigmoid")["map"] == 1.0
    assert task.summary()["train_class_counts"] == task.y_train.sum(0).long().tolist()
