"""GHM-C and GHM-R (Li, Liu, Wang, arXiv:1811.05181) against a slow loop-over-bins reference.

The reference below is written from the paper and mmdetection's ``GHMC``/``GHMR`` loops,
generalised as the library documents it: an element's weight counts as that many examples
in its bin and in N (weight 0 leaves it out); ``n`` is the number of non-empty bins of the
batch; the Modules keep an EMA of the counts of non-empty bins, optionally divided by
``1 - m^steps`` per bin. It shares no code with the library.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import polyfocal as pf
from _ddp_ghm_worker import ghm_cases
from _gloo import needs_gloo, run_ranks
from polyfocal.ghm import scatter_counts

F64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
REDUCTIONS = ("mean", "sum", "none")


# --- the reference ------------------------------------------------------------------------------


class RefGHM:
    """mmdetection's loop over bins, with weights counting as examples and optional bias correction."""

    def __init__(self, bins: int, momentum: float = 0.0, bias_correction: bool = True):
        self.bins, self.m, self.bc = bins, momentum, bias_correction
        self.acc = [0.0] * bins   # the moving average of each bin's count
        self.steps = [0] * bins   # how many times each bin was updated

    def beta(self, g: torch.Tensor, w: torch.Tensor):
        """``beta_i = N / GD(g_i)`` per element (0 where w == 0) and N."""
        edges = [i / self.bins for i in range(self.bins + 1)]
        total = float(w.sum())
        beta = torch.zeros_like(g)
        n = 0
        for i in range(self.bins):
            upper = g < edges[i + 1] if i < self.bins - 1 else g <= 1.0  # g = 1 goes to the last bin
            inds = (g >= edges[i]) & upper & (w > 0)
            num = float(w[inds].sum())
            if num > 0:
                n += 1
                if self.m > 0:
                    self.acc[i] = self.m * self.acc[i] + (1 - self.m) * num
                    self.steps[i] += 1
                    est = self.acc[i] / (1 - self.m ** self.steps[i]) if self.bc else self.acc[i]
                else:
                    est = num
                beta[inds] = total / est
        if n > 0:
            beta = beta / n
        return beta, total


def reduce_ref(per, total, reduction):
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / total if total > 0 else per.sum() * 0.0


def ref_ghm_c(logits, y, w, ref: RefGHM, reduction="mean"):
    """``y`` and ``w`` dense (the shape of ``logits``). Plain probabilities, moderate logits only."""
    p = torch.sigmoid(logits)
    loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    with torch.no_grad():
        beta, total = ref.beta((p - y).abs(), w)
    return reduce_ref(w * beta * loss, total, reduction)


def ref_ghm_r(pred, target, w, ref: RefGHM, mu, reduction="mean"):
    d = pred - target
    loss = torch.sqrt(d * d + mu * mu) - mu
    with torch.no_grad():
        beta, total = ref.beta(d.abs() / torch.sqrt(d * d + mu * mu), w)
    return reduce_ref(w * beta * loss, total, reduction)


def dense_index_target(logits, labels, weight, ignore_index=-100):
    """One-hot (class C = background, all zeros) and the weight with ignored locations zeroed."""
    c = logits.shape[1]
    y = torch.stack([(labels == k) for k in range(c)], dim=1).to(logits.dtype)
    valid = (labels != ignore_index).unsqueeze(1).to(logits.dtype)
    w = torch.ones_like(logits) if weight is None else weight.expand_as(logits)
    return y, w * valid


# --- data ---------------------------------------------------------------------------------------

# Batches of different sizes, so that some bins are empty in some steps and a later batch fills
# bins that have been updated a different number of times (per-bin bias correction matters).
SIZES = (9, 1, 2, 6)


def real_weights(shape, gen):
    """Real weights in [0, 2.5) with about a quarter exactly 0."""
    w = torch.rand(shape, generator=gen, dtype=F64) * 2.5
    return torch.where(torch.rand(shape, generator=gen, dtype=F64) < 0.25, torch.zeros_like(w), w)


def batch(kind, n, gen, c=3, length=4):
    """(input, target, dense target for the reference, weight passed, dense weight for the reference)."""
    if kind == "c_float":
        x = torch.randn(n, c, length, generator=gen, dtype=F64) * 2.5
        hard = (torch.rand(n, c, length, generator=gen) < 0.3).to(F64)
        soft = torch.rand(n, c, length, generator=gen, dtype=F64)
        y = torch.where(torch.rand(n, c, length, generator=gen) < 0.5, hard, soft)
        w = real_weights((n, c, length), gen)
        return x, y, y, w, w
    if kind == "c_index":
        x = torch.randn(n, c, length, generator=gen, dtype=F64) * 2.5
        labels = torch.randint(0, c + 1, (n, length), generator=gen)  # c is background
        labels[torch.rand(n, length, generator=gen) < 0.2] = -100
        w = real_weights((n, 1, length), gen)  # per location, broadcast over classes
        y, wd = dense_index_target(x, labels, w)
        return x, labels, y, w, wd
    assert kind == "r"
    pred = torch.randn(n, 4, generator=gen, dtype=F64) * 0.3
    target = torch.randn(n, 4, generator=gen, dtype=F64) * 0.3
    w = real_weights((n, 4), gen)
    return pred, target, target, w, w


