"""The region family (Dice, Tversky, focal Tversky, Dice-focal, Tversky-focal, unified focal) against the
references written from the papers (tests/reference.py), values and gradients in float64; its options,
identities, extremes, 3-d volumes and bad input. MONAI's drop-ins: test_monai.py."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import polyfocal as pf
import reference as ref
from _gloo import needs_gloo, run_ranks

WORKER = Path(__file__).with_name("_region_worker.py")


@pytest.fixture(autouse=True, params=["reference", "eager"])
def engine(request, monkeypatch):
    """Every test twice: autograd's gradients of the sums, and the written-out ones (what ``"auto"`` takes
    for large logits), on blocks of a few positions so that the small inputs here span several."""
    from polyfocal import _region_sums

    monkeypatch.setattr(_region_sums, "_MIN_BLOCK", 8)
    monkeypatch.setattr(_region_sums, "_BLOCKS", 64)
    with pf.use_backend(request.param):
        yield request.param


def logits_and_targets(n=3, c=4, spatial=(5, 6), seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *spatial, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, c, (n, *spatial), generator=g)
    labels[0, 0, :2] = -100
    soft = torch.rand(n, c, *spatial, generator=g, dtype=torch.float64).softmax(1)
    return x, labels, soft


def value_and_grad(f, x, target, **kwargs):
    x = x.clone().requires_grad_()
    loss = f(x, target, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss, grad


def assert_matches(f, reference, x, target, **kwargs):
    got, want = value_and_grad(f, x, target, **kwargs), value_and_grad(reference, x, target, **kwargs)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-9, atol=1e-12)


TARGETS = ("index", "one_hot", "soft")
OPTIONS = [dict(batch=b, include_background=i, reduction=r) for b, i, r in
           itertools.product((False, True), (True, False), ("mean", "sum", "none"))]


def target_of(form, labels, soft, c):
    if form == "index":
        return labels
    hot = F.one_hot(labels.clamp_min(0), c).movedim(-1, 1).to(soft.dtype)
    return hot if form == "one_hot" else soft


@pytest.mark.parametrize("form", TARGETS)
@pytest.mark.parametrize("activation", ["softmax", "sigmoid", None])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_dice_and_tversky_match_the_references(form, activation, options):
    x, labels, soft = logits_and_targets()
    x = x.softmax(1) if activation is None else x
    target = target_of(form, labels, soft, x.shape[1])
    common = dict(activation=activation, **options)
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    assert_matches(pf.dice_loss, ref.dice, x, target, **common)
    assert_matches(pf.dice_loss, ref.dice, x, target, squared_pred=True, weight=weight, **common)
    assert_matches(pf.dice_loss, ref.dice, x, target, jaccard=True, smooth_nr=0.0, smooth_dr=1e-3, **common)
    assert_matches(pf.tversky_loss, ref.tversky, x, target, alpha=0.3, beta=0.7, weight=weight, **common)
    assert_matches(pf.focal_tversky_loss, ref.tversky, x, target, alpha=0.3, beta=0.7, gamma=4 / 3, **common)


def test_sigmoid_class_indices_take_c_as_no_class():
    x, labels, _ = logits_and_targets(c=3)
    labels[1, 2] = 3  # no class at these pixels
    assert_matches(pf.dice_loss, ref.dice, x, labels, activation="sigmoid")
    assert_matches(pf.focal_tversky_loss, ref.tversky, x, labels, activation="sigmoid", alpha=0.3, beta=0.7, gamma=0.75)


def test_a_mask_counts_only_its_pixels_with_any_target():
    x, labels, soft = logits_and_targets()
    mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(1)) < 0.7
    for target in (labels, soft):
        assert_matches(pf.dice_loss, ref.dice, x, target, mask=mask)
        assert_matches(pf.tversky_loss, ref.tversky, x, target, mask=mask, beta=0.9, alpha=0.1, batch=True)


def test_ignored_pixels_change_nothing_else():
    """An ignored pixel is as if it were not there: the loss of the other pixels (a 1-pixel-wide volume
    cut out), in the region sums and the pixel term."""
    x, labels, _ = logits_and_targets(spatial=(1, 8))
    labels[:, 0, 5:] = -100
    kept = (x[..., :5], labels[..., :5])
    for f in (pf.dice_loss, pf.tversky_focal_loss, pf.unified_focal_loss):
        torch.testing.assert_close(f(x, labels), f(*kept))


@pytest.mark.parametrize("form", TARGETS)
@pytest.mark.parametrize("unified_form", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("batch", [False, True])
def test_unified_focal_matches_the_reference(form, unified_form, batch):
    x, labels, soft = logits_and_targets()
    target = target_of(form, labels, soft, x.shape[1])
    assert_matches(pf.unified_focal_loss, ref.unified, x, target, form=unified_form, batch=batch)
    assert_matches(pf.unified_focal_loss, ref.unified, x, target, form=unified_form, lambda_focal=0.2, delta=0.7,
                   gamma=0.25, smooth_nr=1e-3, smooth_dr=1e-3)


@pytest.mark.parametrize("unified_form", ["asymmetric", "symmetric"])
def test_binary_unified_focal_from_one_channel(unified_form):
    """One sigmoid channel is two softmax classes with logits (0, x); probabilities in: (1 - p, p)."""
    x, labels, _ = logits_and_targets(c=2)
    one = x[:, 1:] - x[:, :1]
    binary = labels.clamp_min(0)
    both = pf.unified_focal_loss(x, binary, form=unified_form)
    torch.testing.assert_close(pf.unified_focal_loss(one, binary, activation="sigmoid", form=unified_form), both)
    torch.testing.assert_close(pf.unified_focal_loss(one.sigmoid(), binary, activation=None, form=unified_form), both)
    dense = binary.unsqueeze(1).double()
    torch.testing.assert_close(pf.unified_focal_loss(one, dense, activation="sigmoid", form=unified_form), both)
    assert_matches(pf.unified_focal_loss, ref.unified, one, dense, activation="sigmoid", form=unified_form)


def test_unified_focal_at_gamma_zero_and_lambda_one_is_weighted_cross_entropy():
    x, labels, _ = logits_and_targets()
    weight = torch.tensor([0.4, 0.6, 0.6, 0.6], dtype=torch.float64)
    ce = F.cross_entropy(x, labels, weight=weight, reduction="sum") / (labels != -100).sum()
    for form in ("asymmetric", "symmetric"):
        torch.testing.assert_close(pf.unified_focal_loss(x, labels, form=form, gamma=0.0, lambda_focal=1.0), ce)


def test_identities_between_the_region_losses():
    x, labels, _ = logits_and_targets()
    tversky = pf.tversky_loss(x, labels, alpha=0.5, beta=0.5, smooth_nr=0.0, smooth_dr=0.0)
    torch.testing.assert_close(pf.dice_loss(x, labels, smooth_nr=0.0, smooth_dr=0.0), tversky)
    torch.testing.assert_close(pf.focal_tversky_loss(x, labels, alpha=0.4, beta=0.6, gamma=1.0),
                               pf.tversky_loss(x, labels, alpha=0.4, beta=0.6))
    jaccard = pf.dice_loss(x, labels, jaccard=True, smooth_nr=0.0, smooth_dr=0.0, reduction="none")
    torch.testing.assert_close(jaccard, pf.tversky_loss(x, labels, alpha=1.0, beta=1.0, smooth_nr=0.0, smooth_dr=0.0,
                                                        reduction="none"))


@pytest.mark.parametrize("pixel_loss, params", [(None, {}), ("focal_loss", {"gamma": 1.0, "alpha": 0.5}),
                                                ("cross_entropy", {"label_smoothing": 0.1}),
                                                ("poly1_cross_entropy", {"epsilon": 2.0})])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dice_focal_and_tversky_focal_are_their_two_terms(pixel_loss, params, reduction):
    x, labels, _ = logits_and_targets()
    pixel = pf.get_loss_function(pixel_loss or "focal_loss")(x, labels, reduction=reduction, **params)
    options = dict(pixel_loss=pixel_loss, pixel_params=params, lambda_region=0.7, lambda_pixel=1.3,
                   reduction=reduction)
    torch.testing.assert_close(pf.dice_focal_loss(x, labels, batch=True, **options),
                               0.7 * pf.dice_loss(x, labels, batch=True, reduction=reduction) + 1.3 * pixel)
    torch.testing.assert_close(pf.tversky_focal_loss(x, labels, alpha=0.2, beta=0.8, **options),
                               0.7 * pf.tversky_loss(x, labels, alpha=0.2, beta=0.8, reduction=reduction) + 1.3 * pixel)


def test_sigmoid_dice_focal_takes_a_sigmoid_pixel_loss():
    x, labels, _ = logits_and_targets()
    want = pf.dice_loss(x, labels, activation="sigmoid") + pf.sigmoid_focal_loss(x, labels)
    torch.testing.assert_close(pf.dice_focal_loss(x, labels, activation="sigmoid"), want)
    with pytest.raises(ValueError, match="`pixel_loss` must name a sigmoid-family loss"):
        pf.dice_focal_loss(x, labels, activation="sigmoid", pixel_loss="focal_loss")


def test_three_dimensional_volumes():
    x, labels, soft = logits_and_targets(n=2, c=3, spatial=(3, 4, 5))
    for target in (labels, soft):
        assert_matches(pf.dice_loss, ref.dice, x, target, batch=True)
        assert_matches(pf.focal_tversky_loss, ref.tversky, x, target, alpha=0.3, beta=0.7, gamma=4 / 3)
        assert_matches(pf.unified_focal_loss, ref.unified, x, target)


def test_a_class_with_no_counted_pixel_and_no_smoothing_is_zero_not_nan():
    x, labels, _ = logits_and_targets(n=1)
    labels[:] = -100
    for f in (pf.dice_loss, pf.tversky_loss, pf.focal_tversky_loss):
        loss, grad = value_and_grad(f, x, labels, smooth_nr=0.0, smooth_dr=0.0, reduction="none")
        assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(grad, torch.zeros_like(grad))
    loss, grad = value_and_grad(pf.unified_focal_loss, x, labels, smooth_nr=0.0, smooth_dr=0.0)
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


def test_a_perfect_prediction_has_zero_focal_tversky_loss_and_finite_gradient():
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    x = F.one_hot(labels, 3).movedim(-1, 1).double() * 1e4
    for f in (pf.focal_tversky_loss, pf.unified_focal_loss):
        loss, grad = value_and_grad(f, x, labels, smooth_nr=0.0, smooth_dr=0.0)
        assert abs(loss.item()) < 1e-12 and torch.isfinite(grad).all()


def test_fp32_within_1e6_of_float64():
    x, labels, soft = logits_and_targets(n=2, c=4, spatial=(64, 64))
    for f in (pf.dice_loss, pf.focal_tversky_loss, pf.unified_focal_loss, pf.dice_focal_loss):
        for target in (labels, soft):
            v64, g64 = value_and_grad(f, x, target)
            v32, g32 = value_and_grad(f, x.float(), target.float() if target.is_floating_point() else target)
            assert abs(v32.double() - v64).item() <= 1e-6 * abs(v64).item()
            assert ((g32.double() - g64).norm() / g64.norm()).item() <= 1e-5, f.__name__


def saved_for_backward(f, x, target) -> list[int]:
    """The sizes in bytes of the storages ``f(x, target)`` saves for backward, beyond its inputs'."""
    inputs, saved = {x.untyped_storage().data_ptr(), target.untyped_storage().data_ptr()}, {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in inputs:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        f(x, target)
    return list(saved.values())


def test_written_out_gradients_keep_no_logits_sized_tensor(engine):
    """Written out, a region term saves no logits-sized tensor for backward (only per-pixel ones: the
    labels with their ignored pixels at 0, the mask) and the unified focal loss one, its focal part's
    gradient; autograd's keeps the probabilities at least. A float one-hot target (the unified focal part
    takes its labels) too."""
    x, labels, _ = logits_and_targets(n=2, c=4, spatial=(16, 16))
    x.requires_grad_()
    logits = x.numel() * x.element_size()
    one_hot = target_of("one_hot", labels.clamp_min(0), x, 4)
    for target in (labels, one_hot):
        for f, written in ((pf.dice_loss, 0), (pf.focal_tversky_loss, 0), (pf.unified_focal_loss, 1)):
            large = sum(size >= logits for size in saved_for_backward(f, x, target))
            assert large == written if engine == "eager" else large >= 1, (f.__name__, target.dtype, large)


def test_autocast_and_half_precision_compute_in_fp32():
    x, labels, _ = logits_and_targets()
    for f in (pf.dice_loss, pf.unified_focal_loss, pf.dice_focal_loss):
        half = f(x.to(torch.bfloat16), labels)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), f(x.to(torch.bfloat16).float(), labels), rtol=1e-2, atol=1e-2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert f(x.to(torch.bfloat16), labels).dtype == torch.float32


