"""Sigmoid family against the references, torch, and the family's identities."""

import pytest
import torch
import torch.nn.functional as F

import polyfocal as pf
import reference as ref


REDUCTIONS = ["none", "sum", "mean"]


def make_inputs(shape, target_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).requires_grad_()
    if target_kind == "binary":
        target = (torch.rand(shape, generator=g) < 0.3).to(torch.float64)
    elif target_kind == "soft":
        target = torch.rand(shape, generator=g, dtype=torch.float64)
    else:  # class indices with background C and ignored locations
        n, c = shape[:2]
        target = torch.randint(0, c + 1, (n,) + tuple(shape[2:]), generator=g)
        target.view(-1)[::5] = -100
    return logits, target


def grads(loss, logits):
    return torch.autograd.grad(loss.sum(), logits)[0]


@pytest.mark.parametrize("name", sorted(ref.SIGMOID))
@pytest.mark.parametrize("shape", [(7, 3), (3, 4, 5), (2, 5, 3, 3)])
@pytest.mark.parametrize("target_kind", ["binary", "soft", "index"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference(name, shape, target_kind, reduction):
    f, params = ref.SIGMOID[name]
    logits, target = make_inputs(shape, target_kind)
    weight = torch.rand(shape, dtype=torch.float64)
    got = pf.get_loss_function(name)(logits, target, weight=weight, reduction=reduction,
                                     **ref.library_params(name, params))
    want = ref.sigmoid_loss(f, logits, target, weight=weight, reduction=reduction, **params)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grads(got, logits), grads(want, logits))


@pytest.mark.parametrize("name", sorted(ref.SIGMOID))
def test_gradcheck(name):
    _, params = ref.SIGMOID[name]
    fn = pf.get_loss_function(name)
    kwargs = ref.library_params(name, params)
    for kind in ("soft", "index"):
        logits, target = make_inputs((3, 4, 2), kind, seed=1)
        assert torch.autograd.gradcheck(lambda x: fn(x, target, **kwargs), (logits.detach().requires_grad_(),))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_matches_torch(reduction):
    logits, target = make_inputs((6, 4, 3), "soft", seed=2)
    weight, pos_weight = torch.rand(6, 4, 3, dtype=torch.float64), torch.rand(4, 1, dtype=torch.float64) * 3
    got = pf.binary_cross_entropy(logits, target, weight=weight, pos_weight=pos_weight, reduction=reduction)
    want = F.binary_cross_entropy_with_logits(logits, target, weight=weight, pos_weight=pos_weight,
                                              reduction=reduction)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grads(got, logits), grads(want, logits))


def test_index_targets_equal_one_hot_targets_up_to_the_mean_count():
    logits, labels = make_inputs((4, 3, 5), "index", seed=3)
    labels = labels.clamp(min=0)
    one_hot = F.one_hot(labels, 4)[..., :3].movedim(-1, 1).to(torch.float64)
    by_index = pf.sigmoid_focal_loss(logits, labels, reduction="none")
    by_float = pf.sigmoid_focal_loss(logits, one_hot, reduction="none")
    torch.testing.assert_close(by_index, by_float)
    # mean divides by locations (N, *) for indices, by elements for floats
    torch.testing.assert_close(pf.sigmoid_focal_loss(logits, labels), by_float.sum() / labels.numel())
    torch.testing.assert_close(pf.sigmoid_focal_loss(logits, one_hot), by_float.mean())


def test_labels_and_scores_target():
    logits, labels = make_inputs((6, 3), "index", seed=4)
    labels = labels.clamp(min=0)
    scores = torch.rand(6, dtype=torch.float64)
    dense = F.one_hot(labels, 4)[:, :3].to(torch.float64) * scores[:, None]
    torch.testing.assert_close(pf.sigmoid_focal_loss(logits, (labels, scores), reduction="none"),
                               pf.sigmoid_focal_loss(logits, dense, reduction="none"))


def test_focal_gamma0_no_alpha_is_bce_and_poly1_focal_eps0_is_focal():
    logits, target = make_inputs((5, 4), "soft", seed=5)
    torch.testing.assert_close(pf.sigmoid_focal_loss(logits, target, gamma=0.0, alpha=None),
                               pf.binary_cross_entropy(logits, target))
    torch.testing.assert_close(pf.poly1_focal_loss(logits, target, epsilon=0.0),
                               pf.sigmoid_focal_loss(logits, target))
    torch.testing.assert_close(pf.poly1_binary_cross_entropy(logits, target, epsilon=0.0),
                               pf.binary_cross_entropy(logits, target))


def test_poly1_focal_term_is_not_weighted_by_alpha():
    logits, target = make_inputs((5, 4), "binary", seed=6)
    p_t = torch.where(target > 0, torch.sigmoid(logits), torch.sigmoid(-logits))
    extra = pf.poly1_focal_loss(logits, target, epsilon=2.0, reduction="none") - pf.sigmoid_focal_loss(
        logits, target, reduction="none")
    torch.testing.assert_close(extra, 2.0 * (1 - p_t) ** 3)


def test_sigmoid_soft_truncation_k1_is_focal_gamma1():
    logits, target = make_inputs((6, 5), "binary", seed=7)
    torch.testing.assert_close(pf.sigmoid_soft_truncated_loss(logits, target, k=1.0),
                               pf.sigmoid_focal_loss(logits, target, gamma=1.0, alpha=None))


def test_sigmoid_focal_to_bce_ratio_is_modulator():
    logits, target = make_inputs((8, 3), "binary", seed=8)
    ratio = pf.sigmoid_focal_loss(logits, target, reduction="none") / pf.binary_cross_entropy(
        logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = 0.25 * target + 0.75 * (1 - target)
    torch.testing.assert_close(ratio, alpha_t * (1 - p_t) ** 2)


def test_normalizer_divides_the_sum():
    logits, labels = make_inputs((4, 3, 6), "index", seed=9)
    num_pos = ((labels >= 0) & (labels < 3)).sum()
    loss = pf.sigmoid_focal_loss(logits, labels, normalizer=num_pos)
    torch.testing.assert_close(loss, pf.sigmoid_focal_loss(logits, labels, reduction="sum") / num_pos)