def batches(kind, seed=0, sizes=SIZES):
    gen = torch.Generator().manual_seed(seed)
    return [batch(kind, n, gen) for n in sizes]


MU = 0.1
BINS = 7


def lib_module(kind, momentum, bias_correction, reduction, bins=BINS):
    if kind == "r":
        return pf.GHMRLoss(bins=bins, momentum=momentum, bias_correction=bias_correction, mu=MU,
                           reduction=reduction)
    return pf.GHMCLoss(bins=bins, momentum=momentum, bias_correction=bias_correction, reduction=reduction)


def ref_call(x, kind, y_dense, w_dense, ref, reduction):
    if kind == "r":
        return ref_ghm_r(x, y_dense, w_dense, ref, MU, reduction)
    return ref_ghm_c(x, y_dense, w_dense, ref, reduction)


def value_and_grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, *args, **kwargs)
    # A fixed, non-uniform cotangent for reduction='none', so every element's gradient is checked.
    if loss.ndim == 0:
        cot = torch.ones_like(loss)
    else:
        cot = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    (grad,) = torch.autograd.grad(loss, x, cot)
    return loss.detach(), grad


# --- 1. against the reference, over consecutive batches -----------------------------------------


@pytest.mark.parametrize("kind", ["c_float", "c_index", "r"])
@pytest.mark.parametrize("momentum", [0.0, 0.75])
@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_module_matches_reference_over_steps(kind, momentum, bias_correction, reduction):
    # Buffers in float64 so that the comparison can be tight (see the float32-buffer test below).
    module = lib_module(kind, momentum, bias_correction, reduction).double()
    ref = RefGHM(BINS, momentum, bias_correction)
    mixed_ages = False  # some step uses bins updated a different number of times
    for step, (x, t, y_dense, w, w_dense) in enumerate(batches(kind)):
        got, got_grad = value_and_grad(module, x, t, w)
        before = list(ref.steps)
        want, want_grad = value_and_grad(ref_call, x, kind, y_dense, w_dense, ref, reduction)
        mixed_ages |= len({k for k, k0 in zip(ref.steps, before) if k > k0}) > 1
        assert got.dtype == F64 and got.shape == want.shape
        torch.testing.assert_close(got, want, **TIGHT, msg=lambda m: f"step {step}: {m}")
        torch.testing.assert_close(got_grad, want_grad, **TIGHT, msg=lambda m: f"step {step} grad: {m}")
    if momentum > 0:
        torch.testing.assert_close(module.counts, torch.tensor(ref.acc, dtype=F64), **TIGHT)
        torch.testing.assert_close(module.steps, torch.tensor(ref.steps, dtype=F64), rtol=0, atol=0)
        assert mixed_ages, "the batches should leave some bins empty in some steps, then fill them"


