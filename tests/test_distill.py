"""Fused distillation (``polyfocal.distill``): held in float64 to references on materialised logits, written
here from the formulas (``F.kl_div`` for the two KLs, the JSD written out, ``F.cross_entropy`` and
polyfocal's own losses for the hard part), in value and in every student gradient."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import polyfocal as pf
from _dispatch import LiveLargeTensors
from _gloo import assert_shards_agree, needs_gloo, run_ranks
from test_linear import _LargestTensor

N, H, HT, V = 13, 6, 9, 31


def heads(seed=0, dtype=torch.float64, n=N):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(n, H, generator=g, dtype=dtype), torch.randn(V, H, generator=g, dtype=dtype),
               torch.randn(V, generator=g, dtype=dtype))
    teacher = (torch.randn(n, HT, generator=g, dtype=dtype), torch.randn(V, HT, generator=g, dtype=dtype) * 1.5,
               torch.randn(V, generator=g, dtype=dtype))
    target = torch.randint(0, V, (n,), generator=g)
    target[::5] = -100
    return student, teacher, target


def divergence_rows(student_logits, teacher_logits, divergence, beta, temperature):
    """Per token, from the formulas: KL(p_T || p_S), KL(p_S || p_T) or the JSD, times T^2."""
    ls = F.log_softmax(student_logits / temperature, 1)
    lt = F.log_softmax(teacher_logits / temperature, 1)
    if divergence == "forward_kl":
        rows = F.kl_div(ls, lt, log_target=True, reduction="none").sum(1)
    elif divergence == "reverse_kl":
        rows = F.kl_div(lt, ls, log_target=True, reduction="none").sum(1)
    else:
        m = beta * lt.exp() + (1 - beta) * ls.exp()
        rows = (beta * (lt.exp() * (lt - m.log())).sum(1) + (1 - beta) * (ls.exp() * (ls - m.log())).sum(1))
    return rows * temperature ** 2


def reference(student, teacher, target, *, divergence="forward_kl", beta=0.5, temperature=1.0, hard_loss=None,
              hard_weight=0.0, reduction="mean", biases=True, **hard_params):
    hs, ws, bs = student
    ht, wt, bt = teacher
    z = torch.addmm(bs, hs, ws.T) if biases else hs @ ws.T
    u = torch.addmm(bt, ht, wt.T) if biases else ht @ wt.T
    rows = divergence_rows(z, u.detach(), divergence, beta, temperature)
    if hard_loss is not None:
        hard = pf.get_loss_function(hard_loss)(z, target, reduction="none", backend="reference", **hard_params)
        rows = rows + hard_weight * hard
    valid = torch.ones_like(rows) if target is None else (target != -100).to(rows.dtype)
    rows = rows * valid
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / valid.sum().clamp_min(1)


def fused(student, teacher, target, biases=True, **kwargs):
    hs, ws, bs = student
    ht, wt, bt = teacher
    return pf.linear_distillation_loss(hs, ws, ht, wt, target, student_bias=bs if biases else None,
                                       teacher_bias=bt if biases else None, chunk_size=4, **kwargs)


def value_and_grads(f, student, teacher, target, upstream, **kwargs):
    inputs = [t.clone().requires_grad_() for t in student]
    loss = f(inputs, teacher, target, **kwargs)
    grads = torch.autograd.grad((loss * upstream).sum(), inputs, materialize_grads=True)  # no bias: zeros
    return (loss.detach(), *grads)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("hard", [None, ("cross_entropy", {}), ("focal_loss", {"gamma": 1.5}),
                                  ("cross_entropy", {"label_smoothing": 0.1})], ids=str)
@pytest.mark.parametrize("divergence, beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.2),
                                              ("jsd", 0.0), ("jsd", 1.0)])
def test_equals_the_unfused_reference(divergence, beta, hard, temperature, reduction):
    student, teacher, target = heads(seed=len(divergence) + int(10 * beta))
    hard_kwargs = {} if hard is None else {"hard_loss": hard[0], "hard_weight": 0.7, **hard[1]}
    kwargs = dict(divergence=divergence, beta=beta, temperature=temperature, reduction=reduction, **hard_kwargs)
    upstream = torch.rand(N, dtype=torch.float64) if reduction == "none" else torch.ones((), dtype=torch.float64)
    want = value_and_grads(reference, student, teacher, target, upstream, **kwargs)
    got = value_and_grads(fused, student, teacher, target, upstream, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("target_given", [True, False])
def test_without_biases_and_without_a_target(target_given):
    """No biases; without a target every token counts, in the sum and in the mean's count."""
    student, teacher, target = heads(seed=3)
    target = target if target_given else None
    upstream = torch.ones((), dtype=torch.float64)
    want = value_and_grads(reference, student, teacher, target, upstream, biases=False)
    got = value_and_grads(fused, student, teacher, target, upstream, biases=False)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if not target_given:
        torch.testing.assert_close(got[0] * N, value_and_grads(reference, student, teacher, None, upstream,
                                                               biases=False, reduction="sum")[0])


