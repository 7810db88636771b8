"""The fused linear head (``linear_loss``, ``LinearLoss``, ``vocab_parallel_linear_loss``): the loss of
``hidden @ head_weight.T + head_bias`` a chunk of rows at a time, held to the unfused path (the
logits materialised, then the polyfocal loss) and to the float64 references."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import polyfocal as pf
import reference as ref
from _dispatch import LiveLargeTensors
from _gloo import assert_shards_agree, needs_gloo, run_ranks
from polyfocal import _triton
from reference import declared

SOFTMAX = declared("softmax")
N, H, V = 29, 12, 37


def head(n=N, h=H, v=V, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype)
    weight = torch.randn(v, h, generator=g, dtype=dtype) * scale / h ** 0.5
    bias = torch.randn(v, generator=g, dtype=dtype) * 0.1
    target = torch.randint(0, v, (n,), generator=g)
    target[::4] = -100
    return hidden, weight, bias, target


def loss_and_grads(f, hidden, weight, bias, upstream=None):
    inputs = [t.detach().clone().requires_grad_() for t in (hidden, weight, bias)]
    loss = f(*inputs)
    seed = torch.ones(()) if upstream is None else upstream
    return (loss.detach(), *torch.autograd.grad((loss * seed.to(loss.dtype)).sum(), inputs))


def unfused(name, target, **kwargs):
    return lambda h, w, b: pf.get_loss_function(name)(torch.addmm(b, h, w.T), target, **kwargs)


def fused(name, target, **kwargs):
    return lambda h, w, b: pf.linear_loss(h, w, target, loss=name, head_bias=b, **kwargs)


#: losses that multiply the logits by a factor (LDAM's default scale s = 30): the chunked and the whole
#: matrix product round apart, and the loss sees that difference times the factor
LOGIT_SCALE = {"ldam_loss": 30.0}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", sorted(SOFTMAX))
def test_equals_the_unfused_path_in_value_and_all_three_gradients(name, reduction):
    hidden, weight, bias, target = head()
    upstream = torch.randn(N) if reduction == "none" else None  # a different gradient per token
    options = dict(SOFTMAX[name], reduction=reduction, weight=torch.rand(V) + 0.5)
    want = loss_and_grads(unfused(name, target, **options), hidden, weight, bias, upstream)
    for chunk in (1, 7, None):
        got = loss_and_grads(fused(name, target, chunk_size=chunk, **options), hidden, weight, bias, upstream)
        k = LOGIT_SCALE.get(name, 1.0)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=2e-5 * k, atol=2e-6 * k)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("name", sorted(ref.SOFTMAX))
def test_float64_equals_the_reference_to_1e_10(name, reduction):
    phi, params = ref.SOFTMAX[name]
    hidden, weight, bias, target = head(dtype=torch.float64, seed=1)
    upstream = torch.randn(N, dtype=torch.float64) if reduction == "none" else None
    want = loss_and_grads(lambda h, w, b: ref.softmax_loss(phi, torch.addmm(b, h, w.T), target, reduction=reduction,
                                                           **params), hidden, weight, bias, upstream)
    got = loss_and_grads(fused(name, target, chunk_size=6, reduction=reduction, **params), hidden, weight, bias, upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("options", [
    {"label_smoothing": 0.1}, {"alpha": torch.rand(V)}, {"normalizer": 7.0}, {"gamma": 0.5, "label_smoothing": 0.2},
])
def test_the_contracts_options_pass_through(options):
    hidden, weight, bias, target = head(seed=2)
    want = loss_and_grads(unfused("focal_loss", target, **options), hidden, weight, bias)
    got = loss_and_grads(fused("focal_loss", target, chunk_size=5, **options), hidden, weight, bias)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_z_loss_and_softcap_equal_their_composition(reduction):
    hidden, weight, bias, target = head(seed=3, scale=20.0)
    z, cap = 1e-3, 5.0
    valid = target != -100

    def composed(h, w, b):
        x = cap * torch.tanh(torch.addmm(b, h, w.T) / cap)
        z_rows = z * torch.logsumexp(x, 1) ** 2 * valid
        loss = pf.poly1_cross_entropy(x, target, reduction=reduction)
        return loss + (z_rows if reduction == "none" else z_rows.sum() / valid.sum())

    upstream = torch.randn(N) if reduction == "none" else None
    want = loss_and_grads(composed, hidden, weight, bias, upstream)
    got = loss_and_grads(fused("poly1", target, z_loss=z, softcap=cap, reduction=reduction, chunk_size=4),
                         hidden, weight, bias, upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)
    loss, z_loss = pf.linear_loss(hidden, weight, target, loss="poly1", head_bias=bias, z_loss=z, softcap=cap,
                                  return_z_loss=True)
    x = cap * torch.tanh(torch.addmm(bias, hidden, weight.T) / cap)
    torch.testing.assert_close(z_loss, (z * torch.logsumexp(x, 1) ** 2 * valid).sum() / valid.sum())
    assert not z_loss.requires_grad


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_and_empty_batches_give_zero_with_zero_gradients(reduction):
    hidden, weight, bias, target = head()
    for h, t in ((hidden, torch.full_like(target, -100)), (hidden[:0], target[:0])):
        loss, *grads = loss_and_grads(fused("focal_loss", t, reduction=reduction), h, weight, bias)
        assert loss.shape == ((len(t),) if reduction == "none" else ())
        assert (loss == 0).all() and all((g == 0).all() for g in grads)


def test_extreme_logits_stay_finite():
    hidden, weight, bias, target = head(scale=1e4)  # logits of order 1e4
    assert torch.addmm(bias, hidden, weight.T).abs().max() > 1e3
    for name in ("cross_entropy", "focal_loss", "poly1_cross_entropy", "dft_cross_entropy"):
        loss, *grads = loss_and_grads(fused(name, target, chunk_size=8, gamma=0.5) if name == "focal_loss"
                                      else fused(name, target, chunk_size=8), hidden, weight, bias)
        assert torch.isfinite(loss).all() and all(torch.isfinite(g).all() for g in grads), name


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


class _ProductOutputs(TorchDispatchMode):
    """The overload and storage of each matrix product's result."""

    def __init__(self):
        super().__init__()
        self.storages = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            self.storages.append((func._overloadname, out.untyped_storage().data_ptr(), tuple(out.shape)))
        return out