@pytest.mark.parametrize("kind", ["c_float", "c_index", "r"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_function_matches_reference(kind, reduction):
    for x, t, y_dense, w, w_dense in batches(kind, seed=1):
        if kind == "r":
            got, got_grad = value_and_grad(pf.ghm_r_loss, x, t, weight=w, mu=MU, bins=BINS, reduction=reduction)
        else:
            got, got_grad = value_and_grad(pf.ghm_c_loss, x, t, weight=w, bins=BINS, reduction=reduction)
        want, want_grad = value_and_grad(ref_call, x, kind, y_dense, w_dense, RefGHM(BINS), reduction)
        torch.testing.assert_close(got, want, **TIGHT)
        torch.testing.assert_close(got_grad, want_grad, **TIGHT)


@pytest.mark.parametrize("kind", ["c_float", "c_index", "r"])
def test_function_without_weight_is_all_ones_weight(kind):
    x, t, y_dense, _, _ = batches(kind, seed=2)[0]
    ref = RefGHM(10)
    if kind == "r":
        got = pf.ghm_r_loss(x, t, mu=MU)
    else:
        got = pf.ghm_c_loss(x, t)
    w_dense = torch.ones_like(x) if kind != "c_index" else dense_index_target(x, t, None)[1]
    torch.testing.assert_close(got, ref_call(x, kind, y_dense, w_dense, ref, "mean"), **TIGHT)


@pytest.mark.parametrize("kind", ["c_index", "r"])
def test_float32_inputs_close_to_float64(kind):
    module64 = lib_module(kind, 0.75, True, "mean").double()
    module32 = lib_module(kind, 0.75, True, "mean")
    for x, t, _, w, _ in batches(kind, seed=17):
        t32 = t.float() if t.is_floating_point() else t
        got = module32(x.float(), t32, w.float())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, module64(x, t, w).float(), rtol=1e-5, atol=1e-6)


def test_momentum_zero_module_is_the_function():
    for x, t, _, w, _ in batches("c_index", seed=3):
        for bc in (True, False):
            module = pf.GHMCLoss(momentum=0.0, bias_correction=bc, bins=BINS)
            torch.testing.assert_close(module(x, t, w), pf.ghm_c_loss(x, t, weight=w, bins=BINS), rtol=0, atol=0)
    for p, t, _, w, _ in batches("r", seed=3):
        module = pf.GHMRLoss(momentum=0.0, bins=BINS, mu=MU)
        torch.testing.assert_close(module(p, t, w), pf.ghm_r_loss(p, t, weight=w, bins=BINS, mu=MU), rtol=0, atol=0)


def test_gradient_is_weighted_sigmoid_minus_target():
    """d/dx of the mean is w_i beta_i (sigmoid(x_i) - y_i) / N: the weights are constants."""
    x, y, _, w, _ = batches("c_float", seed=4)[0]
    loss_none = pf.ghm_c_loss(x, y, weight=w, reduction="none")
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
    w_beta = torch.where(w > 0, loss_none / bce, torch.zeros_like(bce))
    _, grad = value_and_grad(lambda a: pf.ghm_c_loss(a, y, weight=w), x)
    torch.testing.assert_close(grad, w_beta * (torch.sigmoid(x) - y) / w.sum(), **TIGHT)


def test_beta_averages_to_one_and_mean_is_sum_over_n():
    """sum_i w_i beta_i = N (beta averages to 1 over the weighted batch); mean = sum / N."""
    x, t, _, w, wd = batches("c_index", seed=5)[0]
    none = pf.ghm_c_loss(x, t, weight=w, reduction="none")
    y, _ = dense_index_target(x, t, None)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
    w_beta = torch.where(wd > 0, none / bce, torch.zeros_like(bce))
    torch.testing.assert_close(w_beta.sum(), wd.sum(), **TIGHT)
    torch.testing.assert_close(pf.ghm_c_loss(x, t, weight=w, reduction="sum"), none.sum(), **TIGHT)
    torch.testing.assert_close(pf.ghm_c_loss(x, t, weight=w), none.sum() / wd.sum(), **TIGHT)


def test_integer_weight_counts_as_repeated_examples():
    """An element of weight 2 is the same as the element twice (density, N, loss and gradient)."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(12, generator=gen, dtype=F64) * 3
    y = (torch.rand(12, generator=gen) < 0.4).to(F64)
    reps = torch.tensor([0, 1, 2, 3, 1, 1, 2, 0, 1, 4, 1, 2])
    weighted = pf.ghm_c_loss(x, y, weight=reps.to(F64))
    repeated = pf.ghm_c_loss(x.repeat_interleave(reps), y.repeat_interleave(reps))
    torch.testing.assert_close(weighted, repeated, **TIGHT)
    p = torch.randn(12, generator=gen, dtype=F64)
    q = torch.randn(12, generator=gen, dtype=F64)
    torch.testing.assert_close(pf.ghm_r_loss(p, q, weight=reps.to(F64), mu=0.3),
                               pf.ghm_r_loss(p.repeat_interleave(reps), q.repeat_interleave(reps), mu=0.3),
                               **TIGHT)


def test_g_equal_one_goes_to_the_last_bin():
    # g = |sigmoid(x) - 1| = 1 exactly at x = -40 in float64; 0.953 (x = -3) shares the last bin
    # with it, 0.5 (x = 0) is in bin 5: counts 2 and 1, n = 2, beta = 3/(2*2) and 3/(1*2).
    x = torch.tensor([-40.0, -3.0, 0.0], dtype=F64)
    y = torch.ones(3, dtype=F64)
    assert float(1 - torch.sigmoid(x[0])) == 1.0
    got = pf.ghm_c_loss(x, y, bins=10, reduction="none")
    bce = -torch.nn.functional.logsigmoid(x)
    torch.testing.assert_close(got, bce * torch.tensor([0.75, 0.75, 1.5], dtype=F64), **TIGHT)
    # GHM-R: d = 1e9 gives g = 1 exactly (mu^2 vanishes next to d^2).
    d = torch.tensor([1e9, 50.0, 0.0], dtype=F64)
    got = pf.ghm_r_loss(d, torch.zeros(3, dtype=F64), mu=1.0, bins=10, reduction="none")
    torch.testing.assert_close(got, (torch.sqrt(d * d + 1) - 1) * torch.tensor([0.75, 0.75, 1.5], dtype=F64),
                               **TIGHT)


@pytest.mark.parametrize("bins", [1, 2, 10, 30])
def test_bins_by_edges_are_the_unit_regions_of_g(bins):
    """An element's bin, counted as the edges its statistic reaches, is floor(g * bins) (g = 1 in
    the last bin); with 0/1 targets the statistic is the margin -z and the edges logit(k / bins)."""
    from polyfocal.ghm import bin_index, margin_edges, unit_edges

    z = torch.cat([torch.randn(100_000, generator=torch.Generator().manual_seed(3), dtype=F64) * 4,
                   torch.tensor([-800.0, 0.0, 800.0], dtype=F64)])
    g = torch.sigmoid(-z)
    regions = (g * bins).floor().clamp(max=bins - 1).long()
    assert torch.equal(bin_index(g, unit_edges(bins, g)), regions)
    assert torch.equal(bin_index(-z, margin_edges(bins, z)), regions)


# --- 2. state_dict ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["c_index", "r"])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_state_dict_round_trip(kind, bias_correction):
    data = batches(kind, seed=7, sizes=(8, 3, 5, 7))
    module = lib_module(kind, 0.75, bias_correction, "mean")
    for x, t, _, w, _ in data[:3]:
        module(x, t, w)
    state = module.state_dict()
    assert set(state) == {"counts", "steps"}
    assert state["counts"].shape == (BINS,) and state["steps"].shape == (BINS,)
    assert bool((state["counts"] > 0).any()) and float(state["steps"].max()) == 3

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = lib_module(kind, 0.75, bias_correction, "mean")
    fresh.load_state_dict(torch.load(buf))
    copied = copy.deepcopy(module)
    untrained = lib_module(kind, 0.75, bias_correction, "mean")

    x, t, _, w, _ = data[3]
    want, want_grad = value_and_grad(module, x, t, w)
    for other in (fresh, copied):
        got, got_grad = value_and_grad(other, x, t, w)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=0)
        torch.testing.assert_close(other.counts, module.counts, rtol=0, atol=0)
        torch.testing.assert_close(other.steps, module.steps, rtol=0, atol=0)
    # The state matters: a Module that has not seen the first batches gives another loss.
    assert not torch.allclose(untrained(x, t, w), want)


def test_buffers_follow_the_module_and_are_not_parameters():
    module = pf.GHMCLoss(bins=5)
    assert [name for name, _ in module.named_buffers()] == ["counts", "steps"]
    assert list(module.parameters()) == []
    assert module.double().counts.dtype == F64


# --- 3. bias correction -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["c_index", "r"])
@pytest.mark.parametrize("momentum", [0.5, 0.75, 0.9])
def test_first_step_bias_correction(kind, momentum):
    """After one batch the EMA is (1 - m) * counts: corrected it is the batch's counts (the
    weights of momentum 0); uncorrected the densities are (1 - m) times smaller, so every
    element's weight, and the loss, is 1 / (1 - m) times larger."""
    x, t, _, w, _ = batches(kind, seed=8)[0]
    stateless = lib_module(kind, 0.0, True, "none")(x, t, w)
    corrected = lib_module(kind, momentum, True, "none").double()(x, t, w)
    classic = lib_module(kind, momentum, False, "none").double()(x, t, w)
    torch.testing.assert_close(corrected, stateless, **TIGHT)
    torch.testing.assert_close(classic, stateless / (1 - momentum), **TIGHT)