def test_the_mean_counts_the_whole_batch_and_ignored_tokens_count_for_nothing():
    student, teacher, target = heads(seed=4)
    everything_ignored = torch.full_like(target, -100)
    loss, *grads = value_and_grads(fused, student, teacher, everything_ignored, torch.ones((), dtype=torch.float64),
                                   hard_loss="cross_entropy", hard_weight=1.0)
    assert loss == 0 and all(g.abs().max() == 0 for g in grads)
    # chunks of 4 rows, 1 in 5 ignored: a chunk's own count would differ from the batch's 10
    mean = fused(student, teacher, target)
    torch.testing.assert_close(mean * 10, fused(student, teacher, target, reduction="sum"))


def test_gradcheck():
    student, teacher, target = heads(seed=5, n=5)
    ht, wt, bt = teacher

    def f(hs, ws, bs):
        return pf.linear_distillation_loss(hs, ws, ht, wt, target[:5], divergence="jsd", beta=0.3, temperature=2.0,
                                           hard_loss="focal_loss", hard_weight=0.5, gamma=2.0, student_bias=bs,
                                           teacher_bias=bt, chunk_size=2)

    assert torch.autograd.gradcheck(f, tuple(t.clone().requires_grad_() for t in student))


def test_the_teacher_is_a_constant():
    """A teacher that requires a gradient is used detached, silently: no gradient reaches it, no warning."""
    student, teacher, target = heads(seed=6)
    teacher = [t.clone().requires_grad_() for t in teacher]
    hs = student[0].clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = pf.linear_distillation_loss(hs, student[1], teacher[0], teacher[1], target, teacher_bias=teacher[2])
        loss.backward()
    assert hs.grad is not None and all(t.grad is None for t in teacher)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_neither_logit_tensor_exists_whole(reduction):
    """No tensor of the call, forward and backward, is larger than a chunk of logits or the inputs."""
    n, chunk = 96, 8
    student, teacher, target = heads(seed=7, dtype=torch.float32, n=n)
    inputs = [t.clone().requires_grad_() for t in student]
    with _LargestTensor() as mode:
        loss = pf.linear_distillation_loss(inputs[0], inputs[1], teacher[0], teacher[1], target, student_bias=inputs[2],
                                           teacher_bias=teacher[2], hard_loss="focal_loss", hard_weight=0.5,
                                           divergence="jsd", chunk_size=chunk, reduction=reduction)
        loss.sum().backward()
    assert mode.largest <= max(chunk * V, n * HT, V * HT) < n * V


