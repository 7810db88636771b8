"""Every Python block of the README runs as written. A block that uses names from around it (a model, a
Trainer's arguments, validation logits) gets them from a context built here, with tiny models made from
config objects; the blocks that need timm or Ultralytics run in the vision environment
(tests/vision/test_readme_vision.py)."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

import polyfocal as pf

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
VISION = ("polyfocal.integrations.timm", "polyfocal.integrations.ultralytics")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def run_block(block: str, namespace: dict) -> dict:
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (the README's own code)
    return namespace


def causal_lm(family: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=16, bos_token_id=0,
                                         eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return transformers.GPT2LMHeadModel(config)
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(config)


def head_context(tmp_path, family: str = "llama") -> dict:
    return {"model": causal_lm(family), "input_ids": torch.randint(0, 40, (2, 9))}


def calibration_context(tmp_path) -> dict:
    return {"pf": pf, "logits": torch.randn(16, 5, requires_grad=True), "labels": torch.randint(0, 5, (16,)),
            "val_logits": torch.randn(64, 5), "val_labels": torch.randint(0, 5, (64,))}


def trainer_context(tmp_path) -> dict:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    data = [{"input_ids": torch.randint(0, 40, (8,)), "labels": torch.randint(0, 40, (8,))} for _ in range(4)]
    return {"Trainer": transformers.Trainer, "model": causal_lm("llama"), "args": args, "data": data}


def distillation_context(tmp_path) -> dict:
    return {"student": causal_lm("llama"), "teacher": causal_lm("gpt2"), "input_ids": torch.randint(0, 40, (2, 9))}


#: a phrase of each block -> the names it uses from around it
CONTEXTS = {"pf.focal_loss(logits, target": lambda tmp_path: {}, "pf.linear_loss(hidden": head_context,
            "pf.AdaFocalLoss()": calibration_context, "compute_loss_func(": trainer_context,
            "pf.linear_distillation_loss(student_hidden": distillation_context,
            "pf.class_prior(counts)": lambda tmp_path: {}, "pf.dice_focal_loss(logits": lambda tmp_path: {}}


def context_of(block: str):
    matches = [make for phrase, make in CONTEXTS.items() if phrase in block]
    assert len(matches) == 1, f"give this README block one context in tests/test_readme.py:\n{block}"
    return matches[0]


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_every_readme_block_runs_as_written(index, tmp_path):
    block = python_blocks()[index]
    if any(name in block for name in VISION):
        pytest.skip("runs in the vision environment (tests/vision/test_readme_vision.py)")
    namespace = run_block(block, context_of(block)(tmp_path))
    assert "loss" not in namespace or torch.isfinite(namespace["loss"]).all()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_head_block_fits_gpt2_and_llama_and_takes_the_heads_own_input(family, tmp_path):
    """Its hidden states are the head's input: the loss equals focal loss on the model's own logits."""
    (block,) = [b for b in python_blocks() if "pf.linear_loss(hidden" in b]
    namespace = run_block(block, head_context(tmp_path, family))
    logits = namespace["model"](namespace["input_ids"]).logits[:, :-1]
    expected = pf.focal_loss(logits.reshape(-1, logits.shape[-1]), namespace["input_ids"][:, 1:].reshape(-1),
                             gamma=2.0)
    torch.testing.assert_close(namespace["loss"], expected, rtol=1e-5, atol=1e-6)


def test_the_distillation_block_is_forward_kl_on_the_models_own_logits(tmp_path):
    """Its hidden states are the heads' inputs: the loss equals T^2 KL plus half the cross-entropy on the
    two models' own logits."""
    (block,) = [b for b in python_blocks() if "pf.linear_distillation_loss(student_hidden" in b]
    ns = run_block(block, distillation_context(tmp_path))
    student_logits = ns["student"](ns["input_ids"]).logits[:, :-1].reshape(-1, 40)
    teacher_logits = ns["teacher"](ns["input_ids"]).logits[:, :-1].reshape(-1, 40)
    kl = torch.nn.functional.kl_div((student_logits / 2).log_softmax(1), (teacher_logits / 2).log_softmax(1),
                                    log_target=True, reduction="batchmean")
    ce = torch.nn.functional.cross_entropy(student_logits, ns["input_ids"][:, 1:].reshape(-1))
    hidden = ns["student_hidden"].detach()
    want = pf.linear_distillation_loss(hidden, ns["student"].get_output_embeddings().weight, ns["teacher_hidden"],
                                       ns["teacher"].get_output_embeddings().weight, ns["input_ids"][:, 1:],
                                       temperature=2.0, hard_loss="cross_entropy", hard_weight=0.5)
    torch.testing.assert_close(want, 4 * kl + 0.5 * ce, rtol=1e-5, atol=1e-6)