def test_gradcheck_and_gradgradcheck():
    x, labels, soft = logits_and_targets(n=2, c=3, spatial=(2, 3), scale=1.0)
    for f, kwargs in ((pf.dice_loss, {"batch": True}), (pf.focal_tversky_loss, {}), (pf.unified_focal_loss, {}),
                      (pf.dice_focal_loss, {}), (pf.tversky_focal_loss, {"activation": "sigmoid"})):
        for target in (labels, soft):
            inputs = x.clone().requires_grad_()
            assert torch.autograd.gradcheck(lambda z: f(z, target, **kwargs), (inputs,))
            assert torch.autograd.gradgradcheck(lambda z: f(z, target, **kwargs), (inputs,))


def test_one_pass_per_sum_without_a_loop_over_classes(monkeypatch):
    """The sums of 64 classes take as many operations as those of 2: no Python loop over classes or images
    (the blocks of positions, the one loop, at their own size: one block for inputs this small)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from polyfocal import _region_sums

    monkeypatch.setattr(_region_sums, "_MIN_BLOCK", 1 << 18)

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for n, c in ((1, 2), (8, 64)):
        x, labels, _ = logits_and_targets(n=n, c=c)
        Count.ops = 0
        with Count():
            pf.dice_loss(x, labels, validate=False)
        counts.append(Count.ops)
    assert counts[0] == counts[1]


BAD = [
    (pf.dice_loss, dict(target=torch.zeros(2, 4, 5, dtype=torch.long)), ValueError, "`target` must have shape \\(N"),
    (pf.dice_loss, dict(target=torch.zeros(2, 3, 4, 4)), ValueError, "the shape of `logits`"),
    (pf.dice_loss, dict(logits=torch.zeros(2, 4)), ValueError, "at least one spatial dimension"),
    (pf.dice_loss, dict(activation="relu"), ValueError, "`activation` must be one of"),
    (pf.dice_loss, dict(logits=torch.zeros(2, 1, 4, 4)), ValueError, "C >= 2 channels for activation='softmax'"),
    (pf.dice_loss, dict(logits=torch.zeros(2, 1, 4, 4), activation="sigmoid", include_background=False),
     ValueError, "`include_background=False` leaves out channel 0, the only one"),
    (pf.tversky_loss, dict(alpha=0.0, beta=0.0), ValueError, "`alpha \\+ beta` must be > 0"),
    (pf.tversky_loss, dict(alpha=-0.1), ValueError, "`alpha` must be in"),
    (pf.focal_tversky_loss, dict(gamma=-1.0), ValueError, "`gamma` must be in \\(0.0, inf\\]; got -1.0"),
    (pf.focal_tversky_loss, dict(gamma=0.0), ValueError, "`gamma` must be in \\(0.0"),
    (pf.dice_loss, dict(weight=torch.ones(3)), ValueError, "`weight` must have shape \\(C,\\) = \\(4,\\); got"),
    (pf.dice_loss, dict(weight=torch.tensor([1.0, -1.0, 1.0, 1.0])), ValueError, "`weight` must be >= 0"),
    (pf.dice_loss, dict(mask=torch.ones(2, 4, 4)), TypeError, "`mask` must be a bool tensor"),
    (pf.dice_loss, dict(mask=torch.ones(2, 5, 4, dtype=torch.bool)), ValueError, "`mask` must have shape"),
    (pf.dice_loss, dict(target=torch.full((2, 4, 4), 4)), ValueError, "`target` holds class index 4"),
    (pf.dice_loss, dict(target=torch.full((2, 4, 4, 4), 2.0)), ValueError, "`target`"),
    (pf.dice_loss, dict(reduction="avg"), ValueError, "`reduction` must be one of"),
    (pf.dice_loss, dict(smooth_dr=-1.0), ValueError, "`smooth_dr` must be in"),
    (pf.dice_focal_loss, dict(reduction="none"), ValueError, "reduction='none'"),
    (pf.dice_focal_loss, dict(pixel_loss="sigmoid_focal_loss"), ValueError, "`pixel_loss` must name a softmax"),
    (pf.dice_focal_loss, dict(pixel_loss="nope"), ValueError, "`pixel_loss` names an unknown loss 'nope'"),
    (pf.dice_focal_loss, dict(pixel_params={"reduction": "sum"}), ValueError, "`pixel_params` must not set"),
    (pf.dice_focal_loss, dict(pixel_params=[1]), TypeError, "`pixel_params` must be a mapping"),
    (pf.dice_focal_loss, dict(activation=None), ValueError, "'softmax' or 'sigmoid' for a loss with a per-pixel"),
    (pf.dice_focal_loss, dict(lambda_pixel=-1.0), ValueError, "`lambda_pixel` must be in"),
    (pf.unified_focal_loss, dict(form="both"), ValueError, "`form` must be one of"),
    (pf.unified_focal_loss, dict(gamma=1.5), ValueError, "`gamma` must be in \\[0.0, 1.0\\]"),
    (pf.unified_focal_loss, dict(delta=-0.5), ValueError, "`delta` must be in"),
    (pf.unified_focal_loss, dict(lambda_focal=2.0), ValueError, "`lambda_focal` must be in"),
    (pf.unified_focal_loss, dict(activation="sigmoid"), ValueError, "one channel \\(binary\\)"),
    (pf.unified_focal_loss, dict(reduction="none"), ValueError, "reduction='none'"),
]


@pytest.mark.parametrize("f, change, error, message", BAD, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_is_a_clear_error(f, change, error, message):
    args = dict(logits=torch.zeros(2, 4, 4, 4), target=torch.zeros(2, 4, 4, dtype=torch.long))
    args.update(change)
    logits, target = args.pop("logits"), args.pop("target")
    before = (logits.clone(), target.clone())
    with pytest.raises(error, match=message):
        f(logits, target, **args)
    assert torch.equal(logits, before[0]) and torch.equal(target, before[1])


@needs_gloo
def test_whole_batch_sums_across_two_ranks_equal_one_process(tmp_path, engine):
    """With batch=True each rank's region loss is the whole batch's, and DDP's average of the ranks' parameter
    gradients (here: of a 1x1 convolution before the loss) is the one-process gradient."""
    g = torch.Generator().manual_seed(5)
    data = {"x": torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64),
            "labels": torch.randint(0, 4, (4, 5, 5), generator=g),
            "conv": torch.randn(4, 3, 1, 1, generator=g, dtype=torch.float64), "backend": engine}
    data["labels"][1, 0], data["labels"][3, 0] = -100, -100  # as many on each rank: the pixel means agree
    results = run_ranks(WORKER, data, tmp_path)
    import _region_worker

    want = _region_worker.run(None, data)
    for name, (loss, grad) in want.items():
        # a pure region loss is the whole batch's on every rank; a per-pixel term is each rank's own mean
        ranks = [rank[name][0] for rank in results] if name in ("dice", "focal_tversky") else [
            sum(rank[name][0] for rank in results) / len(results)]
        for value in ranks:
            torch.testing.assert_close(value, loss, rtol=1e-12, atol=1e-14)
        average = sum(rank[name][1] for rank in results) / len(results)
        torch.testing.assert_close(average, grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend", [None, "eager"])
@pytest.mark.parametrize("name", ["dice_loss", "tversky_loss", "focal_tversky_loss", "dice_focal_loss",
                                  "unified_focal_loss"])
def test_torch_func_grad_and_per_sample_gradients(name, backend):
    """Inside ``torch.func`` the region sums and the unified focal part take autograd (their written-out
    gradient's Function cannot serve functorch's wrapped tensors: the unified loss, and every loss with a
    written-out engine asked for, raised there)."""
    f = getattr(pf, name)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(5))
    z = x.clone().requires_grad_()
    torch.testing.assert_close(torch.func.grad(lambda v: f(v, t, backend=backend))(x),
                               torch.autograd.grad(f(z, t, backend=backend), z)[0])
    per_sample = torch.func.vmap(torch.func.grad(lambda xi, ti: f(xi[None], ti[None], backend=backend)))(x, t)
    for i in range(2):
        z = x[i:i + 1].clone().requires_grad_()
        torch.testing.assert_close(per_sample[i], torch.autograd.grad(f(z, t[i:i + 1], backend=backend), z)[0][0])