@pytest.mark.parametrize("hard", [None, "focal_loss"])
def test_a_chunk_holds_two_logit_sized_buffers(hard):
    """Each log-softmax is written over its logits, and a hard part runs a block of rows at a time: no third
    buffer of a chunk's logits waits for the divergence's gradient (16 rows a block; a chunk of 48)."""
    n, chunk, v = 96, 48, 64
    student, teacher, target = heads(seed=9, dtype=torch.float32, n=n)
    student = (student[0], torch.randn(v, H), torch.randn(v))
    teacher = (teacher[0], torch.randn(v, HT), torch.randn(v))
    target = target % v
    inputs = [t.clone().requires_grad_() for t in student]
    hard_kwargs = {} if hard is None else {"hard_loss": hard, "hard_weight": 0.5}
    with LiveLargeTensors(chunk * v // 2) as mode:  # larger than a block of rows, and than any input
        loss = pf.linear_distillation_loss(inputs[0], inputs[1], *teacher[:2], target, student_bias=inputs[2],
                                           teacher_bias=teacher[2], chunk_size=chunk, **hard_kwargs)
        loss.backward()
    assert mode.most == 2


def test_low_precision_students_compute_in_fp32():
    student, teacher, target = heads(seed=8, dtype=torch.float32)
    low = [t.bfloat16() for t in student]
    loss = pf.linear_distillation_loss(low[0], low[1], *teacher[:2], target, student_bias=low[2],
                                       teacher_bias=teacher[2])
    assert loss.dtype == torch.bfloat16
    want = reference([t.float() for t in low], teacher, target)
    torch.testing.assert_close(loss.float(), want.float(), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="`head_weight` must have hidden's dtype"):
        pf.linear_distillation_loss(student[0], low[1], *teacher[:2], target)


def test_the_module_is_the_function():
    student, teacher, target = heads(seed=9)
    module = pf.LinearDistillationLoss(divergence="reverse_kl", temperature=2.0, hard_loss="poly1",
                                       hard_weight=0.3, epsilon=1.0)
    got = module(student[0], student[1], teacher[0], teacher[1], target, student_bias=student[2],
                 teacher_bias=teacher[2])
    want = reference(student, teacher, target, divergence="reverse_kl", temperature=2.0,
                     hard_loss="poly1_cross_entropy", hard_weight=0.3, epsilon=1.0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert "reverse_kl" in repr(module)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, "`temperature` must be in \\(0.0, inf\\]; got 0.0"),
    ({"beta": 1.5}, "`beta` must be in \\[0.0, 1.0\\]; got 1.5"),
    ({"divergence": "kl"}, "`divergence` must be one of \\('forward_kl', 'reverse_kl', 'jsd'\\); got 'kl'"),
    ({"hard_loss": "sigmoid_focal_loss"}, "`loss` must name a softmax-family loss"),
    ({"reduction": "avg"}, "`reduction` must be one of"),
    ({"chunk_size": 0}, "`chunk_size` must be >= 1"),
])
def test_bad_options_name_the_argument(kwargs, match):
    student, teacher, target = heads()
    with pytest.raises(ValueError, match=match):
        pf.linear_distillation_loss(student[0], student[1], teacher[0], teacher[1], target, **kwargs)


def test_bad_shapes_name_the_argument():
    (hs, ws, _), (ht, wt, bt), target = heads()
    with pytest.raises(ValueError, match="`teacher_head` must have the student's vocabulary, V = 31; got V = 30"):
        pf.linear_distillation_loss(hs, ws, ht, wt[:30], target)
    with pytest.raises(ValueError, match="`teacher_head` must have shape \\(V, H_t\\) with H_t = 9"):
        pf.linear_distillation_loss(hs, ws, ht, wt[:, :4], target)
    with pytest.raises(ValueError, match="`head_weight` must have shape \\(V, H\\) with H = 6"):
        pf.linear_distillation_loss(hs, ws[:, :4], ht, wt, target)
    with pytest.raises(ValueError, match="`teacher_hidden` must hold the student's tokens"):
        pf.linear_distillation_loss(hs, ws, ht[:4], wt, target)
    with pytest.raises(ValueError, match="`teacher_bias` must be None or a \\(31,\\) tensor"):
        pf.linear_distillation_loss(hs, ws, ht, wt, target, teacher_bias=bt[:3])
    with pytest.raises(ValueError, match="`hard_loss='cross_entropy'` needs `target`"):
        pf.linear_distillation_loss(hs, ws, ht, wt, None, hard_loss="cross_entropy", hard_weight=1.0)
    with pytest.raises(TypeError, match="options \\['gamma'\\] are the hard loss's"):
        pf.linear_distillation_loss(hs, ws, ht, wt, target, gamma=2.0)
    bad = target.clone()
    bad[1] = V
    with pytest.raises(ValueError, match=f"`target` holds class index {V}"):
        pf.linear_distillation_loss(hs, ws, ht, wt, bad)


# --- the top-k form ------------------------------------------------------------------------------------