@pytest.mark.parametrize("bias", [False, True])
def test_every_chunk_writes_its_logits_into_one_buffer(bias):
    """The chunks' logits reuse one buffer (a fresh one is new pages to fault in at every chunk)."""
    n, h, v, chunk = 40, 8, 50, 8
    hidden, weight, head_bias, target = head(n, h, v)
    with _ProductOutputs() as mode:
        pf.linear_loss(hidden, weight, target, head_bias=head_bias if bias else None, chunk_size=chunk)
    logits = [(overload, ptr) for overload, ptr, shape in mode.storages if shape == (chunk, v)]
    full_chunks = int((target != -100).sum()) // chunk  # of the rows that count (30 of 40)
    assert full_chunks == 3 and len(logits) == full_chunks and len(set(logits)) == 1 and logits[0][0] == "out"


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_logits_exist_one_chunk_at_a_time(reduction):
    """No tensor of the call (forward and backward) is larger than a chunk of logits or the inputs."""
    n, h, v, chunk = 96, 8, 40, 8
    hidden, weight, bias, target = head(n, h, v)
    inputs = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    with _LargestTensor() as mode:
        loss = pf.linear_loss(*inputs[:2], target, loss="focal_loss", head_bias=inputs[2], chunk_size=chunk,
                              reduction=reduction)
        loss.sum().backward()
    assert mode.largest <= max(chunk * v, n * h, v * h) < n * v


def test_three_dimensional_hidden_states_and_per_token_losses():
    hidden, weight, bias, target = head(n=24)
    loss = pf.linear_loss(hidden.reshape(4, 6, H), weight, target.reshape(4, 6), head_bias=bias, reduction="none")
    assert loss.shape == (4, 6)
    torch.testing.assert_close(loss.reshape(-1), pf.cross_entropy(torch.addmm(bias, hidden, weight.T), target,
                                                                  reduction="none"))


