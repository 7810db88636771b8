"""The contract every loss keeps: extremes, dtypes, empty batches, bad input, Modules, compile."""

import copy
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import polyfocal as pf
import reference as ref
from reference import declared


SOFTMAX = declared("softmax")
SIGMOID = declared("sigmoid")
DISTRIBUTION = declared("distribution")
REGION = declared("region")
ALL = declared()


def test_every_declared_loss_is_public_registered_and_has_a_module():
    """One declaration makes a loss everything it is: a public function, a Module twin, a registry
    name and its short names, the command line's options."""
    assert pf.available_losses() == sorted(ALL)
    options = {h.name for h in pf.registry.loss_hyperparameters()}
    for d in pf.registry.declarations():
        assert getattr(pf, d.name) is d.function and d.name in pf.__all__ and d.module in pf.__all__
        module = pf.build_loss(d.name, **ALL[d.name])
        assert type(module) is getattr(pf, d.module)
        assert all(pf.get_loss_function(alias) is d.function for alias in d.aliases)
        assert set(d.hyperparameters) <= options


def test_every_softmax_and_sigmoid_loss_has_a_reference():
    # QFL, VFL and GHM-C have their references in their own suites (test_gfl, test_ghm)
    assert sorted(ref.SOFTMAX) == sorted(SOFTMAX)
    assert sorted(ref.SIGMOID) == sorted(set(SIGMOID) - {"quality_focal_loss", "varifocal_loss", "ghm_c_loss"})


def test_a_declaration_names_only_its_own_hyperparameters():
    from polyfocal._declare import declare

    def loss(logits, target, *, gamma=1.0):
        return logits

    with pytest.raises(ValueError, match="hyperparameter 'epsilon'"):
        declare("softmax", "Loss", hyperparameters=("epsilon",))(loss)
    with pytest.raises(ValueError, match="`family` must be one of"):
        declare("multilabel", "Loss")
    with pytest.raises(ValueError, match="already declared"):
        declare("softmax", "FocalLoss")(pf.focal_loss)


def inputs(name, dtype=torch.float32, scale=2.0, n=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, 3, generator=g) * scale).to(dtype)
    if name in SOFTMAX or name in REGION:
        return logits, torch.randint(0, c, (n, 3), generator=g)
    if name in SIGMOID:
        return logits, torch.randint(0, c + 1, (n, 3), generator=g)
    if name in DISTRIBUTION:
        return logits, torch.rand(n, 3, generator=g) * (c - 1)
    return logits, torch.randn(n, c, 3, generator=g).to(dtype)  # ghm_r: regression


def call(name, x, t, **kwargs):
    return pf.get_loss_function(name)(x, t, **{**ALL[name], **kwargs})


def loss_and_grad(name, x, t, **kwargs):
    x = x.detach().requires_grad_()
    loss = call(name, x, t, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss, grad


# --- numerics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_finite_at_saturated_logits(name, gamma):
    x, t = inputs(name)
    x = torch.where(torch.rand(x.shape) < 0.5, 1e4, -1e4)
    kwargs = {"gamma": gamma} if "gamma" in ALL[name] or name in ("sigmoid_focal_loss", "varifocal_loss") else {}
    for target in (t, hard_float_target(name, t, x)) if name not in ref.INDEX_ONLY else (t,):
        # a one-hot target unread (validate=False) stays a probability target, on the soft rows' path
        for options in ({}, {"validate": False}) if target.is_floating_point() and name in SOFTMAX else ({},):
            loss, grad = loss_and_grad(name, x, target, **kwargs, **options)
            assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), (name, gamma, options)


def hard_float_target(name, t, x):
    """The same example with a float target: exactly 0 or 1 (softmax: one-hot)."""
    if name in SOFTMAX:
        return torch.nn.functional.one_hot(t, x.shape[1]).movedim(-1, 1).float()
    if name in SIGMOID:
        return (torch.rand(x.shape) < 0.5).float()
    return t