@pytest.mark.parametrize("momentum", [0.5, 0.75])
def test_repeated_batch(momentum):
    """The same batch t times: corrected, the estimate is exactly the batch's counts every step;
    uncorrected it is (1 - m^t) times them, so the loss is the stateless loss / (1 - m^t)."""
    x, t, _, w, _ = batches("c_index", seed=9)[0]
    stateless = pf.ghm_c_loss(x, t, weight=w, bins=BINS)
    corrected = pf.GHMCLoss(bins=BINS, momentum=momentum).double()
    classic = pf.GHMCLoss(bins=BINS, momentum=momentum, bias_correction=False).double()
    for step in range(1, 5):
        torch.testing.assert_close(corrected(x, t, w), stateless, **TIGHT)
        torch.testing.assert_close(classic(x, t, w), stateless / (1 - momentum ** step), **TIGHT)


def _r_batch_in_bins(bins_of, mu=1.0, num_bins=10):
    """GHM-R differences whose g = |d| / sqrt(d^2 + mu^2) is the centre of the given bins."""
    g = (torch.tensor(bins_of, dtype=F64) + 0.5) / num_bins
    return g * mu / torch.sqrt(1 - g * g)


def test_bias_correction_per_bin_by_hand():
    """Bins seen a different number of times: each bin is corrected by its own 1 - m^k.

    step 1: bin 0 x3, bin 2 x1, bin 5 x2
    step 2: bin 0 x1, bin 5 x4, bin 7 x2   (bin 2 unseen: no decay, no step)
    step 3: bin 2 x2, bin 5 x1
    """
    m = 0.75
    steps = [[0, 0, 0, 2, 5, 5], [0, 5, 5, 5, 5, 7, 7], [2, 2, 5]]
    corrected = pf.GHMRLoss(mu=1.0, bins=10, momentum=m, reduction="none").double()
    classic = pf.GHMRLoss(mu=1.0, bins=10, momentum=m, bias_correction=False, reduction="none").double()
    expected_counts = {  # (EMA, number of updates) per bin after each step
        1: {0: ((1 - m) * 3, 1), 2: ((1 - m) * 1, 1), 5: ((1 - m) * 2, 1)},
        2: {0: ((1 - m) * (3 * m + 1), 2), 2: ((1 - m) * 1, 1), 5: ((1 - m) * (2 * m + 4), 2),
            7: ((1 - m) * 2, 1)},
        3: {0: ((1 - m) * (3 * m + 1), 2), 2: ((1 - m) * (1 * m + 2), 2),
            5: ((1 - m) * (2 * m * m + 4 * m + 1), 3), 7: ((1 - m) * 2, 1)},
    }
    for step, bins_of in enumerate(steps, start=1):
        d = _r_batch_in_bins(bins_of)
        loss = torch.sqrt(d * d + 1) - 1
        total, n = len(bins_of), len(set(bins_of))
        ema = expected_counts[step]
        est_c = torch.tensor([ema[b][0] / (1 - m ** ema[b][1]) for b in bins_of], dtype=F64)
        est_n = torch.tensor([ema[b][0] for b in bins_of], dtype=F64)
        zeros = torch.zeros_like(d)
        torch.testing.assert_close(corrected(d, zeros), total / (est_c * n) * loss, **TIGHT)
        torch.testing.assert_close(classic(d, zeros), total / (est_n * n) * loss, **TIGHT)
        want_counts = torch.zeros(10, dtype=F64)
        want_steps = torch.zeros(10, dtype=F64)
        for b, (c, k) in ema.items():
            want_counts[b], want_steps[b] = c, k
        for module in (corrected, classic):
            torch.testing.assert_close(module.counts, want_counts, **TIGHT)
            torch.testing.assert_close(module.steps, want_steps, rtol=0, atol=0)


