"""polyfocal.integrations.transformers against the real Trainer (tiny models built from config objects, no
downloads): one optimizer step over 4 micro-batches of 2 equals one over a batch of 8, with uneven token
counts per micro-batch, for CE, focal and Poly-1."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from polyfocal.integrations.transformers import compute_loss_func, use_linear_loss  # noqa: E402

VOCAB, LABELS = 48, 5


class Examples(torch.utils.data.Dataset):
    """8 sequences of uneven length (padding labelled -100), so micro-batches hold uneven token counts."""

    def __init__(self, task: str, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(8):
            ids = torch.randint(1, VOCAB, (10,), generator=g)
            keep = 2 + (i * 3) % 9  # 2 to 10 labelled positions
            if task == "causal_lm":
                labels = ids.clone()
            else:
                labels = torch.randint(0, LABELS, (10,), generator=g)
            labels[keep:] = -100
            self.items.append({"input_ids": ids, "attention_mask": torch.ones(10, dtype=torch.long), "labels": labels})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def tiny_model(task: str):
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                                      num_labels=LABELS, pad_token_id=0)
    torch.manual_seed(0)
    if task == "causal_lm":
        return transformers.LlamaForCausalLM(config)
    return transformers.LlamaForTokenClassification(config)


def one_step(task: str, loss_func, batch: int, accumulation: int, tmp_path) -> dict:
    model = tiny_model(task)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / f"{batch}x{accumulation}"), per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.5, optim="sgd",
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, report_to="none", use_cpu=True,
        save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Examples(task), compute_loss_func=loss_func)
    trainer.train()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["causal_lm", "token_classification"])
@pytest.mark.parametrize("loss, params", [("cross_entropy", {}), ("focal_loss", {"gamma": 2.0}),
                                          ("poly1_cross_entropy", {"epsilon": 1.0})])
def test_accumulating_4_micro_batches_of_2_equals_one_batch_of_8(task, loss, params, tmp_path):
    loss_func = compute_loss_func(loss, task=task, **params)
    start = {name: p.detach().clone() for name, p in tiny_model(task).named_parameters()}
    whole, accumulated = (one_step(task, loss_func, b, a, tmp_path) for b, a in ((8, 1), (2, 4)))
    moved = max(float((whole[n] - start[n]).abs().max()) for n in whole)
    assert moved > 1e-3  # the step did something
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_per_micro_batch_means_would_not_be_equal(tmp_path):
    """The property above is not automatic: a loss that ignores num_items_in_batch (each micro-batch's
    own mean, as before Transformers' 2024 fix) takes a different step."""
    plain = compute_loss_func("cross_entropy", task="causal_lm")
    per_batch = lambda outputs, labels, num_items_in_batch=None: plain(outputs, labels) / 4  # noqa: E731
    whole = one_step("causal_lm", plain, 8, 1, tmp_path)
    accumulated = one_step("causal_lm", per_batch, 2, 4, tmp_path)
    assert max(float((whole[n] - accumulated[n]).abs().max()) for n in whole) > 1e-4


def test_the_loss_is_the_window_sum_over_num_items_and_a_mean_without_it():
    import polyfocal as pf

    logits, labels = torch.randn(2, 6, VOCAB), torch.randint(0, VOCAB, (2, 6))
    labels[0, 4:] = -100
    outputs = transformers.modeling_outputs.CausalLMOutput(logits=logits)
    func = compute_loss_func("focal", task="causal_lm", gamma=1.5)
    rows, target = logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1)
    total = pf.focal_loss(rows, target, gamma=1.5, reduction="sum")
    torch.testing.assert_close(func(outputs, labels, num_items_in_batch=torch.tensor(17)), total / 17)
    torch.testing.assert_close(func(outputs, labels), total / (target != -100).sum())


@pytest.mark.parametrize("outputs, labels, match", [
    ({"loss": torch.zeros(())}, torch.zeros(2, 3, dtype=torch.long), "must hold `logits`; got dict with \\['loss'\\]"),
    ({"logits": torch.zeros(2, 3)}, torch.zeros(2, 3, dtype=torch.long), "causal_lm needs logits of 3 dimensions"),
])
def test_outputs_without_logits_or_of_the_wrong_shape_are_named(outputs, labels, match):
    with pytest.raises(ValueError, match=match):
        compute_loss_func(task="causal_lm")(outputs, labels)
    with pytest.raises(ValueError, match="`task` must be one of"):
        compute_loss_func(task="masked_lm")
    with pytest.raises(ValueError, match="`loss` must name a softmax-family loss"):
        compute_loss_func("bce", task="causal_lm")
    with pytest.raises(ValueError, match="`loss` must name a softmax-family loss"):
        use_linear_loss(tiny_model("causal_lm"), "sigmoid_focal")


def test_sequence_classification_takes_one_label_per_sequence():
    import polyfocal as pf

    logits, labels = torch.randn(4, LABELS), torch.tensor([0, 3, -100, 1])
    outputs = transformers.modeling_outputs.SequenceClassifierOutput(logits=logits)
    got = compute_loss_func("poly1", task="sequence_classification", epsilon=2.0)(outputs, labels, num_items_in_batch=3)
    torch.testing.assert_close(got, pf.poly1_cross_entropy(logits, labels, epsilon=2.0, reduction="sum") / 3)


def test_the_linear_loss_patch_equals_the_models_own_loss_without_logits():
    examples = Examples("causal_lm")
    batch = {k: torch.stack([examples[i][k] for i in range(4)]) for k in ("input_ids", "attention_mask", "labels")}
    results = []
    for patch in (False, True):
        model = tiny_model("causal_lm")
        if patch:
            use_linear_loss(model)
        out = model(**batch)
        out.loss.backward()
        assert (out.logits is None) == patch
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-5, atol=1e-6)
    assert tiny_model("causal_lm").forward(input_ids=batch["input_ids"]).logits.shape == (4, 10, VOCAB)


@pytest.mark.slow
def test_the_patched_model_under_trainer_accumulates_exactly(tmp_path):
    def patched_step(batch, accumulation):
        model = use_linear_loss(tiny_model("causal_lm"), "focal_loss", gamma=2.0)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / f"{batch}"), per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.5, optim="sgd",
            lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, report_to="none", use_cpu=True,
            save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0)
        transformers.Trainer(model=model, args=args, train_dataset=Examples("causal_lm")).train()
        return {name: p.detach().clone() for name, p in model.named_parameters()}

    whole, accumulated = patched_step(8, 1), patched_step(2, 4)
    via_compute_loss = one_step("causal_lm", compute_loss_func("focal_loss", task="causal_lm", gamma=2.0), 8, 1,
                                tmp_path)
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(whole[name], via_compute_loss[name], rtol=1e-5, atol=1e-6)