def test_log_one_minus_p_is_exact_when_p_rounds_to_one():
    from polyfocal._numerics import log_softmax_and_log1m

    x = torch.tensor([[40.0, 0.0, -3.0]], dtype=torch.float64)  # p_0 == 1.0 in float64
    logp, log1m = log_softmax_and_log1m(x)
    assert logp.exp()[0, 0] == 1.0
    want = torch.log(torch.exp(torch.tensor([0.0, -3.0], dtype=torch.float64)).sum()) - 40.0
    torch.testing.assert_close(log1m[0, 0], want, rtol=1e-12, atol=0)
    torch.testing.assert_close(log1m[0, 1:], torch.log1p(-torch.softmax(x, 1)[0, 1:]))


def test_saturated_focal_gradient_is_finite_and_pushes_the_right_way():
    x = torch.tensor([[40.0, 0.0]], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(pf.focal_loss(x, torch.tensor([0]), gamma=0.5), x)
    assert torch.isfinite(grad).all() and grad[0, 0] <= 0
    # true value (1 + gamma) e^(-40 (1 + gamma)); -log p_t itself rounds to 0, leaving e^(-60)
    assert 8.7e-27 < grad[0, 1] < 1.5 * 8.8e-27


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_computes_in_fp32_and_returns_input_dtype(name, dtype):
    x, t = inputs(name)
    t_low = t.to(dtype) if t.is_floating_point() and name == "ghm_r_loss" else t
    loss, grad = loss_and_grad(name, x.to(dtype), t_low)
    ref_loss, _ = loss_and_grad(name, x.to(dtype).float(), t_low.float() if name == "ghm_r_loss" else t)
    assert loss.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(loss.float(), ref_loss, rtol=1e-2, atol=1e-2)


def test_autocast_returns_fp32():
    x, t = inputs("focal_loss", dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pf.focal_loss(x, t).dtype == torch.float32


@pytest.mark.parametrize("name", sorted(ALL))
def test_float64(name):
    x, t = inputs(name, dtype=torch.float64)
    assert call(name, x, t.double() if name == "ghm_r_loss" else t).dtype == torch.float64


# --- empty and ignored ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SOFTMAX) + ["sigmoid_focal_loss", "quality_focal_loss", "ghm_c_loss"])
def test_all_ignored_batch_gives_zero_with_zero_grad(name):
    x, t = inputs(name)
    loss, grad = loss_and_grad(name, x, torch.full_like(t, -100))
    assert loss.item() == 0 and (grad == 0).all()


@pytest.mark.parametrize("name", sorted(ALL))
def test_empty_batch_gives_zero(name):
    x, t = inputs(name, n=0)
    loss, grad = loss_and_grad(name, x, t)
    assert loss.item() == 0 and grad.shape == x.shape


@pytest.mark.parametrize("ignore_index", [-1, -100, -7])
def test_any_negative_ignore_index(ignore_index):
    x, t = inputs("focal_loss")
    t[0] = ignore_index
    kept = pf.focal_loss(x[1:], t[1:])
    torch.testing.assert_close(pf.focal_loss(x, t, ignore_index=ignore_index), kept)


def test_mean_divides_by_non_ignored_examples_not_classes():
    x, t = inputs("poly1_cross_entropy")
    t[:2] = -100
    per_example = pf.poly1_cross_entropy(x, t, reduction="none")
    torch.testing.assert_close(pf.poly1_cross_entropy(x, t), per_example.sum() / (t != -100).sum())


# --- no side effects, Modules, registry, compile --------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
def test_inputs_are_not_modified(name):
    x, t = inputs(name, scale=50.0)
    t = t * 3 if name in DISTRIBUTION else t  # targets past the last bin get clamped on a copy
    before = (x.clone(), t.clone())
    call(name, x, t)
    assert torch.equal(x, before[0]) and torch.equal(t, before[1])


#: stateful Modules whose first call already uses its own batch's statistics (seesaw counts the labels first)
COUNTS_FIRST = {"seesaw_loss"}


@pytest.mark.parametrize("name", sorted(set(ALL) - COUNTS_FIRST))
def test_module_equals_function(name):
    x, t = inputs(name)
    module = pf.build_loss(name, **ALL[name])
    torch.testing.assert_close(module(x, t), call(name, x, t))


def test_module_tensor_arguments_are_buffers():
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0])
    module = pf.FocalLoss(gamma=1.0, weight=weight)
    assert "weight" in dict(module.named_buffers())
    moved = copy.deepcopy(module).to(torch.float64)
    assert moved.weight.dtype == torch.float64 and weight.dtype == torch.float32