# --- precision of the Module state --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["c_index", "r"])
@pytest.mark.parametrize("momentum, bias_correction", [(0.75, True), (0.9, False), (0.9, True)])
def test_default_module_keeps_float64_precision(kind, momentum, bias_correction):
    """A Module built with defaults (buffers created as float32) given float64 inputs must
    compute in float64, like the function does: the EMA must not be rounded to float32."""
    default = lib_module(kind, momentum, bias_correction, "none")
    wide = lib_module(kind, momentum, bias_correction, "none").double()
    for step, (x, t, _, w, _) in enumerate(batches(kind, seed=10)):
        torch.testing.assert_close(default(x, t, w), wide(x, t, w), **TIGHT,
                                   msg=lambda m: f"step {step}: {m}")


# --- 4. torch.compile -----------------------------------------------------------------------------

# Since torch 2.x, dynamo captures ``.item()`` into the graph (an unbacked scalar) instead of
# breaking it, so ``fullgraph=True`` alone does not prove the absence of host syncs. Every
# ``.item()``/``bool()``/``float()`` of a tensor goes through ``aten._local_scalar_dense``:
# watch the dispatcher for it, and count the ops to show there is no Python loop over bins.


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def _ops(fn, *args, **kwargs):
    with _OpLog() as log:
        fn(*args, **kwargs)
    return log.ops


def _sync_free_calls(bins):
    """GHM-C (float and index targets, validate=False: value checks are the one allowed sync)
    and GHM-R, functions and Modules (two steps each)."""
    (x, y, _, w, _), = batches("c_float", seed=16, sizes=(4,))
    (xi, ti, _, wi, _), = batches("c_index", seed=16, sizes=(4,))
    (p, q, _, v, _), = batches("r", seed=16, sizes=(4,))
    return [
        (lambda: pf.ghm_c_loss(x, y, weight=w, bins=bins, validate=False)),
        (lambda: pf.ghm_c_loss(xi, ti, weight=wi, bins=bins, validate=False)),
        (lambda: pf.ghm_r_loss(p, q, weight=v, bins=bins, mu=MU)),
        (lambda m=pf.GHMCLoss(bins=bins, validate=False): [m(x, y, w) for _ in range(2)]),
        (lambda m=pf.GHMCLoss(bins=bins, bias_correction=False, validate=False): [m(xi, ti, wi) for _ in range(2)]),
        (lambda m=pf.GHMRLoss(bins=bins, mu=MU): [m(p, q, v) for _ in range(2)]),
    ]