def topk_reference(z, values, indices, temperature, renormalize):
    """From the formulas: the teacher's softmax over its k logits; the student's log-probability of
    those classes over the whole vocabulary, or renormalised over the k."""
    pt = torch.softmax(values / temperature, 1)
    if renormalize:
        log_q = torch.log_softmax(z.gather(1, indices) / temperature, 1)
    else:
        log_q = torch.log_softmax(z / temperature, 1).gather(1, indices)
    return (pt * (pt.log() - log_q)).sum(1) * temperature ** 2


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("form", ["logits", "head"])
def test_topk_equals_its_reference(form, temperature, renormalize, reduction):
    (hs, ws, bs), (ht, wt, bt), target = heads(seed=11)
    values, indices = torch.addmm(bt, ht, wt.T).topk(7, dim=1)
    upstream = torch.rand(N, dtype=torch.float64) if reduction == "none" else torch.ones((), dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (hs, ws, bs)]
    student = torch.addmm(inputs[2], inputs[0], inputs[1].T) if form == "logits" else (*inputs,)
    loss = pf.topk_distillation_loss(student, values, indices, temperature=temperature, renormalize=renormalize,
                                     target=target, reduction=reduction, chunk_size=4)
    got = (loss.detach(), *torch.autograd.grad((loss * upstream).sum(), inputs))
    inputs = [t.clone().requires_grad_() for t in (hs, ws, bs)]
    rows = topk_reference(torch.addmm(inputs[2], inputs[0], inputs[1].T), values, indices, temperature, renormalize)
    rows = rows * (target != -100)
    want_loss = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / (target != -100).sum()}[reduction]
    want = (want_loss.detach(), *torch.autograd.grad((want_loss * upstream).sum(), inputs))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_topk_renormalised_equals_the_full_distillation_at_k_equal_v():
    """With every class stored and renormalised, the top-k form is the forward KL of the whole vocabulary."""
    (hs, ws, bs), (ht, wt, bt), _ = heads(seed=12)
    u = torch.addmm(bt, ht, wt.T)
    values, indices = u.topk(V, dim=1)
    for renormalize in (False, True):
        got = pf.topk_distillation_loss((hs, ws, bs), values, indices, temperature=2.0, renormalize=renormalize)
        want = pf.linear_distillation_loss(hs, ws, ht, wt, student_bias=bs, teacher_bias=bt, temperature=2.0)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_topk_padding_with_minus_infinity_gives_the_shorter_distribution():
    (hs, ws, bs), (ht, wt, bt), _ = heads(seed=13)
    z = torch.addmm(bs, hs, ws.T)
    values, indices = torch.addmm(bt, ht, wt.T).topk(5, dim=1)
    padded_values = torch.cat([values, torch.full((N, 2), float("-inf"), dtype=values.dtype)], 1)
    padded_indices = torch.cat([indices, torch.zeros((N, 2), dtype=indices.dtype)], 1)
    got = pf.topk_distillation_loss(z, padded_values, padded_indices)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, pf.topk_distillation_loss(z, values, indices))


def test_topk_bad_input_names_the_argument():
    (hs, ws, bs), (ht, wt, bt), _ = heads()
    values, indices = torch.addmm(bt, ht, wt.T).topk(4, dim=1)
    z = hs @ ws.T
    with pytest.raises(ValueError, match="`teacher_indices` must lie in \\[0, 30\\]"):
        pf.topk_distillation_loss(z, values, indices + V)
    with pytest.raises(ValueError, match="`teacher_values` and `teacher_indices` must both have shape"):
        pf.topk_distillation_loss(z, values, indices[:, :3])
    with pytest.raises(TypeError, match="`teacher_indices` must be a tensor of class indices"):
        pf.topk_distillation_loss(z, values, indices.double())
    with pytest.raises(ValueError, match="`temperature`"):
        pf.topk_distillation_loss(z, values, indices, temperature=-1.0)
    with pytest.raises(ValueError, match="`student` must be logits or \\(hidden, head\\[, bias\\]\\)"):
        pf.topk_distillation_loss((hs,), values, indices)


# --- both heads sharded over the vocabulary -------------------------------------------------------------

PARALLEL_WORKER = Path(__file__).with_name("_distill_parallel_worker.py")
PARALLEL_CASES = [{"divergence": "forward_kl"}, {"divergence": "reverse_kl", "temperature": 2.0, "reduction": "sum"},
                  {"divergence": "jsd", "beta": 0.3, "reduction": "none"}]


@pytest.mark.slow
@needs_gloo
def test_vocab_parallel_over_two_ranks_equals_one_process(tmp_path):
    student, teacher, target = heads(seed=14)
    upstream = torch.rand(N, dtype=torch.float64)
    data = {"student": student, "teacher": teacher, "target": target, "upstream": upstream, "split": 12,
            "cases": PARALLEL_CASES}
    ranks = run_ranks(PARALLEL_WORKER, data, tmp_path)
    for case, kwargs in enumerate(PARALLEL_CASES):
        up = upstream if kwargs.get("reduction") == "none" else torch.ones((), dtype=torch.float64)
        want = value_and_grads(reference, student, teacher, target, up, **kwargs)
        assert_shards_agree(ranks, case, want, rtol=1e-10, atol=1e-12)


def test_vocab_parallel_refuses_a_shard_outside_the_vocabulary():
    (hs, ws, _), (ht, wt, _), target = heads()
    with pytest.raises(ValueError, match="must lie within `num_classes` = 40"):
        pf.vocab_parallel_linear_distillation_loss(hs, ws, ht, wt, target, vocab_start=20, num_classes=40)