def test_build_loss_from_config_and_errors():
    assert isinstance(pf.build_loss({"name": "poly1_cross_entropy", "epsilon": 2.0}), pf.Poly1CrossEntropyLoss)
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        pf.build_loss("nope")
    with pytest.raises(ValueError, match="'name'"):
        pf.build_loss({"epsilon": 1.0})
    with pytest.raises(TypeError, match="unexpected arguments \\['gama'\\]"):
        pf.FocalLoss(gama=2.0)
    with pytest.raises(TypeError, match="n_terms"):
        pf.TruncatedCrossEntropyLoss()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ALL))
def test_compiles_fullgraph(name):
    torch._dynamo.reset()
    x, t = inputs(name)
    fn = pf.get_loss_function(name)
    compiled = torch.compile(lambda a, b: fn(a, b, **ALL[name]), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, t), call(name, x, t))


# --- bad input ------------------------------------------------------------------------------------


BAD = [
    ("focal_loss", {"gamma": -1.0}, ValueError, "`gamma` must be in \\[0.0, inf\\]; got -1.0"),
    ("focal_loss", {"gamma": float("nan")}, ValueError, "`gamma` must be finite"),
    ("focal_loss", {"gamma": "2"}, TypeError, "`gamma` must be a real number"),
    ("focal_loss", {"alpha": [0.1, 0.2]}, ValueError, "`alpha` must have shape \\(C,\\) = \\(4,\\); got \\(2,\\)"),
    ("cross_entropy", {"reduction": "avg"}, ValueError, "`reduction` must be one of"),
    ("cross_entropy", {"normalizer": 4.0, "reduction": "sum"}, ValueError, "`normalizer`"),
    ("cross_entropy", {"normalizer": 0.0}, ValueError, "`normalizer` must be in \\(0.0"),
    ("cross_entropy", {"label_smoothing": 1.5}, ValueError, "`label_smoothing`"),
    ("cross_entropy", {"weight": torch.ones(3)}, ValueError, "`weight` must have shape \\(C,\\)"),
    ("poly1_cross_entropy", {"epsilon": float("inf")}, ValueError, "`epsilon` must be finite"),
    ("polyn_cross_entropy", {"epsilons": ()}, ValueError, "`epsilons` must hold at least one"),
    ("poly_loss", {"tail": "keep"}, ValueError, "`tail` must be one of"),
    ("truncated_cross_entropy", {"n_terms": 0}, ValueError, "`n_terms` must be >= 1; got 0"),
    ("hard_truncated_loss", {"margin": 1.0}, ValueError, "`margin` must be in \\(0.0, 1.0\\)"),
    ("soft_truncated_loss", {"k": 0.0}, ValueError, "`k` must be in \\(0.0"),
    ("sigmoid_focal_loss", {"alpha": 1.5}, ValueError, "`alpha` must be in \\[0.0, 1.0\\]"),
    ("sigmoid_focal_loss", {"weight": torch.ones(5)}, ValueError, "`weight` must broadcast"),
    ("quality_focal_loss", {"beta": -2.0}, ValueError, "`beta`"),
    ("ghm_c_loss", {"bins": 0}, ValueError, "`bins` must be >= 1"),
]


@pytest.mark.parametrize("name, kwargs, error, message", BAD)
def test_bad_hyperparameters(name, kwargs, error, message):
    x, t = inputs(name)
    with pytest.raises(error, match=message):
        call(name, x, t, **kwargs)