def test_no_host_sync():
    for call in _sync_free_calls(BINS):
        ops = _ops(call)
        assert torch.ops.aten._local_scalar_dense.default not in ops


def test_no_python_loop_over_bins():
    """The same ops run for 3 bins and for 300."""
    for a, b in zip(_sync_free_calls(3), _sync_free_calls(300)):
        assert _ops(a) == _ops(b)



def _compile(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=False)


@pytest.mark.slow
def test_compiled_functions_match_eager():
    x, t, _, w, _ = batches("c_index", seed=11)[0]
    p, q, _, v, _ = batches("r", seed=11)[0]

    def both(x, t, w, p, q, v):
        return (pf.ghm_c_loss(x, t, weight=w, bins=BINS),
                pf.ghm_r_loss(p, q, weight=v, mu=MU, bins=BINS, reduction="none"))

    compiled = _compile(both)
    xs, ps = x.clone().requires_grad_(), p.clone().requires_grad_()
    got_c, got_r = compiled(xs, t, w, ps, q, v)
    gx, gp = torch.autograd.grad(got_c + got_r.sum(), (xs, ps))
    xe, pe = x.clone().requires_grad_(), p.clone().requires_grad_()
    want_c, want_r = both(xe, t, w, pe, q, v)
    wx, wp = torch.autograd.grad(want_c + want_r.sum(), (xe, pe))
    for got, want in ((got_c, want_c), (got_r, want_r), (gx, wx), (gp, wp)):
        torch.testing.assert_close(got, want, **TIGHT)


@pytest.mark.slow
def test_compiled_modules_match_eager_over_steps():
    c_data = batches("c_index", seed=12, sizes=(6, 6, 6))
    r_data = batches("r", seed=12, sizes=(6, 6, 6))
    eager_c, eager_r = pf.GHMCLoss(bins=BINS).double(), pf.GHMRLoss(bins=BINS, mu=MU).double()
    comp_c, comp_r = copy.deepcopy(eager_c), copy.deepcopy(eager_r)

    def step(mc, mr, x, t, w, p, q, v):
        return mc(x, t, w) + mr(p, q, v)

    compiled = _compile(step)
    for (x, t, _, w, _), (p, q, _, v, _) in zip(c_data, r_data):
        xs = x.clone().requires_grad_()
        got = compiled(comp_c, comp_r, xs, t, w, p, q, v)
        (gx,) = torch.autograd.grad(got, xs)
        xe = x.clone().requires_grad_()
        want = step(eager_c, eager_r, xe, t, w, p, q, v)
        (wx,) = torch.autograd.grad(want, xe)
        torch.testing.assert_close(got, want, **TIGHT)
        torch.testing.assert_close(gx, wx, **TIGHT)
        for a, b in ((comp_c, eager_c), (comp_r, eager_r)):  # the state advanced inside the graph
            torch.testing.assert_close(a.counts, b.counts, **TIGHT)
            torch.testing.assert_close(a.steps, b.steps, rtol=0, atol=0)
    assert float(comp_c.steps.max()) == 3


# --- 5. empty and all-ignored batches -------------------------------------------------------------


def _empty_cases(reduction):
    z = torch.zeros
    gen = torch.Generator().manual_seed(15)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    c, r = pf.ghm_c_loss, pf.ghm_r_loss
    return {
        "c_float_empty": (lambda a: c(a, z(0, 3, dtype=F64), reduction=reduction), z(0, 3, dtype=F64)),
        "c_index_empty": (lambda a: c(a, z(0, 4, dtype=torch.long), reduction=reduction), z(0, 3, 4, dtype=F64)),
        "c_all_ignored": (lambda a: c(a, torch.full((2, 4), -100), reduction=reduction), randn(2, 3, 4)),
        "c_all_ignored_weighted": (lambda a: c(a, torch.full((2, 4), -7), ignore_index=-7, weight=randn(2, 1, 4).abs(),
                                               reduction=reduction), randn(2, 3, 4)),
        "c_zero_weight": (lambda a: c(a, torch.rand(2, 3, dtype=F64), weight=z(2, 3, dtype=F64), reduction=reduction),
                          randn(2, 3) * 30),
        "r_empty": (lambda a: r(a, z(0, 4, dtype=F64), reduction=reduction), z(0, 4, dtype=F64)),
        "r_zero_weight": (lambda a: r(a, randn(3, 4), weight=z(3, 1, dtype=F64), reduction=reduction), randn(3, 4)),
    }


@pytest.mark.parametrize("case", sorted(_empty_cases("mean")))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_or_all_ignored_gives_zero(case, reduction):
    fn, x = _empty_cases(reduction)[case]
    x = x.clone().requires_grad_()
    loss = fn(x)
    assert loss.shape == (x.shape if reduction == "none" else ())
    assert torch.isfinite(loss).all() and bool((loss == 0).all())
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(grad).all() and bool((grad == 0).all())