def test_bf16_inputs_compute_the_loss_in_fp32():
    hidden, weight, bias, target = head(seed=5)
    got = loss_and_grads(fused("focal_loss", target, chunk_size=8), *(t.bfloat16() for t in (hidden, weight, bias)))
    want = loss_and_grads(unfused("focal_loss", target),
                          *(t.bfloat16().float() for t in (hidden, weight, bias)))
    assert got[0].dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in got[1:])
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, rtol=2e-2, atol=2e-2)


def test_module_equals_the_function_and_keeps_tensor_options_as_buffers():
    hidden, weight, bias, target = head(seed=6)
    alpha = torch.rand(V)
    module = pf.LinearLoss(loss="focal_loss", gamma=1.5, alpha=alpha, chunk_size=4)
    assert "alpha" in dict(module.named_buffers())
    torch.testing.assert_close(module(hidden, weight, target, head_bias=bias),
                               pf.focal_loss(torch.addmm(bias, hidden, weight.T), target, gamma=1.5, alpha=alpha))
    assert "focal_loss" in repr(module)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"loss": "binary_cross_entropy"}, ValueError, "`loss` must name a softmax-family loss"),
    ({"loss": "focall"}, ValueError, "`loss` names an unknown loss 'focall'; did you mean"),
    ({"chunk_size": 0}, ValueError, "`chunk_size` must be >= 1"),
    ({"softcap": 0.0}, ValueError, "`softcap`"),
    ({"z_loss": -1.0}, ValueError, "`z_loss`"),
    ({"reduction": "avg"}, ValueError, "`reduction` must be one of"),
    ({"head_bias": torch.zeros(3)}, ValueError, "`head_bias` must be None or a \\(37,\\) tensor"),
    ({"gamma": -1.0, "loss": "focal"}, ValueError, "`gamma`"),
])
def test_bad_input_names_the_argument(kwargs, error, match):
    hidden, weight, _, target = head()
    with pytest.raises(error, match=match):
        pf.linear_loss(hidden, weight, target, **kwargs)


def test_bad_shapes_name_the_argument():
    hidden, weight, _, target = head()
    with pytest.raises(ValueError, match="`head_weight` must have shape \\(V, H\\) with H = 12"):
        pf.linear_loss(hidden, weight[:, :5], target)
    with pytest.raises(ValueError, match="`target` must have shape \\(29,\\)"):
        pf.linear_loss(hidden, weight, target[:5])
    with pytest.raises(TypeError, match="`target` must be a tensor of class indices"):
        pf.linear_loss(hidden, weight, target.float())
    with pytest.raises(ValueError, match="`head_weight` must have hidden's dtype"):
        pf.linear_loss(hidden, weight.double(), target)


def test_target_indices_outside_the_vocabulary_are_named_once():
    from polyfocal.vocab_parallel import vocab_parallel_linear_loss

    hidden, weight, _, target = head()
    bad = target.clone()
    bad[3] = V
    with pytest.raises(ValueError, match=f"`target` holds class index {V}, outside \\[0, {V - 1}\\]"):
        pf.linear_loss(hidden, weight, bad, chunk_size=4)
    with pytest.raises(ValueError, match=f"`target` holds class index {V + 3}, outside \\[0, {V + 2}\\]"):
        vocab_parallel_linear_loss(hidden, weight, bad + 3 * (bad >= 0), vocab_start=0, num_classes=V + 3)


def test_second_derivatives_are_a_clear_error():
    hidden, weight, bias, target = head()
    h = hidden.clone().requires_grad_()
    loss = pf.linear_loss(h, weight, target)
    with pytest.raises(RuntimeError, match="no second derivatives"):
        torch.autograd.grad(loss, h, create_graph=True)