def test_bad_targets():
    x = torch.randn(6, 4, 3)
    with pytest.raises(ValueError, match=r"`target` must have shape \(N, \*\) = \(6, 3\) for class indices; got \(6, 4\)"):
        pf.focal_loss(x, torch.zeros(6, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="`target` holds class index 4, outside \\[0, 3\\]"):
        pf.focal_loss(x, torch.full((6, 3), 4))
    with pytest.raises(ValueError, match="`target` holds class index -3"):
        pf.focal_loss(x, torch.full((6, 3), -3))
    with pytest.raises(ValueError, match="`target` holds class index 5, outside \\[0, 4\\] \\(C=4 is background\\)"):
        pf.sigmoid_focal_loss(x, torch.full((6, 3), 5))
    with pytest.raises(ValueError, match="`target` must lie in \\[0, 1\\]; got a value 2.0"):
        pf.sigmoid_focal_loss(x, torch.full((6, 4, 3), 2.0))
    with pytest.raises(ValueError, match="`target` must have the shape of `logits`"):
        pf.binary_cross_entropy(x, torch.rand(6, 4))
    with pytest.raises(TypeError, match="`target` must be integer class indices or float class probabilities"):
        pf.cross_entropy(x, torch.zeros(6, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="`logits` must be a floating-point tensor"):
        pf.cross_entropy(torch.zeros(6, 4, dtype=torch.long), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="`logits` must have C >= 2 classes"):
        pf.cross_entropy(torch.zeros(6, 1), torch.zeros(6, dtype=torch.long))
    with pytest.raises(TypeError, match="`target` must be a torch.Tensor"):
        pf.cross_entropy(x, [0, 1])


def test_validate_false_skips_value_checks_and_true_forces_them():
    x = torch.randn(6, 4)
    pf.sigmoid_focal_loss(x, torch.full((6, 4), 0.5), validate=False)
    with pytest.raises(ValueError, match="must lie in"):
        pf.sigmoid_focal_loss(x, torch.full((6, 4), 1.5), validate=True)


# --- properties -----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(SOFTMAX) + sorted(SIGMOID)), seed=st.integers(0, 10_000),
       n=st.integers(1, 7), scale=st.floats(0.1, 20.0))
def test_properties(name, seed, n, scale):
    x, t = inputs(name, n=n, scale=scale, seed=seed)
    per = call(name, x, t, reduction="none")
    if name != "poly1_focal_loss":  # epsilon = -1 may go below zero, as the paper allows
        assert (per >= -1e-6).all()
    torch.testing.assert_close(call(name, x, t, reduction="sum"), per.sum())
    if name != "ghm_c_loss":  # GHM's mean is over its histogram count (documented)
        locations = t.numel()  # index targets: mean over (N, *) locations, never C slots
        torch.testing.assert_close(per.sum() / locations, call(name, x, t), rtol=1e-5, atol=1e-6)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(call(name, x[order], t[order], reduction="none"), per[order])
    torch.testing.assert_close(call(name, x[order], t[order]), call(name, x, t), rtol=1e-5, atol=1e-6)


def test_short_aliases_name_registered_losses():
    assert set(pf.LOSS_ALIASES.values()) <= set(pf.available_losses())
    assert pf.get_loss_function("ce") is pf.cross_entropy
    assert isinstance(pf.build_loss("focal", gamma=1.0), pf.FocalLoss)
    assert isinstance(pf.build_loss({"name": "ghm"}), pf.GHMCLoss)


def test_a_target_of_the_wrong_kind_is_named_as_such():
    x = torch.randn(4, 3)
    with pytest.raises(pf.InputError):  # a caller's mistake, catchable as such (and as TypeError)
        pf.focal_loss(x, torch.tensor([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(TypeError, match=r"class indices, which must be an integer tensor; got dtype torch.float32"):
        pf.focal_loss(x, torch.tensor([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(TypeError, match=r"0/1 or soft target, which must be a float tensor; got dtype torch.int64"):
        pf.sigmoid_focal_loss(x, torch.randint(0, 2, (4, 3)))
    with pytest.raises(ValueError, match=r"`alpha` must be in \[0.0, 1.0\] \(None turns it off\); got -1.0"):
        pf.sigmoid_focal_loss(x, torch.rand(4, 3), alpha=-1)


def test_imports_and_runs_without_docstrings():
    """``python -OO`` strips docstrings; the shared docstring fragments must not be required."""
    code = "import torch, polyfocal as pf; print(float(pf.focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]))))"
    result = subprocess.run([sys.executable, "-OO", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(float(pf.focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]))))


#: losses whose Module accumulates statistics from each call (a second call is not the function's)
STATEFUL = {d.name for d in pf.registry.declarations()
            if issubclass(type(pf.build_loss(d.name, **ALL[d.name])), pf._loss_module.StatisticsModule)}


def test_the_stateful_modules_are_the_ones_with_statistics():
    assert STATEFUL == {"ghm_c_loss", "ghm_r_loss", "eqlv2_loss", "equalized_focal_loss", "seesaw_loss"}


@pytest.mark.parametrize("name", sorted((set(SOFTMAX) | set(SIGMOID) | set(DISTRIBUTION)) - STATEFUL))
def test_module_takes_per_call_weight_and_normalizer(name):
    x, t = inputs(name)
    weight = torch.rand(x.shape[1]) + 0.5 if name in SOFTMAX else torch.rand(x.shape[0], 1, *x.shape[2:]) + 0.5
    if name in DISTRIBUTION:
        weight = torch.rand(t.shape) + 0.5
    module = pf.build_loss(name, **ALL[name])
    for kwargs in ({"normalizer": 7.0}, {"weight": weight}, {"weight": weight, "normalizer": torch.tensor(3.0)}):
        torch.testing.assert_close(module(x, t, **kwargs), call(name, x, t, **kwargs))
    torch.testing.assert_close(module(x, t), call(name, x, t))  # and the next call is back to the Module's own


#: a value each Module must reject when it is built, before any logits exist
BAD_OPTIONS = [("reduction", "avg"), ("gamma", -1.0), ("label_smoothing", 2.0), ("epsilon", "x"), ("k", -1.0),
               ("margin", 1.5), ("beta", -1.0), ("alpha", -1.0), ("ignore_index", 0.5)]


@pytest.mark.parametrize("name", sorted(set(ALL) - {"ghm_c_loss", "ghm_r_loss"}))
def test_a_module_rejects_a_bad_hyperparameter_when_built(name):
    """The Module checks its number-valued options with a call on a tiny example; tensor options,
    which must fit the caller's logits, are left to the first call (and not rejected here)."""
    takes = set(pf.get_loss_function(name).__kwdefaults__)
    checked = 0
    for option, value in BAD_OPTIONS:
        if option in takes:
            with pytest.raises(pf.InputError, match=f"`{option}`"):
                pf.build_loss(name, **{**ALL[name], option: value})
            checked += 1
    assert checked >= 1
    if "weight" not in takes:  # the unified focal loss: its class weights are delta's
        return
    x, t = inputs(name)
    weight = torch.rand(x.shape[1]) + 0.5 if name in SOFTMAX or name in REGION else torch.rand(x.shape) + 0.5
    if name in DISTRIBUTION:
        weight = torch.rand(t.shape) + 0.5
    module = pf.build_loss(name, **ALL[name], weight=weight)  # fits these logits, not the check's example
    if name not in COUNTS_FIRST:
        torch.testing.assert_close(module(x, t), call(name, x, t, weight=weight))


def test_the_check_at_construction_does_not_run_the_chosen_engine(monkeypatch):
    """A Module made for CUDA logits (``backend="triton"``) or a compiled engine is checked on the
    reference engine: building it runs no kernel and compiles nothing."""
    from polyfocal import _rows, _triton

    def no_kernel(*args, **kwargs):
        raise AssertionError("a kernel ran at construction")

    monkeypatch.setattr(_triton, "row_statistics", no_kernel)
    monkeypatch.setattr(_rows, "run", no_kernel)
    for backend in ("triton", "fused"):
        pf.FocalLoss(gamma=1.0, backend=backend)
    with pytest.raises(pf.InputError, match="`backend`"):
        pf.FocalLoss(backend="gpu")  # the name is checked; only the engine is not run