@pytest.mark.parametrize("bias_correction", [True, False])
def test_modules_skip_empty_and_all_ignored_batches(bias_correction):
    c = pf.GHMCLoss(bins=BINS, momentum=0.75, bias_correction=bias_correction).double()
    r = pf.GHMRLoss(bins=BINS, momentum=0.75, bias_correction=bias_correction, mu=MU).double()
    ref_c, ref_r = copy.deepcopy(c), copy.deepcopy(r)
    (x, t, _, w, _), (x2, t2, _, w2, _) = batches("c_index", seed=13, sizes=(5, 5))
    (p, q, _, v, _), (p2, q2, _, v2, _) = batches("r", seed=13, sizes=(5, 5))
    c(x, t, w), ref_c(x, t, w), r(p, q, v), ref_r(p, q, v)

    nothing = [
        (c, torch.randn(2, 3, 4, dtype=F64), torch.full((2, 4), -100), None),
        (c, torch.zeros(0, 3, 4, dtype=F64), torch.zeros(0, 4, dtype=torch.long), None),
        (c, torch.randn(2, 3, dtype=F64), torch.rand(2, 3, dtype=F64), torch.zeros(2, 3, dtype=F64)),
        (r, torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64), torch.zeros(2, 4, dtype=F64)),
        (r, torch.zeros(0, 4, dtype=F64), torch.zeros(0, 4, dtype=F64), None),
    ]
    for module, a, b, weight in nothing:
        a = a.requires_grad_()
        loss = module(a, b, weight)
        assert float(loss.detach()) == 0.0
        (grad,) = torch.autograd.grad(loss, a)
        assert torch.isfinite(grad).all() and bool((grad == 0).all())
        assert torch.isfinite(module.counts).all()
    # The state did not move: the next real batch gives what it gives without the empty ones.
    torch.testing.assert_close(c(x2, t2, w2), ref_c(x2, t2, w2), rtol=0, atol=0)
    torch.testing.assert_close(r(p2, q2, v2), ref_r(p2, q2, v2), rtol=0, atol=0)
    torch.testing.assert_close(c.steps, ref_c.steps, rtol=0, atol=0)


# --- 6. bad input ---------------------------------------------------------------------------------

X = torch.randn(4, 3, 5)
T_INDEX = torch.randint(0, 4, (4, 5))
P, Q = torch.randn(4, 5), torch.randn(4, 5)

BAD = [
    ("c bins=0", lambda: pf.ghm_c_loss(X, T_INDEX, bins=0), ValueError, "bins"),
    ("c bins=-3", lambda: pf.ghm_c_loss(X, T_INDEX, bins=-3), ValueError, "bins"),
    ("c bins=2.5", lambda: pf.ghm_c_loss(X, T_INDEX, bins=2.5), TypeError, "bins"),
    ("r bins=0", lambda: pf.ghm_r_loss(P, Q, bins=0), ValueError, "bins"),
    ("C bins=0", lambda: pf.GHMCLoss(bins=0), ValueError, "bins"),
    ("R bins=0", lambda: pf.GHMRLoss(bins=0), ValueError, "bins"),
    ("C bins=True", lambda: pf.GHMCLoss(bins=True), TypeError, "bins"),
    ("C momentum=1", lambda: pf.GHMCLoss(momentum=1.0), ValueError, "momentum"),
    ("R momentum=1", lambda: pf.GHMRLoss(momentum=1.0), ValueError, "momentum"),
    ("C momentum<0", lambda: pf.GHMCLoss(momentum=-0.1), ValueError, "momentum"),
    ("C momentum=nan", lambda: pf.GHMCLoss(momentum=float("nan")), ValueError, "momentum"),
    ("C momentum=str", lambda: pf.GHMCLoss(momentum="0.5"), TypeError, "momentum"),
    ("r mu=0", lambda: pf.ghm_r_loss(P, Q, mu=0.0), ValueError, "mu"),
    ("r mu<0", lambda: pf.ghm_r_loss(P, Q, mu=-0.02), ValueError, "mu"),
    ("R mu=0", lambda: pf.GHMRLoss(mu=0.0), ValueError, "mu"),
    ("R mu<0", lambda: pf.GHMRLoss(mu=-1.0), ValueError, "mu"),
    ("c reduction", lambda: pf.ghm_c_loss(X, T_INDEX, reduction="bogus"), ValueError, "reduction"),
    ("r reduction", lambda: pf.ghm_r_loss(P, Q, reduction="bogus"), ValueError, "reduction"),
    ("C reduction", lambda: pf.GHMCLoss(reduction="bogus"), ValueError, "reduction"),
    ("R reduction", lambda: pf.GHMRLoss(reduction="bogus"), ValueError, "reduction"),
    ("c weight shape", lambda: pf.ghm_c_loss(X, T_INDEX, weight=torch.ones(4, 5)), ValueError, "weight"),
    ("c weight shape 2", lambda: pf.ghm_c_loss(X, T_INDEX, weight=torch.ones(3)), ValueError, "weight"),
    ("c weight too big", lambda: pf.ghm_c_loss(X, T_INDEX, weight=torch.ones(2, 4, 3, 5)), ValueError, "weight"),
    ("c weight list", lambda: pf.ghm_c_loss(X, T_INDEX, weight=[1.0] * 5), TypeError, "weight"),
    ("C weight shape", lambda: pf.GHMCLoss()(X, T_INDEX, torch.ones(4, 2, 5)), ValueError, "weight"),
    ("r weight shape", lambda: pf.ghm_r_loss(P, Q, weight=torch.ones(5, 4)), ValueError, "weight"),
    ("R weight shape", lambda: pf.GHMRLoss()(P, Q, torch.ones(3)), ValueError, "weight"),
    ("r target shape", lambda: pf.ghm_r_loss(P, Q[:, :3]), ValueError, "target"),
    ("c index shape", lambda: pf.ghm_c_loss(X, T_INDEX[:, :3]), ValueError, "target"),
    ("c float shape", lambda: pf.ghm_c_loss(X, torch.rand(4, 3)), ValueError, "target"),
    ("c target range", lambda: pf.ghm_c_loss(X, torch.full((4, 5), 4 + 1)), ValueError, "target"),
    ("c int logits", lambda: pf.ghm_c_loss(T_INDEX, T_INDEX), TypeError, "logits"),
    ("r int pred", lambda: pf.ghm_r_loss(T_INDEX, T_INDEX), TypeError, "pred"),
]