@pytest.mark.skipif(not _triton.available(), reason="triton is not installed")
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_triton_row_kernels_on_each_chunk(reduction):
    """backend="triton" runs each chunk on the Triton row kernels (the interpreter on CPU)."""
    hidden, weight, bias, target = head(seed=7)
    upstream = torch.randn(N) if reduction == "none" else None
    want = loss_and_grads(unfused("focal_loss", target, reduction=reduction), hidden, weight, bias, upstream)
    got = loss_and_grads(fused("focal_loss", target, reduction=reduction, chunk_size=8, backend="triton"),
                         hidden, weight, bias, upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


VOCAB_WORKER = Path(__file__).with_name("_vocab_parallel_worker.py")
PARALLEL_CASES = [("cross_entropy", {}, "mean"), ("focal_loss", {"gamma": 2.0, "alpha": torch.rand(V)}, "mean"),
                  ("poly1_cross_entropy", {"epsilon": 1.0, "weight": torch.rand(V) + 0.5}, "sum"),
                  ("dft_cross_entropy", {}, "none"), ("soft_truncated_loss", {"k": 2.0}, "none")]


@pytest.mark.slow
@needs_gloo
def test_vocab_parallel_over_two_ranks_equals_one_process(tmp_path):
    hidden, weight, bias, target = head(seed=8)
    upstream = torch.randn(N)
    data = {"hidden": hidden, "weight": weight, "bias": bias, "target": target, "upstream": upstream,
            "split": 15, "cases": PARALLEL_CASES}
    ranks = run_ranks(VOCAB_WORKER, data, tmp_path)
    for case, (name, kwargs, reduction) in enumerate(PARALLEL_CASES):
        want = loss_and_grads(fused(name, target, reduction=reduction, **kwargs), hidden, weight, bias,
                              upstream if reduction == "none" else None)
        assert_shards_agree(ranks, case, want, rtol=2e-5, atol=2e-6)


def test_vocab_parallel_refuses_label_smoothing_a_row_wide_loss_and_a_shard_outside_the_vocabulary():
    from polyfocal.vocab_parallel import vocab_parallel_linear_loss

    hidden, weight, _, target = head()
    with pytest.raises(ValueError, match="`label_smoothing` needs every class's probability"):
        vocab_parallel_linear_loss(hidden, weight, target, vocab_start=0, num_classes=V, label_smoothing=0.1)
    with pytest.raises(ValueError, match="must lie within `num_classes` = 40"):
        vocab_parallel_linear_loss(hidden, weight, target, vocab_start=10, num_classes=40)
    with pytest.raises(ValueError, match="'dual_focal' reads more of a row than p_t"):
        vocab_parallel_linear_loss(hidden, weight, target, vocab_start=0, num_classes=V, loss="dual_focal")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_a_scaled_and_a_repeated_backward_take_the_same_gradients(reduction):
    """The forward pass's gradients are handed out once, scaled in place; a second backward through
    the same graph (retain_graph) recomputes them, so .grad accumulates exactly twice."""
    hidden, weight, bias, target = head(seed=9)
    inputs = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    loss = pf.linear_loss(inputs[0], inputs[1], target, head_bias=inputs[2], loss="focal", chunk_size=6,
                          reduction=reduction)
    (3 * loss).backward(retain_graph=True)
    (3 * loss).backward()
    # against float64: the unfused fp32 path has rounding errors of its own, as large as the head's
    exact = (t.double() for t in (hidden, weight, bias))
    want = loss_and_grads(unfused("focal_loss", target, reduction=reduction), *exact)
    for got, expected in zip(inputs, want[1:]):
        torch.testing.assert_close(got.grad, 6 * expected.float(), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("shape, rows", [((4096, 512, 32000), 131), ((1024, 512, 128256), 128),
                                         ((8192, 1024, 32000), 160), ((2048, 1024, 128256), 128),
                                         ((16384, 1024, 128256), 130), ((100000, 64, 1000), 4194),
                                         ((1024, 512, 8000), 524), ((400000, 128, 1000), 6416)])
def test_the_default_chunk_is_sized_to_the_problem(shape, rows):
    """About N H / V rows (a chunk's logits the size of hidden), at most (N + V) H / (8 V) (the chunk's
    logits and their gradient a quarter of the inputs and their gradients), at least 128 rows and 2^22
    logits."""
    n, h, v = shape
    assert pf.linear.default_chunk_rows(n, h, v) == rows
    chunk_and_gradient, inputs_and_gradients = 2 * rows * v, 2 * (n + v) * h
    floor = max(pf.linear.MIN_CHUNK_ROWS * v, pf.linear.MIN_CHUNK_ELEMENTS)
    assert chunk_and_gradient <= max(inputs_and_gradients / 4, 2 * floor)


def test_the_default_chunk_is_flat_in_the_number_of_rows():
    """At V = 128,256 and H = 1024, from 1,024 to 16,384 rows: the head's extra memory within 10%."""
    rows = [pf.linear.default_chunk_rows(n, 1024, 128256) for n in (1024, 2048, 4096, 8192, 16384)]
    assert max(rows) <= 1.1 * min(rows)


def test_linear_loss_runs_the_default_chunk_over_the_rows_that_count(monkeypatch):
    """Chunks of the default rows, over the 72 of 96 rows whose target is not ignored: an ignored row's logits
    are never made (its loss and gradient are 0)."""
    monkeypatch.setattr(pf.linear, "MIN_CHUNK_ROWS", 1)
    monkeypatch.setattr(pf.linear, "MIN_CHUNK_ELEMENTS", 1)
    seen, chunk = [], pf.linear._chunk
    monkeypatch.setattr(pf.linear, "_chunk", lambda head, h, *args: seen.append(h) or chunk(head, h, *args))
    hidden, weight, bias, target = head(n=96, h=8, v=40)
    pf.linear_loss(hidden, weight, target, head_bias=bias)
    rows, kept = pf.linear.default_chunk_rows(96, 8, 40), hidden[target != -100]
    assert 1 < rows < 72 and [h.shape[0] for h in seen] == [rows] * (72 // rows) + ([72 % rows] if 72 % rows else [])
    assert torch.equal(torch.cat(seen), kept)


def _chunk_rows_seen(monkeypatch, mode=None, loss="focal_loss", **kwargs) -> list:
    """The rows of each chunk of a head of ``loss`` with a default chunk of 4 rows (``mode``: a dispatch mode to
    run it under), its loss checked against the unfused one."""
    monkeypatch.setattr(pf.linear, "MIN_CHUNK_ROWS", 4)
    monkeypatch.setattr(pf.linear, "MIN_CHUNK_ELEMENTS", 1)
    n, h, v = 96, 2, 400
    seen, chunk = [], pf.linear._chunk
    monkeypatch.setattr(pf.linear, "_chunk", lambda head, x, *args: seen.append(x.shape[0]) or chunk(head, x, *args))
    hidden, weight, bias, target = head(n, h, v)
    inputs = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    assert pf.linear.default_chunk_rows(n, h, v) == 4
    with mode or contextlib.nullcontext():
        got = pf.linear_loss(*inputs[:2], target, loss=loss, head_bias=inputs[2], **kwargs)
    logits, valid = hidden @ weight.T + bias, target != -100
    z_loss = kwargs.get("z_loss", 0) * (torch.logsumexp(logits, 1).square() * valid).sum() / valid.sum()
    torch.testing.assert_close(got, getattr(pf, loss)(logits, target) + z_loss, rtol=1e-5, atol=1e-6)
    return seen


#: the logits of a chunk of 4 rows (the most bytes of such storages alive at once: 2 of these budgeted)
CHUNK_BYTES = 4 * 400 * 4


@pytest.mark.parametrize("loss, backend", [("focal_loss", "eager"), ("focal_loss", "fused"), ("cross_entropy", None)])
def test_the_gradient_is_written_over_the_chunks_logits_and_later_chunks_take_twice_the_rows(monkeypatch, loss,
                                                                                             backend):
    """The row engine writes each chunk's gradient over its logits (the head gives them up), so after the first
    chunk one buffer of twice the rows fits the memory of the default chunk's two buffers (logits and
    gradient), the first buffer freed before the second is made (eager: measured; the compiled kernel's own
    buffers are out of the dispatcher's sight, and it compiles under no dispatch mode). Plain cross-entropy
    takes the row engine too, not torch's kernel, whose buffers would sit beside the chunk's (its small last
    chunk added 12 MiB at (4096, 512, 32000))."""
    mode = LiveLargeTensors(CHUNK_BYTES // 4) if backend != "fused" else None
    kwargs = {} if backend is None else {"backend": backend}
    assert _chunk_rows_seen(monkeypatch, mode, loss, **kwargs) == [4] + [8] * 8 + [4]  # 72 rows not ignored
    assert mode is None or mode.most_bytes <= 2 * CHUNK_BYTES, mode.most_bytes


@pytest.mark.parametrize("kwargs", [{"z_loss": 1e-3}, {"chunk_size": 4}])
def test_the_chunks_keep_their_rows_where_the_logits_are_read_again_or_the_size_was_given(monkeypatch, kwargs):
    """The z-loss reads a chunk's logits after the loss: they are not given up, and a chunk keeps two buffers.
    A ``chunk_size`` given is kept (and then one buffer holds a chunk)."""
    mode = LiveLargeTensors(CHUNK_BYTES // 4)
    assert _chunk_rows_seen(monkeypatch, mode, backend="eager", **kwargs) == [4] * 18
    assert "z_loss" in kwargs or mode.most_bytes <= CHUNK_BYTES, mode.most_bytes


def test_a_kernel_that_fails_after_writing_over_the_logits_has_the_chunk_made_again(monkeypatch):
    """Under a dispatch mode dynamo runs the fused kernel as Python, which writes over the chunk's logits, and
    then refuses it (fullgraph): the head makes the logits again and runs the chunk without giving them up
    (the fallback engine on the written-over logits gave a loss off by 0.5%); the next chunks run on the eager
    engine, which writes over them again, so they grow."""
    from polyfocal import _fused

    monkeypatch.setattr(_fused, "_broken", None)  # restored after the test: the failure disables the engine
    monkeypatch.delenv("POLYFOCAL_STRICT", raising=False)  # and then the eager engine runs the chunks
    with pytest.warns(RuntimeWarning, match="fused engine is unavailable"):
        assert _chunk_rows_seen(monkeypatch, LiveLargeTensors(1), backend="fused") == [4, 4] + [8] * 8


def test_logits_given_up_are_only_those_the_caller_named():
    """A loss called on any other tensor inside :func:`polyfocal._rows.logits_given_up` leaves it as it was."""
    x, other, t = torch.randn(64, 500, requires_grad=True), torch.randn(64, 500), torch.randint(0, 500, (64,))
    before = x.detach().clone()
    with pf._rows.logits_given_up(other):
        torch.autograd.grad(pf.focal_loss(x, t, backend="eager"), x)
    assert torch.equal(x.detach(), before)


def test_inside_torch_func_the_head_says_what_to_do_instead():
    """The chunked head's autograd Function cannot serve functorch's wrapped tensors: a clear error naming the
    head and the way out, not functorch's own about setup_context (every head that runs it: linear_loss,
    the distillation head, a top-k student given as (hidden, head))."""
    h, w, wt = torch.randn(6, 8), torch.randn(11, 8), torch.randn(11, 8)
    t = torch.randint(0, 11, (6,))
    values, indices = torch.randn(6, 11).topk(3, dim=-1)
    calls = [lambda v: pf.linear_loss(v, w, t, loss="focal_loss"),
             lambda v: pf.linear_distillation_loss(v, w, h, wt, t),
             lambda v: pf.topk_distillation_loss((v, w), values, indices)]
    from polyfocal import vocab_parallel  # noqa: PLC0415 (its Function refuses first, before any rank is asked)

    calls.append(lambda v: vocab_parallel._VocabParallel.apply(v, w, None, None).sum())
    for call in calls:
        with pytest.raises(NotImplementedError, match=r"torch\.func transform .* call the loss on them"):
            torch.func.grad(call)(h)
    logits_form = torch.func.grad(lambda v: pf.topk_distillation_loss(v @ w.T, values, indices))(h)
    z = h.clone().requires_grad_()
    torch.testing.assert_close(logits_form, torch.autograd.grad(pf.topk_distillation_loss(z @ w.T, values, indices),
                                                                z)[0])