@pytest.mark.parametrize("name, make, error, match", BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, make, error, match):
    with pytest.raises(error, match=match):
        make()


# --- 7. torch.distributed (2 gloo ranks on the loopback interface) -----------------------------------

WORKER = Path(__file__).with_name("_ddp_ghm_worker.py")


def _dist_data(seed=14):
    """Two steps of GHM-C (index targets with ignore_index, weights with zeros) and of GHM-R, 8 rows each."""
    gen = torch.Generator().manual_seed(seed)
    c = [batch("c_index", 8, gen) for _ in range(2)]
    r = [batch("r", 8, gen) for _ in range(2)]
    return {"c": [(x, t, w) for x, t, _, w, _ in c], "r": [(p, q, v) for p, q, _, v, _ in r]}


@pytest.mark.slow
@needs_gloo
def test_distributed_ranks_add_up_to_single_process(tmp_path):
    data = _dist_data()
    ranks = run_ranks(WORKER, data, tmp_path)
    single = ghm_cases(data)  # the workers' cases on the whole batches
    for key in ("ghm_c_loss", "ghm_r_loss", "GHMCLoss", "GHMCLoss_sum_nobc", "GHMRLoss"):
        for step, (want_loss, want_grad) in enumerate(single[key]):
            got_loss = sum(r[key][step][0] for r in ranks)
            got_grad = torch.cat([r[key][step][1] for r in ranks])
            msg = f"{key}, step {step}"
            torch.testing.assert_close(got_loss, want_loss, **TIGHT, msg=lambda m: f"{msg}: {m}")
            torch.testing.assert_close(got_grad, want_grad, **TIGHT, msg=lambda m: f"{msg} grad: {m}")
    for key in ("GHMCLoss_buffers", "GHMRLoss_buffers"):
        for r in ranks:
            torch.testing.assert_close(r[key][0], single[key][0], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(r[key][1], single[key][1], rtol=0, atol=0)
    # distributed=False opts out: each rank's loss is the single-process loss of its slice.
    for rank, r in enumerate(ranks):
        x, t, w = (a[rank * 4:(rank + 1) * 4] for a in data["c"][0])
        torch.testing.assert_close(r["local_only"], pf.ghm_c_loss(x, t, weight=w, bins=7), **TIGHT)
        assert not torch.allclose(r["local_only"], r["ghm_c_loss"][0][0])


@pytest.mark.parametrize("lanes", [1, 8, 64])
def test_histogram_in_lanes_equals_one_scatter(lanes):
    """CUDA's histogram splits the elements into lanes (atomic adds to 11 addresses serialise); the
    counts are the same as one scatter-add, empty input included."""
    g = torch.Generator().manual_seed(lanes)
    index, weight = torch.randint(0, 11, (64 * 45,), generator=g), torch.rand(64 * 45, generator=g, dtype=F64)
    want = torch.zeros(11, dtype=F64).index_add_(0, index, weight)
    torch.testing.assert_close(scatter_counts(index, weight, 11, lanes=lanes), want)
    empty = scatter_counts(index[:0], weight[:0], 11, lanes=lanes)
    assert empty.shape == (11,) and not empty.any()
